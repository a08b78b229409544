"""The .deb on Debian 12, from Debian 12's own packages: a real full systemd boot.

The image is the harness's Debian 12 base tree (debootstrap from the Debian 12 archive, with
its python3-pydantic 1.10.4 and no PyPI wheel) with the project's .deb installed by `apt-get
install ./vfs-agent_*.deb`: apt checks every Depends against Debian 12's versions, so a floor
Debian 12 does not meet fails the image build. One QEMU, two boots (the second after the
policy is written): the first shows what the package does on its own and that `vfs-agent
kernel` sees virtiofs as a module, the second that the generator's units mount the share
before multi-user.target, then a hot-plugged share is mounted by systemd, and by the daemon
starting its unit when systemd missed its plug.

Run as root, alone (one guest at a time; about 2 minutes, plus 2-3 minutes the first time for
the Debian 12 base tree):

    .venv/bin/pytest -v tests/guest/test_deb_bookworm.py
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.guest.conftest import slow_to_stop
from tests.guestlib.image import GuestImage
from tests.guestlib.vm import VM, VMConfig
from vfs_agent.core.render_systemd import device_unit_name

pytestmark = pytest.mark.guest

BOOT_TAG = "deb12_media"
HOT_TAG = "deb12 hot#1"  # a hostile tag: space and '#'
POLICY = f"""\
version: 1
mounts:
  - tag: {BOOT_TAG}
    path: /srv/media
    options: [ro]
    required: true
  - tag: "{HOT_TAG}"
    path: /srv/hot
"""
BROKEN = "version: 1\nmounts:\n  - tag: x\n    path: relative/oops\n"


def vfs(guest: VM, *args: str) -> tuple[int, Any]:
    r = guest.run(["vfs-agent", *args, "--json"], timeout=120)
    return r.rc, json.loads(r.stdout) if r.stdout.strip() else None


def findmnt(guest: VM) -> dict[str, str]:
    """target -> source of every virtiofs mount (util-linux's view)."""
    r = guest.run(["findmnt", "--json", "--list", "-t", "virtiofs", "-o", "SOURCE,TARGET"])
    data = json.loads(r.stdout) if r.stdout.strip() else {"filesystems": []}
    return {f["target"]: f["source"] for f in data["filesystems"]}


def prop(guest: VM, unit: str, name: str) -> str:
    return guest.run(["systemctl", "show", "--value", "-p", name, unit], check=True).stdout.strip()


def wait_until(what: str, check: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(1)


@pytest.fixture(scope="module")
def share_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("deb12-shares")
    dirs = {BOOT_TAG: root / "media", HOT_TAG: root / "hot"}
    for tag, path in dirs.items():
        path.mkdir()
        (path / "tag.txt").write_text(f"{tag}\n")
    return dirs


@pytest.fixture(scope="module")
def guest(
    boot_guest: Callable[..., VM], deb_bookworm_image: GuestImage, share_dirs: dict[str, Path]
) -> Iterator[VM]:
    config = VMConfig(mode="systemd", name="deb12", shares=[(BOOT_TAG, share_dirs[BOOT_TAG])])
    vm = boot_guest(config, deb_bookworm_image)
    yield vm
    vm.shutdown()


# -- first boot: the package as installed --------------------------------------------------------


def test_installed_by_apt_from_debian_12_packages_only(guest: VM) -> None:
    status = guest.run(["dpkg-query", "-W", "-f=${Status} ${Version}", "vfs-agent"])
    assert status.stdout.startswith("install ok installed "), str(status)
    assert guest.run("command -v vfs-agent").stdout.strip() == "/usr/bin/vfs-agent"
    probe = guest.run(
        [
            "python3",
            "-c",
            "import pydantic, vfs_agent; print(pydantic.VERSION); print(pydantic.__file__); "
            "print(vfs_agent.__file__)",
        ],
        check=True,
    ).stdout.split()
    assert probe[0] == "1.10.4"  # Debian 12's python3-pydantic
    assert probe[1].startswith("/usr/lib/python3/dist-packages/pydantic/")
    assert probe[2].startswith("/usr/lib/python3/dist-packages/vfs_agent/")
    # No pip install anywhere: nothing under /usr/local's Python directories.
    local = guest.run("ls /usr/local/lib/python3*/dist-packages 2>/dev/null | wc -l")
    assert local.stdout.strip() == "0", str(local)
    owner = guest.run(["dpkg", "-S", probe[1]], check=True).stdout
    assert owner.startswith("python3-pydantic:")


def test_man_pages_and_completion_are_installed(guest: VM) -> None:
    for path in (
        "/usr/share/man/man1/vfs-agent.1.gz",
        "/usr/share/man/man5/vfs-agent.policy.5.gz",
        "/usr/share/man/man8/mount.virtiofs.vfsagent.8.gz",
        "/usr/sbin/mount.virtiofs.vfsagent",
        "/usr/share/bash-completion/completions/vfs-agent",
        "/usr/share/zsh/vendor-completions/_vfs-agent",
    ):
        owner = guest.run(["dpkg", "-S", path])
        assert owner.stdout.startswith("vfs-agent: "), str(owner)
    # What the installed bash script asks the program, answered by click 8.1 (Debian 12's).
    env = "_VFS_AGENT_COMPLETE=bash_complete COMP_WORDS='vfs-agent mou' COMP_CWORD=1"
    answer = guest.run(f"env {env} vfs-agent", check=True).stdout.split()
    assert {"plain,mount", "plain,mount-all"} <= set(answer), answer


def test_units_enabled_and_the_daemon_runs(guest: VM) -> None:
    state = guest.wait_system_running()
    assert state in ("running", "degraded"), state
    enabled = guest.run(["systemctl", "is-enabled", "vfs-agent.service"]).stdout.strip()
    assert enabled == "enabled"
    assert prop(guest, "vfs-agent.service", "ActiveState") == "active"
    failed = guest.run(["systemctl", "--failed", "--plain", "--no-legend"]).stdout
    assert "vfs-agent" not in failed, failed


def test_kernel_says_virtiofs_is_a_module(guest: VM) -> None:
    """Zero-config mounted the boot-time share; with that mount stopped, the module udev
    loaded at coldplug can be removed: then `kernel` must say `module`, and `loaded` again
    once it is back, when the daemon mounts the share again."""
    mounts = findmnt(guest)
    assert list(mounts.values()) == [BOOT_TAG], mounts  # zero-config, under mount_root
    units = [
        guest.run(["systemd-escape", "--path", "--suffix=mount", target], check=True).stdout.strip()
        for target in mounts
    ]
    guest.run(["systemctl", "stop", *units], check=True)
    assert findmnt(guest) == {}
    guest.run(["modprobe", "-r", "virtiofs"], check=True)
    rc, report = vfs(guest, "kernel")
    assert report["virtiofs"] == "module", report
    assert report["release"].startswith("6.1.")
    assert guest.run(["modinfo", "-F", "filename", "virtiofs"]).stdout.strip().endswith(".ko")
    guest.run(["modprobe", "virtiofs"], check=True)
    rc, report = vfs(guest, "kernel")
    assert rc == 0 and report["virtiofs"] == "loaded", report
    # The share's device is bound again: the daemon mounts it. (The stopped unit was only
    # systemd's view of that mount, which systemd may forget once it is unmounted.)
    wait_until("the daemon to mount the share again", lambda: findmnt(guest) == mounts)


def test_a_broken_policy_is_reported_with_its_position_on_pydantic_1(guest: VM) -> None:
    guest.put_file("/root/broken.yaml", BROKEN)
    r = guest.run(["vfs-agent", "policy", "check", "/root/broken.yaml"])
    assert r.rc == 2, str(r)
    assert "/root/broken.yaml:4:11: mounts[0].path: path 'relative/oops' is not absolute" in (
        r.stderr
    )


# -- second boot: the policy names the share ----------------------------------------------------


@pytest.fixture(scope="module")
def rebooted(guest: VM) -> VM:
    guest.put_file("/etc/vfs-agent/policy.yaml", POLICY)
    guest.run(["vfs-agent", "policy", "check"], check=True)
    guest.reboot()
    state = guest.wait_system_running()
    assert state in ("running", "degraded"), state
    return guest


def test_the_share_was_mounted_before_multi_user_target(rebooted: VM) -> None:
    assert findmnt(rebooted).get("/srv/media") == BOOT_TAG
    assert rebooted.run("cat /srv/media/tag.txt", check=True).stdout == f"{BOOT_TAG}\n"
    unit = "srv-media.mount"
    assert prop(rebooted, unit, "FragmentPath").startswith("/run/systemd/generator")
    mounted = int(prop(rebooted, unit, "ActiveEnterTimestampMonotonic"))
    multi_user = int(prop(rebooted, "multi-user.target", "ActiveEnterTimestampMonotonic"))
    assert 0 < mounted <= multi_user, (mounted, multi_user)
    assert "ro" in rebooted.run(["findmnt", "-no", "OPTIONS", "/srv/media"]).stdout.split(",")
    # Debian 12's mount(8) (util-linux 2.38) found the mount helper in /sbin (merged /usr:
    # the package's /usr/sbin), which waited for the host, then mounted the share as virtiofs.
    mount = prop(rebooted, unit, "ExecMount")
    assert "-t virtiofs.vfsagent" in mount and "status=0" in mount, mount
    assert rebooted.run(["findmnt", "-no", "FSTYPE", "/srv/media"]).stdout.strip() == "virtiofs"


def test_a_share_hot_plugged_after_boot_is_mounted(
    rebooted: VM, share_dirs: dict[str, Path]
) -> None:
    """Plugged and unplugged three times: each unplug stops srv-hot.mount with success. Both
    systemd (the unit follows its device) and the daemon (the share is gone) act on an unplug;
    had the daemon unmounted the share behind systemd's back, systemd 252's own umount(8) would
    find nothing mounted when it came second, and mark the unit failed."""
    unit = "srv-hot.mount"
    for _ in range(3):
        rebooted.hotplug_share(HOT_TAG, share_dirs[HOT_TAG])
        wait_until(f"{HOT_TAG!r} mounted", lambda: findmnt(rebooted).get("/srv/hot") == HOT_TAG)
        assert rebooted.run("cat /srv/hot/tag.txt", check=True).stdout == f"{HOT_TAG}\n"
        rebooted.unplug_share(HOT_TAG)
        wait_until(f"{HOT_TAG!r} unmounted", lambda: "/srv/hot" not in findmnt(rebooted))
        wait_until(
            f"{unit} stopped",
            lambda: prop(rebooted, unit, "ActiveState") in ("inactive", "failed"),
        )
        assert prop(rebooted, unit, "Result") == "success"
        failed = rebooted.run(["systemctl", "--failed", "--plain", "--no-legend"]).stdout
        assert "vfs-agent" not in failed and ".mount" not in failed, failed
    journal = rebooted.run("journalctl -b -u vfs-agent.service -o cat --no-pager").stdout
    ours = [line for line in journal.splitlines() if line.startswith("Unmounted /srv/hot (")]
    assert all(line.endswith(f" by stopping {unit}.") for line in ours), ours
    print(f"unplugs the daemon carried out by stopping {unit}: {len(ours)} of 3")


def test_a_plug_while_the_previous_mount_is_being_stopped_is_mounted(
    rebooted: VM, share_dirs: dict[str, Path]
) -> None:
    """systemd 252, too, starts no unit that is active when its device comes back: the share,
    plugged again while a service that used its previous mount was still stopping, would stay
    attached and unmounted. The daemon starts its unit."""
    unit, device = "srv-hot.mount", device_unit_name(HOT_TAG)
    rebooted.put_file("/etc/systemd/system/holds-hot.service", slow_to_stop("srv-hot.mount"))
    rebooted.run("systemctl daemon-reload", check=True)
    rebooted.hotplug_share(HOT_TAG, share_dirs[HOT_TAG])
    wait_until(f"{HOT_TAG!r} mounted", lambda: findmnt(rebooted).get("/srv/hot") == HOT_TAG)
    rebooted.run("systemctl start holds-hot.service", check=True)
    rebooted.unplug_share(HOT_TAG)

    def stopping() -> bool:
        jobs = rebooted.run("systemctl list-jobs --plain --no-legend", check=True).stdout
        return [unit, "stop"] in [line.split()[1:3] for line in jobs.splitlines()]

    wait_until(f"{unit}'s stop job, waiting for holds-hot.service", stopping, timeout=6)
    rebooted.hotplug_share(HOT_TAG, share_dirs[HOT_TAG])

    readable = f"{HOT_TAG}\n"
    wait_until("mounted again", lambda: rebooted.run("cat /srv/hot/tag.txt").stdout == readable)
    targets = rebooted.run("findmnt --list -n -o TARGET -t virtiofs", check=True).stdout.split()
    assert targets.count("/srv/hot") == 1, targets
    came_back = int(prop(rebooted, device, "ActiveEnterTimestampMonotonic"))
    assert came_back < int(prop(rebooted, unit, "InactiveEnterTimestampMonotonic"))
    journal = rebooted.run("journalctl -b -u vfs-agent.service -o cat --no-pager").stdout
    started = (
        f"Started {unit}: share {HOT_TAG!r} was plugged while {unit} was still being stopped,"
        " which systemd does not follow."
    )
    assert journal.count(started) == 1, journal[-3000:]

    rebooted.unplug_share(HOT_TAG)
    wait_until(f"{HOT_TAG!r} unmounted", lambda: "/srv/hot" not in findmnt(rebooted))
    rebooted.run("rm /etc/systemd/system/holds-hot.service && systemctl daemon-reload", check=True)
