"""Hotplug through systemd (udev rule -> device unit -> generated mount unit) against the daemon.

    .venv/bin/python bench/hotplug_systemd.py [--cycles 9]

One systemd guest of the .deb image (udevd, vfs-agent.service, the generator), whose policy
names `unit-0..2` exactly (so the generator writes mount units bound to their device units) and
`dmn-*` by a glob (no unit: vfs-agent.service mounts those from its udev monitor). Each path
runs --cycles of QMP device_add -> file readable -> device_del -> mount gone, measured inside
the guest from the first kernel uevent, as bench/hotplug_latency.py does (the QMP-to-guest part
is not counted). The systemd path runs the udev helper for every virtio-fs device event; the
daemon path runs no process per event. The guest runs a TCG thread per vCPU
(VMConfig.tcg_thread), as the guest's CPUs would run side by side in a real VM.

A third path is the floor of any mount unit: `bare-0..2`, which the policy ignores, each with a
hand-written mount unit (`Type=virtiofs`, bound to and wanted by the same per-tag device unit
that vfs-agent's udev rule makes, as an administrator would write it): no wait for the host,
one mount(8). What it takes over the daemon, no change to the generated units can take away.
Its unplug, though, is not systemd's while vfs-agent.service runs: the daemon lazily unmounts
any virtio-fs mount whose share is gone, whoever mounted it, and wins that race. So both kinds
of unit then run --cycles more with vfs-agent.service stopped: there every unplug is systemd's
stop job, and the two kinds compare like for like.

Where the time of both kinds of unit goes, per hotplug, on the guest's monotonic clock, from
the kernel's `add` uevent of the virtio device as `udevadm monitor` saw it: systemd's own
timestamps of the device unit (active) and of the mount unit (job started, mounted: a generated
unit's mount(8) runs vfs-agent's mount helper, which waits for the share's host, then runs
mount(8) again; a hand-written one's mounts), then the
poller's "readable" (its own receipt of that uevent, a few ms apart); and udevd's marks
(done with the `add`, the kernel's `bind`, done with the `bind`).
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from hotplug_latency import POLLER, arm, collect, cycles, summary
from tests.guestlib.deb_image import build_deb, ensure_deb_image
from tests.guestlib.processes import stop_all
from tests.guestlib.vm import VM, VMConfig, new_run_dir

from vfs_agent.core.escape import mount_unit_name
from vfs_agent.core.render_systemd import device_unit_name

POLICY = """version: 1
mounts:
  - {tag: unit-0, path: /srv/unit/unit-0}
  - {tag: unit-1, path: /srv/unit/unit-1}
  - {tag: unit-2, path: /srv/unit/unit-2}
  - {tag: "dmn-*", path: "/srv/dmn/{tag}"}
  - {tag: "bare-*", ignore: true}
"""
# The hand-written units of the `bare-*` shares (systemd.mount(5)): what the generated ones do
# for hotplug (BindsTo=, After= and <device>.wants/ for the device; no start limit), without
# the wait for the host.
BARE_UNIT = """[Unit]
Description=hand-written virtio-fs mount {tag}
BindsTo={device}
After={device}
StartLimitIntervalSec=0

[Mount]
What={tag}
Where=/srv/bare/{tag}
Type=virtiofs
Options=nosuid,nodev,nofail
"""
MONITOR_LOG = "/run/bench-udev-monitor.log"
MONITOR = (
    f"setsid -f sh -c 'exec stdbuf -oL udevadm monitor --kernel --udev -s virtio -s virtiofs"
    f" >{MONITOR_LOG} 2>&1 </dev/null'"
)
# KERNEL[2345.678901] add      /devices/pci0000:00/0000:00:02.0/0000:01:00.0/virtio3 (virtio)
EVENT = re.compile(r"^(KERNEL|UDEV)\s*\[(\d+\.\d+)\]\s+(\w+)\s+(\S+)\s+\((\w+)\)")
# The steps of the split, each from the end of the one before. The rule matches the virtio
# device's `add` (its driver is bound by the time udevd handles it), so the device unit comes
# from that event, before udevd has handled the `bind`.
STEPS = (
    ("uevent -> device unit active (udevd, systemd)", "device"),
    ("device active -> mount job starts", "mount_start"),
    ("mount job starts -> mounted", "mounted"),
    ("mounted -> the poller reads the file", "readable"),
)
# udevd's own marks, from the first kernel uevent (not a chain).
UDEV_MARKS = (
    ("udevd done with the `add`", "u_add"),
    ("kernel `bind` uevent", "k_bind"),
    ("udevd done with the `bind`", "u_bind"),
)


def monotonic(vm: VM, unit: str, prop: str) -> float:
    out = vm.run(["systemctl", "show", "--value", f"--property={prop}", unit], check=True)
    return int(out.stdout) / 1e6


def events_since(vm: VM, skip: int) -> tuple[list[tuple[str, float, str, str]], int]:
    """The udevadm monitor events after the first `skip` lines, and the line count now."""
    lines = vm.get_file(MONITOR_LOG).decode(errors="replace").splitlines()
    parsed = []
    for line in lines[skip:]:
        match = EVENT.match(line)
        if match:
            source, stamp, action, _devpath, subsystem = match.groups()
            parsed.append((source, float(stamp), action, subsystem))
    return parsed, len(lines)


def first(events: list[tuple[str, float, str, str]], source: str, action: str) -> float:
    return next(t for s, t, a, sub in events if (s, a, sub) == (source, action, "virtio"))


Split = dict[str, float]


def install_bare_units(vm: VM) -> None:
    for i in range(3):
        tag = f"bare-{i}"
        unit, device = mount_unit_name(f"/srv/bare/{tag}"), device_unit_name(tag)
        vm.put_file(f"/etc/systemd/system/{unit}", BARE_UNIT.format(tag=tag, device=device))
        wants = f"/etc/systemd/system/{device}.wants"
        vm.run(["mkdir", "-p", wants], check=True)
        vm.run(["ln", "-sf", f"../{unit}", f"{wants}/{unit}"], check=True)


def split_cycles(
    vm: VM, share: Path, prefix: str, n: int
) -> tuple[list[float], list[float], list[Split]]:
    """The cycles of mount units for `prefix-0..2` at /srv/<prefix>/, with the split of each
    hotplug."""
    up: list[float] = []
    down: list[float] = []
    splits: list[Split] = []
    for i in range(n):
        tag = f"{prefix}-{i % 3}"
        path = f"/srv/{prefix}/{tag}/payload.txt"
        seen = events_since(vm, 0)[1]
        out = arm(vm, "up", path)
        vm.hotplug_share(tag, share)
        up.append(collect(vm, out))
        events = events_since(vm, seen)[0]
        for _ in range(50):  # udevadm monitor may write its last line after the mount
            if any(e[0] == "UDEV" and e[2] == "bind" for e in events):
                break
            time.sleep(0.1)
            events = events_since(vm, seen)[0]
        mount = mount_unit_name(f"/srv/{prefix}/{tag}")
        device = device_unit_name(tag)
        t0 = first(events, "KERNEL", "add")
        marks = {
            "u_add": first(events, "UDEV", "add"),
            "k_bind": first(events, "KERNEL", "bind"),
            "u_bind": first(events, "UDEV", "bind"),
        }
        stamps = {
            "device": monotonic(vm, device, "ActiveEnterTimestampMonotonic"),
            "mount_start": monotonic(vm, mount, "InactiveExitTimestampMonotonic"),
            "mounted": monotonic(vm, mount, "ActiveEnterTimestampMonotonic"),
            "readable": t0 + up[-1],
        }
        previous = t0
        split: Split = {key: mark - t0 for key, mark in marks.items()}
        for _name, key in STEPS:
            split[key] = stamps[key] - previous
            previous = stamps[key]
        splits.append(split)
        out = arm(vm, "down", path)
        vm.unplug_share(tag)
        down.append(collect(vm, out))
    return up, down, splits


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=9)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vfs-bench-hotplug-systemd-"))
    share = work / "share"
    share.mkdir()
    (share / "payload.txt").write_text("payload\n")
    image = ensure_deb_image(build_deb(work / "deb"))
    config = VMConfig(
        mode="systemd", name="bench-hotplug-systemd", hotplug_slots=3, tcg_thread="multi"
    )
    try:
        with VM.boot(image, config, new_run_dir("bench-hotplug-systemd")) as vm:
            vm.wait_system_running(settle=False)
            vm.put_file("/root/poll.py", POLLER)
            vm.put_file("/etc/vfs-agent/policy.yaml", POLICY)
            vm.run("chmod 755 /etc/vfs-agent && vfs-agent policy compile", check=True)
            install_bare_units(vm)
            vm.run("systemctl daemon-reload && systemctl reload vfs-agent.service", check=True)
            units = vm.run("ls /run/systemd/generator | grep -c '^srv-unit-unit'", check=True)
            assert int(units.stdout) == 3, "the generator wrote no units for unit-0..2"
            vm.run(MONITOR, check=True)
            unit_up, unit_down, splits = split_cycles(vm, share, "unit", args.cycles)
            daemon_up, daemon_down = cycles(vm, share, "dmn", "/srv/dmn", args.cycles)
            bare_up, bare_down, bare_splits = split_cycles(vm, share, "bare", args.cycles)
            vm.run("systemctl stop vfs-agent.service", check=True)
            alone_unit_down = split_cycles(vm, share, "unit", args.cycles)[1]
            alone_bare_down = split_cycles(vm, share, "bare", args.cycles)[1]
            journal = vm.run("journalctl -b -u vfs-agent.service -o cat --no-pager").stdout
            for prefix in ("unit", "bare"):
                assert f"Mounted share '{prefix}-" not in journal, (
                    "the daemon mounted a unit's share"
                )
            taken = journal.count("Unmounted /srv/bare/")
    finally:
        stop_all()
    print(f"\nhotplug in a systemd guest (TCG), {args.cycles} cycles each:")
    print(summary("generated units: uevent -> readable", unit_up))
    print(summary("daemon: uevent -> readable", daemon_up))
    print(summary("hand-written units: uevent -> readable", bare_up))
    print(summary("generated units: unplug -> unmounted", unit_down))
    print(summary("daemon: unplug -> unmounted", daemon_down))
    print(summary("hand-written units: unplug -> unmounted", bare_down))
    print(f"  of which the daemon unmounted {taken} of {args.cycles}, before systemd's stop job")
    print("with vfs-agent.service stopped (every unplug systemd's stop job):")
    print(summary("generated units: unplug -> unmounted", alone_unit_down))
    print(summary("hand-written units: unplug -> unmounted", alone_bare_down))
    daemon = statistics.median(daemon_up)
    for title, ups in (("generated units", unit_up), ("hand-written units", bare_up)):
        ratio = statistics.median(ups) / daemon
        print(f"ratio {title}/daemon path (median, hotplug): {ratio:.2f}")
    print(f"unplug -> mount gone, generated units, max: {max(unit_down):.2f} s")
    ratio = statistics.median(alone_unit_down) / statistics.median(alone_bare_down)
    print(f"ratio generated/hand-written units (median, unplug, daemon stopped): {ratio:.2f}")
    for title, of in (("generated units", splits), ("hand-written units", bare_splits)):
        print(f"where the time goes, {title} (median ms per step; min-max):")
        for name, key in STEPS:
            ms = [s[key] * 1000 for s in of]
            print(f"  {name:46} {statistics.median(ms):6.0f}   ({min(ms):.0f}-{max(ms):.0f})")
        print("udevd's marks (median ms from the kernel's `add` uevent; min-max):")
        for name, key in UDEV_MARKS:
            ms = [s[key] * 1000 for s in of]
            print(f"  {name:46} {statistics.median(ms):6.0f}   ({min(ms):.0f}-{max(ms):.0f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
