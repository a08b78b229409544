"""Full systemd boots of the guest with vfs-agent's generator, udev rule and service installed:
mounts at boot in the right order, an absent optional share never holds the boot, a missing
required share fails only its dependents, hotplug and unplug through device units, the journal.

One guest, five boots (the policy is written, then the guest reboots into it; later reboots
change it again, but one, which changes nothing)."""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.guest.conftest import BootGuest, slow_to_stop
from tests.guestlib.image import GuestImage
from tests.guestlib.vm import VM, VMConfig
from vfs_agent.systemd.replay import IDENT, KEPT, MEMO_NAME, REPLAYED

pytestmark = pytest.mark.guest

# Required shares wait up to device_timeout for their device at boot; under TCG udev's
# coldplug can come well after the first mount job, hence 60 s here.
POLICY = """\
version: 1
defaults:
  device_timeout: 60
mounts:
  - {tag: present-a, path: /srv/a, required: true}
  - {tag: present-b, path: /srv/b, required: true}
  - {tag: absent-c, path: /srv/c}
  - {tag: "extra-*", path: "/srv/extra/{tag}"}
"""
REQUIRED_ABSENT = """\
  - {tag: absent-req, path: /srv/req, required: true, device_timeout: 8}
"""
NEEDS_A = """\
[Unit]
Description=Test service that needs /srv/a
RequiresMountsFor=/srv/a

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh -c 'findmnt -n -o SOURCE /srv/a > /run/needs-a.txt'

[Install]
WantedBy=multi-user.target
"""
NEEDS_REQ = """\
[Unit]
Description=Test service that needs /srv/req
RequiresMountsFor=/srv/req

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/true

[Install]
WantedBy=multi-user.target
"""
DEV = "dev-virtiofs-by\\x2dtag-"
RACE_OPS = 15  # plugs and unplugs in the storm


def show(guest: VM, unit: str, *props: str) -> dict[str, str]:
    out = guest.run(["systemctl", "show", unit, *[f"--property={p}" for p in props]], check=True)
    return dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)


def assert_stopped_cleanly(guest: VM, unit: str, path: str) -> None:
    """After an unplug: the unit stopped with success, and the daemon, if it unmounted the share
    at all, did so by stopping the unit. Unmounted behind systemd's back, systemd's own umount(8)
    may find nothing mounted, which systemd before 256 counts as the unit failing."""
    wait_until(
        f"{unit} stopped",
        lambda: show(guest, unit, "ActiveState")["ActiveState"] in ("inactive", "failed"),
    )
    state = show(guest, unit, "ActiveState", "Result")
    assert state == {"ActiveState": "inactive", "Result": "success"}, state
    journal = guest.run("journalctl -b -u vfs-agent.service -o cat --no-pager").stdout
    ours = [line for line in journal.splitlines() if line.startswith(f"Unmounted {path} (")]
    assert all(line.endswith(f" by stopping {unit}.") for line in ours), ours


def mounted(guest: VM) -> dict[str, str]:
    """target -> source of the virtiofs mounts (util-linux)."""
    result = guest.run("findmnt --json --list -o SOURCE,TARGET -t virtiofs")
    if result.rc != 0:
        return {}
    return {r["target"]: r["source"] for r in json.loads(result.stdout)["filesystems"]}


def wait_until(what: str, check, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


@pytest.fixture(scope="module")
def host_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("systemd-shares")
    dirs = {n: root / n for n in ("a", "b", "c", "extra")}
    for path in dirs.values():
        path.mkdir()
    (dirs["c"] / "c.txt").write_text("c\n")
    return dirs


@pytest.fixture(scope="module")
def guest(boot_guest: BootGuest, deb_image: GuestImage, host_dirs: dict[str, Path]) -> Iterator[VM]:
    """Boot the .deb image, install the policy and the test service, enable vfs-agent.service
    (the package enables it already; enabling again is harmless), reboot into them."""
    vm = boot_guest(
        VMConfig(
            mode="systemd",
            name="systemd-boot",
            shares=[("present-a", host_dirs["a"]), ("present-b", host_dirs["b"])],
        ),
        deb_image,
    )
    vm.wait_system_running()
    vm.put_file("/etc/vfs-agent/policy.yaml", POLICY)
    vm.put_file("/etc/systemd/system/needs-a.service", NEEDS_A)
    vm.run(
        "chmod 755 /etc/vfs-agent && systemctl enable needs-a.service vfs-agent.service", check=True
    )
    vm.reboot()
    vm.wait_system_running()
    yield vm
    vm.shutdown()


def test_present_shares_are_mounted_before_multi_user(guest: VM) -> None:
    assert mounted(guest) == {"/srv/a": "present-a", "/srv/b": "present-b"}
    target = int(
        show(guest, "multi-user.target", "ActiveEnterTimestampMonotonic")[
            "ActiveEnterTimestampMonotonic"
        ]
    )
    for unit in ("srv-a.mount", "srv-b.mount"):
        props = show(
            guest, unit, "ActiveState", "ActiveEnterTimestampMonotonic", "StopPropagatedFrom"
        )
        assert props["ActiveState"] == "active"
        assert 0 < int(props["ActiveEnterTimestampMonotonic"]) < target, (unit, props, target)
        # Attached at boot: stopped with its device, not waiting for it (the generator's units
        # are for this boot). systemctl show quotes and C-escapes the name
        # ("...by\\x2dtag-present\\x2da.device").
        device = props["StopPropagatedFrom"].strip('"').replace("\\\\", "\\")
        assert device.startswith(DEV), props


def test_a_service_requiring_the_mount_ran_after_it(guest: VM) -> None:
    assert guest.get_file("/run/needs-a.txt") == b"present-a\n"
    after = show(guest, "needs-a.service", "After")["After"].split()
    assert "srv-a.mount" in after


def test_the_absent_optional_share_never_held_the_boot(guest: VM) -> None:
    props = show(guest, "srv-c.mount", "ActiveState", "Result")
    assert (props["ActiveState"], props["Result"]) == ("inactive", "success")  # never started
    chain = guest.run("systemd-analyze critical-chain multi-user.target --no-pager").stdout
    assert "srv-c.mount" not in chain
    state = guest.run("systemctl is-system-running").stdout.strip()
    assert state == "running", guest.run("systemctl --failed --no-pager").stdout


def test_the_boot_does_not_wait_for_the_daemon(guest: VM) -> None:
    """multi-user.target is not ordered after vfs-agent.service (the shares are the units'
    job), yet the daemon keeps a service's other default dependencies and runs."""
    assert "vfs-agent.service" not in show(guest, "multi-user.target", "After")["After"].split()
    props = show(
        guest,
        "vfs-agent.service",
        "After",
        "Requires",
        "Conflicts",
        "ActiveState",
        "StartupCPUWeight",
    )
    assert props["StartupCPUWeight"] == "10", props  # systemd took it: yields while booting
    after = props["After"].split()
    for unit in ("sysinit.target", "basic.target", "local-fs.target", "systemd-udevd.service"):
        assert unit in after, props
    assert "sysinit.target" in props["Requires"].split()
    assert "shutdown.target" in props["Conflicts"].split()
    assert props["ActiveState"] == "active"
    chain = guest.run("systemd-analyze critical-chain multi-user.target --no-pager").stdout
    assert "vfs-agent.service" not in chain, chain


def test_units_are_generated_and_pass_verify(guest: VM) -> None:
    units = guest.run("ls /run/systemd/generator/", check=True).stdout.split()
    for name in ("srv-a.mount", "srv-b.mount", "srv-c.mount", "local-fs.target.wants"):
        assert name in units
    result = guest.run(
        "systemd-analyze verify --man=no /run/systemd/generator/*.mount "
        "/usr/lib/systemd/system/vfs-agent.service",
        timeout=120,
    )
    assert result.rc == 0, str(result)


def generator_output(guest: VM) -> str:
    """Every file and link in systemd's generator directory (every generator's), with its
    content's digest or its target; the memo of a full run left out."""
    script = (
        "cd /run/systemd/generator && find . ! -type d ! -name " + MEMO_NAME + " | sort |"
        ' while read -r f; do if [ -L "$f" ]; then echo "$f -> $(readlink "$f")";'
        ' else echo "$f $(sha256sum < "$f")"; fi; done'
    )
    return guest.run(script, check=True).stdout


def generator_log(guest: VM) -> tuple[int, int]:
    """How often the generator wrote its output again from the memo, and how often it ran in
    full, in this boot's kernel log."""
    log = guest.run("dmesg", check=True).stdout
    replayed = log.count(REPLAYED)  # a replay logs the full run's messages again, too
    return replayed, log.count(f"{IDENT}: generated ") - replayed


def test_with_nothing_changed_the_generator_writes_its_last_output_again(
    guest: VM, host_dirs
) -> None:
    """The daemon kept the memo of the boot's full run; a daemon-reload with no input changed
    writes the very same files from it, a share plugged makes the generator run in full, and
    with the share gone again the memo holds again."""
    wait_until("the memo kept", lambda: guest.run(f"test -s {KEPT}").ok)
    assert guest.run(f"stat -c %a:%U {KEPT}", check=True).stdout.strip() == "600:root"
    before = generator_output(guest)
    assert "./srv-a.mount " in before
    replayed, full = generator_log(guest)
    guest.run("systemctl daemon-reload", check=True)
    assert generator_log(guest) == (replayed + 1, full)
    assert generator_output(guest) == before
    assert mounted(guest) == {"/srv/a": "present-a", "/srv/b": "present-b"}

    guest.hotplug_share("absent-c", host_dirs["c"])
    wait_until("srv-c.mount active", lambda: mounted(guest).get("/srv/c") == "absent-c")
    guest.run("systemctl daemon-reload", check=True)
    assert generator_log(guest) == (replayed + 1, full + 1)
    assert generator_output(guest) != before  # absent-c is attached now
    guest.unplug_share("absent-c")
    wait_until("srv-c.mount stopped", lambda: "/srv/c" not in mounted(guest))
    guest.run("systemctl daemon-reload", check=True)
    assert generator_log(guest) == (replayed + 2, full + 1)
    assert generator_output(guest) == before


def test_a_boot_with_nothing_changed_writes_the_last_output_again(guest: VM) -> None:
    """The boot after one whose generator ran in full: its generator replays the kept memo at
    boot, the shares come up as before, and no new memo is left to keep."""
    kept = guest.run(f"sha256sum {KEPT}", check=True).stdout
    before = generator_output(guest)
    guest.reboot()
    guest.wait_system_running()
    assert generator_log(guest) == (1, 0)
    assert generator_output(guest) == before
    assert mounted(guest) == {"/srv/a": "present-a", "/srv/b": "present-b"}
    assert not guest.run(f"test -e /run/systemd/generator/{MEMO_NAME}").ok
    assert guest.run(f"sha256sum {KEPT}", check=True).stdout == kept


def test_a_policy_share_hotplugged_later_is_mounted_by_systemd(guest: VM, host_dirs) -> None:
    guest.hotplug_share("absent-c", host_dirs["c"])
    wait_until("srv-c.mount active", lambda: mounted(guest).get("/srv/c") == "absent-c")
    assert guest.get_file("/srv/c/c.txt") == b"c\n"
    assert show(guest, f"{DEV}absent\\x2dc.device", "ActiveState")["ActiveState"] == "active"
    journal = guest.run("journalctl -b -u vfs-agent.service -o cat --no-pager").stdout
    assert "Mounted share 'absent-c'" not in journal  # the daemon left it to systemd
    stacked = guest.run("findmnt --list -n -o TARGET -t virtiofs", check=True).stdout.split()
    assert stacked.count("/srv/c") == 1

    guest.unplug_share("absent-c")
    wait_until("srv-c.mount stopped", lambda: "/srv/c" not in mounted(guest))
    assert "not connected" not in guest.run("ls /srv/c 2>&1").stdout
    assert_stopped_cleanly(guest, "srv-c.mount", "/srv/c")


def test_a_busy_mount_of_an_unplugged_share_is_still_unmounted(guest: VM, host_dirs) -> None:
    """A process has its working directory in the share as it is unplugged: systemd's stop of
    the unit, the one its device's unplug started and the daemon asked for too, fails
    (umount(8): target is busy). The daemon then unmounts the share lazily itself: no mount of
    a gone share is left behind, and the share comes back at its next plug."""
    guest.hotplug_share("absent-c", host_dirs["c"])
    wait_until("srv-c.mount active", lambda: mounted(guest).get("/srv/c") == "absent-c")
    guest.run("setsid -f sh -c 'cd /srv/c && exec sleep 600' </dev/null >/dev/null 2>&1")
    cwd = "readlink /proc/$(pgrep -nx sleep)/cwd"
    wait_until("a process in /srv/c", lambda: guest.run(cwd).stdout == "/srv/c\n", timeout=10)
    guest.unplug_share("absent-c")
    wait_until("/srv/c unmounted", lambda: "/srv/c" not in mounted(guest))
    journal = guest.run("journalctl -b -u vfs-agent.service -o cat --no-pager").stdout
    stop = "systemctl stop --job-mode=fail srv-c.mount failed"
    lazily = [line for line in journal.splitlines() if line.startswith(stop)]
    done = "Unmounted /srv/c (/srv/c: its share is gone)."
    assert len(lazily) == 1 and lazily[0].endswith(done), journal[-3000:]
    guest.run("pkill -x sleep", check=True)
    guest.hotplug_share("absent-c", host_dirs["c"])  # and it comes back as ever
    wait_until("srv-c.mount active", lambda: mounted(guest).get("/srv/c") == "absent-c")
    guest.unplug_share("absent-c")
    wait_until("/srv/c unmounted", lambda: "/srv/c" not in mounted(guest))
    assert_stopped_cleanly(guest, "srv-c.mount", "/srv/c")


def test_a_plug_while_the_previous_mount_is_being_stopped_is_mounted(guest: VM, host_dirs) -> None:
    """The host plugs a share again while its unit's previous mount is still being stopped (a
    service that uses the mount takes 8 s to stop). systemd starts no unit that is active when
    its device comes back, so nothing would mount the share: it stayed attached and unmounted.
    The daemon sees the plug systemd missed and starts the unit."""
    unit, device = "srv-c.mount", f"{DEV}absent\\x2dc.device"
    guest.put_file("/etc/systemd/system/holds-c.service", slow_to_stop("srv-c.mount"))
    guest.run("systemctl daemon-reload", check=True)
    guest.hotplug_share("absent-c", host_dirs["c"])
    wait_until("srv-c.mount active", lambda: mounted(guest).get("/srv/c") == "absent-c")
    guest.run("systemctl start holds-c.service", check=True)
    guest.unplug_share("absent-c")

    def stopping() -> bool:
        jobs = guest.run("systemctl list-jobs --plain --no-legend", check=True).stdout
        return [unit, "stop"] in [line.split()[1:3] for line in jobs.splitlines()]

    # The stop job waits for holds-c.service to stop; the old mount is there, and dead.
    wait_until(f"{unit}'s stop job", stopping, timeout=6)
    guest.hotplug_share("absent-c", host_dirs["c"])

    wait_until("the share mounted again", lambda: guest.run("cat /srv/c/c.txt").stdout == "c\n")
    stacked = guest.run("findmnt --list -n -o TARGET -t virtiofs", check=True).stdout.split()
    assert stacked.count("/srv/c") == 1, stacked
    # The case it is: the device came back before the previous mount had stopped.
    came_back = int(
        show(guest, device, "ActiveEnterTimestampMonotonic")["ActiveEnterTimestampMonotonic"]
    )
    stopped = int(
        show(guest, unit, "InactiveEnterTimestampMonotonic")["InactiveEnterTimestampMonotonic"]
    )
    assert came_back < stopped, (came_back, stopped)
    journal = guest.run("journalctl -b -u vfs-agent.service -o cat --no-pager").stdout
    started = (
        f"Started {unit}: share 'absent-c' was plugged while {unit} was still being stopped,"
        " which systemd does not follow."
    )
    assert journal.count(started) == 1, journal[-3000:]

    guest.unplug_share("absent-c")
    wait_until("srv-c.mount stopped", lambda: "/srv/c" not in mounted(guest))
    assert_stopped_cleanly(guest, unit, "/srv/c")
    guest.run("rm /etc/systemd/system/holds-c.service && systemctl daemon-reload", check=True)


def test_a_storm_of_plugs_and_unplugs_that_ends_attached_ends_mounted(
    guest: VM, host_dirs: dict[str, Path]
) -> None:
    """absent-c has a unit bound to its device, and the daemon sees its plugs and unplugs too.
    A storm of them (a plug while the old device is still being removed, an unplug right after
    a plug) that leaves the share attached must leave it mounted by its unit, once, readable:
    systemd's start limit (lifted in the units) and a plug it missed while the previous mount
    was being stopped (started by the daemon) each left it unmounted before."""
    seed = int(os.environ.get("VFS_AGENT_RACE_SEED", time.time()))
    rng = random.Random(seed)
    tag, path, unit = "absent-c", "/srv/c", "srv-c.mount"
    counts = {"plug": 0, "unplug": 0, "plug-while-unplugging": 0}
    for step in range(RACE_OPS + 1):
        guest.collect_unplugged()
        if tag in guest.shares and step < RACE_OPS:
            guest.request_unplug(tag)
            counts["unplug"] += 1
        elif tag not in guest.shares:  # the last step always plugs, if it is not plugged
            guest.wait_free_slot()
            counts["plug-while-unplugging"] += tag in guest.unplugs_pending()
            guest.hotplug_share(tag, host_dirs["c"])
            counts["plug"] += 1
        gap_ends = time.monotonic() + rng.choice([0.0, rng.uniform(0.0, 1.5)])
        while time.monotonic() < gap_ends:
            guest.collect_unplugged()
            time.sleep(0.05)
    print(f"storm (seed {seed}): {counts}")

    def mounted_once() -> bool:
        guest.collect_unplugged()
        targets = guest.run("findmnt --list -n -o TARGET -t virtiofs").stdout.split()
        return targets.count(path) == 1 and guest.run(f"cat {path}/c.txt").stdout == "c\n"

    wait_until(f"the share mounted after the storm (seed {seed})", mounted_once, timeout=90)
    wait_until(
        f"{unit} active", lambda: show(guest, unit, "ActiveState")["ActiveState"] == "active"
    )
    guest.unplug_share(tag)
    wait_until(f"{unit} stopped", lambda: path not in mounted(guest))

    def unplugs_done() -> bool:
        guest.collect_unplugged()
        return not guest.unplugs_pending()

    wait_until("every unplug acknowledged", unplugs_done)
    assert "not connected" not in guest.run(f"ls {path} 2>&1").stdout


def test_the_daemon_mounts_a_glob_share_and_logs_structured_fields(guest: VM, host_dirs) -> None:
    guest.hotplug_share("extra-1", host_dirs["extra"])
    wait_until("extra-1 mounted", lambda: mounted(guest).get("/srv/extra/extra-1") == "extra-1")
    entries = guest.run("journalctl -b -t vfs-agent -o json --no-pager", check=True).stdout
    records = [json.loads(line) for line in entries.splitlines() if line.strip()]
    mounts = [r for r in records if r.get("TAG") == "extra-1" and r.get("ACTION") == "mount"]
    assert mounts and mounts[0]["MOUNT_PATH"] == "/srv/extra/extra-1"
    assert mounts[0]["MESSAGE"] == "Mounted share 'extra-1' on /srv/extra/extra-1."
    status = show(guest, "vfs-agent.service", "StatusText", "ActiveState", "Type")
    assert status["ActiveState"] == "active" and status["Type"] == "notify"
    assert "mounted" in status["StatusText"]
    guest.unplug_share("extra-1")
    wait_until("extra-1 unmounted", lambda: "/srv/extra/extra-1" not in mounted(guest))


def outcome_of(guest: VM, command: str, tag: str) -> dict[str, object]:
    result = guest.run(f"{command} --json")
    assert result.rc == 0, str(result)
    [outcome] = [o for o in json.loads(result.stdout)["outcomes"] if o["tag"] == tag]
    return outcome


def test_commands_by_hand_start_the_shares_unit(guest: VM) -> None:
    """A share whose path has a generated unit is mounted through it (`systemctl start`), never
    behind systemd's back: the unit is active afterwards and nothing is stacked. A dry run says
    so and starts nothing."""
    for command in ("vfs-agent mount-all", "vfs-agent mount present-b"):
        guest.run("systemctl stop srv-b.mount", check=True)
        assert "/srv/b" not in mounted(guest)
        dry = outcome_of(guest, f"{command} --dry-run", "present-b")
        assert (dry["message"], dry["changed"]) == ("would start srv-b.mount", False)
        assert show(guest, "srv-b.mount", "ActiveState")["ActiveState"] == "inactive"
        done = outcome_of(guest, command, "present-b")
        message = "Mounted share 'present-b' on /srv/b (srv-b.mount)."
        assert (done["message"], done["ok"], done["changed"]) == (message, True, True), command
        assert show(guest, "srv-b.mount", "ActiveState")["ActiveState"] == "active"
        targets = guest.run("findmnt --list -n -o TARGET -t virtiofs", check=True).stdout.split()
        assert targets.count("/srv/b") == 1, targets
    again = outcome_of(guest, "vfs-agent mount-all", "present-b")
    assert (again["action"], again["changed"]) == ("keep", False)


def test_a_missing_required_share_fails_only_its_dependents(guest: VM) -> None:
    guest.put_file("/etc/vfs-agent/policy.yaml", POLICY + REQUIRED_ABSENT)
    guest.put_file("/etc/systemd/system/needs-req.service", NEEDS_REQ)
    guest.run("systemctl enable needs-req.service", check=True)
    guest.reboot()
    state = guest.wait_system_running()
    # A dependency failure leaves units inactive rather than "failed", so the system may
    # still say "running"; what matters is that nothing else failed and the boot went on.
    assert state in ("running", "degraded")
    failed = guest.run("systemctl list-units --failed --plain --no-legend --no-pager").stdout
    failed_units = {line.split()[0] for line in failed.splitlines() if line.strip()}
    assert failed_units <= {"srv-req.mount", "needs-req.service"}, failed
    for unit in ("srv-req.mount", "needs-req.service"):
        assert show(guest, unit, "ActiveState")["ActiveState"] != "active", unit
    assert mounted(guest) == {"/srv/a": "present-a", "/srv/b": "present-b"}
    journal = guest.run("journalctl -b --no-pager -o cat", check=True).stdout
    assert "Timed out waiting for device dev-virtiofs-by\\x2dtag-absent\\x2dreq.device" in journal
    assert "Dependency failed for srv-req.mount - virtio-fs share absent-req." in journal
    assert "Dependency failed for needs-req.service" in journal
    replayed, full = generator_log(guest)
    assert (replayed, full) == (0, 1)  # the policy changed: the kept memo no longer holds


SLOW_UDEV_POLICY = """\
version: 1
mounts:
  - {tag: present-a, path: /srv/a, required: true}
"""
SLOW_TAG_HELPER = """\
#!/bin/sh
# Test only: a loaded machine, where udev names the share's device unit late.
sleep 25
exec /usr/lib/vfs-agent/vfs-agent-tag-id.real "$@"
"""


def test_a_slow_udev_delays_but_never_fails_a_present_required_share(guest: VM) -> None:
    """The policy sets no device_timeout, so systemd's own DefaultDeviceTimeoutSec (90 s)
    applies: a device unit that appears 25 s late (well past the 10 s vfs-agent once set)
    still gets the required share and its RequiresMountsFor= consumer up. The share was
    attached when the generator ran, so its mount did not wait for the device unit at all: it
    was mounted before udev named the device, as an fstab line would be."""
    guest.put_file("/etc/vfs-agent/policy.yaml", SLOW_UDEV_POLICY)
    helper = "/usr/lib/vfs-agent/vfs-agent-tag-id"
    guest.run(f"mv {helper} {helper}.real", check=True)
    guest.put_file(helper, SLOW_TAG_HELPER, mode=0o755)
    guest.run("systemctl disable needs-req.service", check=True)
    guest.reboot()
    guest.wait_system_running()
    assert mounted(guest).get("/srv/a") == "present-a"
    assert show(guest, "needs-a.service", "ActiveState")["ActiveState"] == "active"
    assert guest.get_file("/run/needs-a.txt") == b"present-a\n"
    journal = guest.run("journalctl -b --no-pager -o cat", check=True).stdout
    assert "Timed out waiting for device" not in journal
    device = show(guest, f"{DEV}present\\x2da.device", "ActiveEnterTimestampMonotonic")
    userspace = guest.run(
        "systemctl show --value --property=UserspaceTimestampMonotonic", check=True
    ).stdout
    late = int(device["ActiveEnterTimestampMonotonic"]) - int(userspace)
    print(f"slow udev: the share's device unit came {late / 1e6:.1f}s after systemd started")
    assert late > 10_000_000  # past the 10 s default vfs-agent used to set
    assert not guest.run(f"ls /run/systemd/generator/{DEV}present\\\\x2da.device.d").ok
    mount = show(guest, "srv-a.mount", "ActiveEnterTimestampMonotonic", "After")
    assert not any(unit.startswith(DEV) for unit in mount["After"].split()), mount
    early = int(device["ActiveEnterTimestampMonotonic"]) - int(
        mount["ActiveEnterTimestampMonotonic"]
    )
    print(f"slow udev: the share was mounted {early / 1e6:.1f}s before its device unit came")
    assert early > 0


def test_a_share_mounted_before_its_device_unit_still_goes_with_its_device(guest: VM) -> None:
    """Not ordered after its device, the boot-time share is still bound to it: unplugged, its
    mount is stopped, and the service that requires it with it."""
    assert mounted(guest).get("/srv/a") == "present-a"
    guest.unplug_share("present-a")
    wait_until("srv-a.mount stopped", lambda: "/srv/a" not in mounted(guest), timeout=30)
    assert_stopped_cleanly(guest, "srv-a.mount", "/srv/a")
    assert show(guest, "needs-a.service", "ActiveState")["ActiveState"] == "inactive"
