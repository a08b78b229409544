"""vfs-agent on an older kernel: Debian 12's 6.1 (no /sys/fs/virtiofs; virtiofs, fuse,
virtio_pci and virtio_console are modules), issue 6.

One fast boot of the bookworm image: its init loads the virtio transport, disk and console but
leaves virtiofs and fuse unloaded, as a guest whose udev has not loaded them would. The agent
must read every tag through the virtio-pci config window, say that virtiofs is a module that is
not loaded, load it in mount-all, and follow hotplug and unplug through virtio uevents (6.1 has
no virtiofs uevents), also when virtiofs is not loaded and no udevd loads it. Oracles
independent of vfs-agent: QEMU's own view of the PCI topology (QMP query-pci) for the tag ->
device mapping, /proc/modules, util-linux findmnt for the mount table, and a file on each host
directory naming its tag. One systemd boot checks that udev's coldplug loads the module and
that the agent says so.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.guest.conftest import BootGuest
from tests.guestlib.image import GuestImage
from tests.guestlib.vm import VM, VMConfig
from vfs_agent.core.escape import encode_tag

pytestmark = pytest.mark.guest

LONG_TAG = "l" * 30 + "-36byt"  # exactly 36 bytes, the virtio-fs maximum
assert len(LONG_TAG.encode()) == 36
TAGS = ["media_tag", "weird tag#1", LONG_TAG, "data-1"]
HOT_TAG = "data-hot"
DAEMON_TAG = "data-daemon"
LATE_TAG = "late"  # hot-plugged while virtiofs is not loaded
POLICY = """\
version: 1
defaults:
  unknown: mount
mounts:
  - tag: media_tag
    path: /mnt/media
  - tag: "data-*"
    path: "/srv/data/{tag}"
"""
NOT_LOADED = "virtiofs is available as a module but not loaded"
DAEMON_LOG = "/var/log/vfs-agent-daemon.log"
DAEMON = "^/usr/bin/python3 /usr/local/bin/vfs-agent -v"  # pgrep -f pattern
# A daemon that has nothing to mount at start-up (so it does not load virtiofs then): the
# boot-time shares are left alone (not the zero-config default), only LATE_TAG is wanted.
LATE_POLICY_PATH = "/etc/vfs-agent/late.yaml"
LATE_POLICY = f"""\
version: 1
defaults: {{unknown: ignore}}
mounts:
  - {{tag: {LATE_TAG}, path: /srv/late}}
"""


def planned_path(tag: str) -> str:
    if tag == "media_tag":
        return "/mnt/media"
    if tag.startswith("data-"):
        return f"/srv/data/{tag}"
    return f"/mnt/virtiofs/{encode_tag(tag)}"


def vfs(guest: VM, *args: str, timeout: float = 120) -> tuple[int, Any]:
    """Run `vfs-agent ARGS --json`; (exit status, parsed stdout)."""
    result = guest.run(["vfs-agent", *args, "--json"], timeout=timeout)
    try:
        return result.rc, json.loads(result.stdout)
    except ValueError:
        raise AssertionError(f"no JSON from vfs-agent {' '.join(args)}:\n{result}") from None


def share_mounts(guest: VM) -> dict[str, tuple[str, str, list[str]]]:
    """target -> (fstype, source, options) of the virtiofs/9p mounts, as util-linux sees them."""
    result = guest.run("findmnt --json --list -o FSTYPE,SOURCE,TARGET,OPTIONS -t virtiofs,9p")
    if result.rc == 1 and not result.stdout:
        return {}  # findmnt: nothing found
    rows = json.loads(result.stdout)["filesystems"]
    return {r["target"]: (r["fstype"], r["source"], r["options"].split(",")) for r in rows}


def loaded_modules(guest: VM) -> set[str]:
    return {line.split()[0] for line in guest.get_file("/proc/modules").decode().splitlines()}


def pci_tags(guest: VM, strict: bool = True) -> dict[str, str | None]:
    """tag -> virtio device, from `python3 -m vfs_agent.system.pci_config` (strict: no problems)."""
    result = guest.run(["python3", "-m", "vfs_agent.system.pci_config"])
    data = json.loads(result.stdout)
    if strict:
        assert result.rc == 0 and data["problems"] == [], str(result)
    assert {s["source"] for s in data["shares"]} <= {"pci-config"}
    return {
        bytes.fromhex(s["tag_hex"]).decode(errors="surrogateescape"): s["device"]
        for s in data["shares"]
    }


def host_pci_addresses(guest: VM) -> dict[str, str]:
    """tag -> PCI address of its vhost-user-fs-pci device, from QEMU itself (QMP query-pci:
    the bus numbers the guest kernel programmed into the root ports)."""
    assert guest.qmp is not None
    by_id: dict[str, str] = {}

    def walk(devices: list[dict[str, Any]]) -> None:
        for dev in devices:
            address = f"0000:{dev['bus']:02x}:{dev['slot']:02x}.{dev['function']:x}"
            by_id[dev.get("qdev_id", "")] = address
            walk(dev.get("pci_bridge", {}).get("devices", []))

    for bus in guest.qmp.execute("query-pci"):
        walk(bus["devices"])
    return {tag: by_id[share.ident] for tag, share in guest.shares.items()}


def guest_pci_address(guest: VM, virtio: str) -> str:
    """The PCI function a virtio device hangs off, from its sysfs path."""
    link = guest.run(["readlink", "-f", f"/sys/bus/virtio/devices/{virtio}"], check=True)
    return os.path.basename(os.path.dirname(link.stdout.strip()))


def wait_until(what: str, check: Callable[[], bool], timeout: float = 60) -> float:
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.3)
    return time.monotonic() - started


@pytest.fixture(scope="module")
def share_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One host directory per tag, holding a file that names the tag (which.txt)."""
    root = tmp_path_factory.mktemp("older-kernel-shares")
    dirs = {}
    for index, tag in enumerate([*TAGS, HOT_TAG, DAEMON_TAG, LATE_TAG]):
        path = root / f"share{index}"
        path.mkdir()
        (path / "which.txt").write_text(tag)
        dirs[tag] = path
    return dirs


def assert_mounted_as_planned(guest: VM, tags: list[str]) -> None:
    """Every tag is mounted (virtiofs, nosuid, nodev) at its path, and that path shows the host
    directory of that very tag."""
    table = share_mounts(guest)
    for tag in tags:
        path = planned_path(tag)
        assert path in table, (tag, path, table)
        fstype, source, options = table[path]
        assert (fstype, source) == ("virtiofs", tag)
        assert "nosuid" in options and "nodev" in options, (tag, options)
        assert guest.get_file(f"{path}/which.txt").decode() == tag


@pytest.fixture(scope="module")
def guest(
    boot_guest: BootGuest, bookworm_image: GuestImage, share_dirs: dict[str, Path]
) -> Iterator[VM]:
    config = VMConfig(
        mode="fast", name="bookworm-fast", shares=[(tag, share_dirs[tag]) for tag in TAGS]
    )
    vm = boot_guest(config, bookworm_image)
    vm.put_file("/etc/vfs-agent/policy.yaml", POLICY)
    vm.run("chmod 755 /etc/vfs-agent", check=True)
    yield vm
    if vm.alive():  # the systemd test shuts it down first
        vm.run(["pkill", "-TERM", "-f", DAEMON])
        vm.shutdown()


def test_the_fast_init_loads_the_virtio_drivers_but_not_virtiofs_or_fuse(guest: VM) -> None:
    assert guest.channel is not None
    assert guest.channel.request("ping", wait=10)["mode"] == "fast"  # the channel works on 6.1
    assert guest.run("uname -r", check=True).stdout.startswith("6.1.")
    modules = loaded_modules(guest)
    # Modules on 6.1, loaded by Debian's initramfs (pci, blk) and by the test init (console:
    # the command channel this test talks through).
    assert {"virtio_pci", "virtio_blk", "virtio_console"} <= modules
    assert not {"virtiofs", "fuse"} & modules
    assert "virtiofs" not in guest.get_file("/proc/filesystems").decode()
    assert guest.run("test -e /sys/fs/virtiofs").rc == 1
    assert guest.run(["modinfo", "-F", "filename", "virtiofs"], check=True).stdout.endswith(
        "/kernel/fs/fuse/virtiofs.ko\n"
    )


def test_kernel_reports_virtiofs_as_a_module_that_is_not_loaded(guest: VM) -> None:
    rc, report = vfs(guest, "kernel")
    assert rc == 0, report
    assert report["release"] == guest.run("uname -r", check=True).stdout.strip()
    assert report["release"].startswith("6.1.")
    assert report["virtiofs"] == "module"
    assert report["usable"] is True
    assert report["sysfs_tags"] is False
    listed = guest.run("grep -l '^0x001a$' /sys/bus/virtio/devices/*/device", check=True)
    oracle = sorted(p.split("/")[-2] for p in listed.stdout.split())
    assert sorted(report["virtiofs_devices"]) == oracle
    assert len(oracle) == len(TAGS)
    assert NOT_LOADED in [p["message"] for p in report["problems"]]


def test_the_pci_config_window_finds_exactly_the_hosts_tags_on_the_right_devices(
    guest: VM,
) -> None:
    found = pci_tags(guest)
    assert sorted(found) == sorted(TAGS)
    host = host_pci_addresses(guest)
    for tag, virtio in found.items():
        assert virtio is not None, tag
        assert guest_pci_address(guest, virtio) == host[tag], tag


def test_status_and_plan_find_the_tags_through_pci_config(guest: VM) -> None:
    rc, status = vfs(guest, "status")
    assert rc == 0
    assert status["discovery_complete"] is True
    assert status["discovery_problems"] == []
    assert status["kernel"]["virtiofs"] == "module"
    shares = {s["tag"]: s for s in status["shares"]}
    assert sorted(shares) == sorted(TAGS)
    assert {s["source"] for s in shares.values()} == {"pci-config"}
    assert {s["health"] for s in shares.values()} == {"not-mounted"}
    assert {t: s["planned_path"] for t, s in shares.items()} == {t: planned_path(t) for t in TAGS}

    rc, plan = vfs(guest, "plan")
    assert rc == 0 and plan["discovery_complete"] is True
    mounts = {a["tag"]: a["path"] for a in plan["actions"] if a["action"] == "mount"}
    assert mounts == {t: planned_path(t) for t in TAGS}
    assert share_mounts(guest) == {}  # plan changed nothing
    assert "virtiofs" not in loaded_modules(guest)


def test_mount_all_loads_the_module_and_mounts_every_share(guest: VM) -> None:
    rc, result = vfs(guest, "mount-all")
    assert rc == 0, result
    outcomes = result["outcomes"]
    assert all(o["ok"] and o["changed"] for o in outcomes), outcomes
    assert sorted(o["tag"] for o in outcomes) == sorted(TAGS)
    assert {"virtiofs", "fuse"} <= loaded_modules(guest)
    assert_mounted_as_planned(guest, TAGS)

    rc, report = vfs(guest, "kernel")
    assert rc == 0 and report["virtiofs"] == "loaded"
    assert NOT_LOADED not in [p["message"] for p in report["problems"]]
    assert report["sysfs_tags"] is False  # 6.1 has no /sys/fs/virtiofs, loaded or not
    rc, status = vfs(guest, "status")
    assert {s["tag"]: s["health"] for s in status["shares"]} == dict.fromkeys(TAGS, "mounted")


def test_a_second_mount_all_changes_nothing(guest: VM) -> None:
    before = share_mounts(guest)
    rc, result = vfs(guest, "mount-all")
    assert rc == 0
    assert {o["action"] for o in result["outcomes"]} == {"keep"}
    assert not any(o["changed"] for o in result["outcomes"])
    assert share_mounts(guest) == before


def test_a_hotplugged_share_is_found_mounted_and_cleaned_up_after_unplug(
    guest: VM, share_dirs: dict[str, Path]
) -> None:
    guest.hotplug_share(HOT_TAG, share_dirs[HOT_TAG])
    wait_until(
        f"{HOT_TAG} in the PCI config window, on a virtio device",
        lambda: pci_tags(guest, strict=False).get(HOT_TAG) is not None,
    )
    assert sorted(pci_tags(guest)) == sorted([*TAGS, HOT_TAG])
    rc, result = vfs(guest, "mount-all")
    assert rc == 0
    changed = [(o["action"], o["tag"]) for o in result["outcomes"] if o["changed"]]
    assert changed == [("mount", HOT_TAG)]
    assert_mounted_as_planned(guest, [*TAGS, HOT_TAG])

    guest.unplug_share(HOT_TAG)
    # 6.1 answers from its attribute cache for up to a second (virtiofsd cache=auto) before
    # every access fails with ENOTCONN (6.12 fails at once).
    wait_until(
        "the dead mount to answer ENOTCONN",
        lambda: "not connected" in guest.run(["stat", planned_path(HOT_TAG)]).stderr,
        timeout=15,
    )
    rc, status = vfs(guest, "status")
    assert status["discovery_complete"] is True
    assert {"tag": HOT_TAG, "health": "dead"} in [
        {"tag": s["tag"], "health": s["health"]} for s in status["shares"]
    ], status
    rc, result = vfs(guest, "mount-all")
    assert rc == 0
    assert [o["action"] for o in result["outcomes"] if o["changed"]] == ["unmount-stale"]
    assert planned_path(HOT_TAG) not in share_mounts(guest)
    assert_mounted_as_planned(guest, TAGS)


def start_daemon(guest: VM, *args: str) -> None:
    """`vfs-agent -v daemon` in the background (its own session), logging to DAEMON_LOG."""
    guest.run(f"rm -f {DAEMON_LOG}", check=True)
    command = " ".join(["exec vfs-agent -v", *args, "daemon"])
    guest.run(f"setsid -f sh -c '{command} >>{DAEMON_LOG} 2>&1 </dev/null'", check=True)
    wait_until(
        "the daemon's start", lambda: b"Started;" in guest.run(f"cat {DAEMON_LOG}").stdout_bytes
    )
    assert "(kernel)" in guest.get_file(DAEMON_LOG).decode()  # no udevd: kernel uevents


def daemon_log(guest: VM) -> str:
    return guest.run(["cat", DAEMON_LOG]).stdout


def stop_daemon(guest: VM) -> None:
    guest.run(["pkill", "-TERM", "-f", DAEMON], check=True)
    wait_until("the daemon to stop", lambda: guest.run(["pgrep", "-f", DAEMON]).rc == 1)


def test_the_daemon_follows_virtio_uevents_on_6_1(guest: VM, share_dirs: dict[str, Path]) -> None:
    """Fast boot: no udevd, so kernel uevents; 6.1 sends no virtiofs events, only virtio
    add/bind on hotplug and unbind/remove on unplug."""
    start_daemon(guest)

    guest.hotplug_share(DAEMON_TAG, share_dirs[DAEMON_TAG])
    path = planned_path(DAEMON_TAG)
    wait_until(
        f"{DAEMON_TAG} mounted by the daemon",
        lambda: guest.run(["cat", f"{path}/which.txt"]).stdout == DAEMON_TAG,
    )
    assert_mounted_as_planned(guest, [*TAGS, DAEMON_TAG])
    log = guest.get_file(DAEMON_LOG).decode()
    assert "uevent bind virtio" in log and "uevent add virtiofs" not in log, log
    assert f"Mounted share '{DAEMON_TAG}' on {path}." in log, log

    guest.unplug_share(DAEMON_TAG)
    wait_until(f"{DAEMON_TAG} unmounted", lambda: path not in share_mounts(guest))
    log = guest.get_file(DAEMON_LOG).decode()
    assert "uevent remove virtio" in log and f"Unmounted {path}" in log, log
    assert "not connected" not in guest.run("ls /srv/data/* /mnt/media 2>&1").stdout
    assert_mounted_as_planned(guest, TAGS)
    stop_daemon(guest)


def test_the_daemon_loads_virtiofs_for_a_share_hotplugged_while_it_is_not_loaded(
    guest: VM, share_dirs: dict[str, Path]
) -> None:
    """No udevd loads the driver of a new virtio-fs device here: after the virtio `add`
    uevent nothing binds until someone loads virtiofs, so no `bind` uevent comes either."""
    guest.run("umount -a -t virtiofs && rmmod virtiofs fuse", check=True)
    assert not {"virtiofs", "fuse"} & loaded_modules(guest)
    guest.put_file(LATE_POLICY_PATH, LATE_POLICY)
    start_daemon(guest, f"--policy {LATE_POLICY_PATH}")
    assert "virtiofs" not in loaded_modules(guest)  # nothing to mount at start-up

    guest.hotplug_share(LATE_TAG, share_dirs[LATE_TAG])
    try:
        wait_until(
            f"{LATE_TAG} mounted by the daemon",
            lambda: guest.run(["cat", "/srv/late/which.txt"]).stdout == LATE_TAG,
            timeout=30,
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- {DAEMON_LOG} ---\n{daemon_log(guest)}") from None
    assert "virtiofs" in loaded_modules(guest)
    log = daemon_log(guest)
    # The add of an unbound virtio-fs device made the daemon load virtiofs; the driver's bind
    # brought the mount.
    assert (
        log.index("uevent add virtio")
        < log.index("uevent bind virtio")
        < log.index(f"Mounted share '{LATE_TAG}' on /srv/late.")
    ), log
    guest.unplug_share(LATE_TAG)
    wait_until(f"{LATE_TAG} unmounted", lambda: "/srv/late" not in share_mounts(guest))
    stop_daemon(guest)


@pytest.fixture(scope="module")
def systemd_guest(
    boot_guest: BootGuest,
    bookworm_image: GuestImage,
    share_dirs: dict[str, Path],
    guest: VM,
) -> Iterator[VM]:
    """After the fast guest (one guest at a time): the same shares, a normal systemd boot."""
    guest.shutdown()
    config = VMConfig(
        mode="systemd", name="bookworm-systemd", shares=[(t, share_dirs[t]) for t in TAGS]
    )
    vm = boot_guest(config, bookworm_image)
    vm.put_file("/etc/vfs-agent/policy.yaml", POLICY)
    vm.run("chmod 755 /etc/vfs-agent", check=True)
    yield vm
    vm.shutdown()


def test_systemd_boot_udev_loads_virtiofs_and_mount_all_mounts_everything(
    systemd_guest: VM,
) -> None:
    state = systemd_guest.wait_system_running()
    assert state in ("running", "degraded"), state
    assert "virtiofs" in loaded_modules(systemd_guest)  # udev's coldplug, by modalias
    rc, report = vfs(systemd_guest, "kernel")
    assert rc == 0 and report["virtiofs"] == "loaded" and report["sysfs_tags"] is False
    rc, status = vfs(systemd_guest, "status")
    assert status["discovery_complete"] is True
    assert sorted(s["tag"] for s in status["shares"]) == sorted(TAGS)
    rc, result = vfs(systemd_guest, "mount-all")
    assert rc == 0 and all(o["ok"] and o["changed"] for o in result["outcomes"]), result
    assert_mounted_as_planned(systemd_guest, TAGS)
