"""Hotplug through systemd (udev rule -> device unit -> generated mount unit) against the daemon.

    .venv/bin/python bench/hotplug_systemd.py [--cycles 9]

One systemd guest of the .deb image (udevd, vfs-agent.service, the generator), whose policy
names `unit-0..2` exactly (so the generator writes mount units bound to their device units) and
`dmn-*` by a glob (no unit: vfs-agent.service mounts those from its udev monitor). Each path
runs --cycles of QMP device_add -> file readable -> device_del -> mount gone, measured inside
the guest from the first kernel uevent, as bench/hotplug_latency.py does (the QMP-to-guest part
is not counted). The systemd path runs the udev helper for every virtio-fs device event; the
daemon path runs no process per event.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from hotplug_latency import POLLER, cycles, summary
from tests.guestlib.deb_image import build_deb, ensure_deb_image
from tests.guestlib.processes import stop_all
from tests.guestlib.vm import VM, VMConfig, new_run_dir

POLICY = """version: 1
mounts:
  - {tag: unit-0, path: /srv/unit/unit-0}
  - {tag: unit-1, path: /srv/unit/unit-1}
  - {tag: unit-2, path: /srv/unit/unit-2}
  - {tag: "dmn-*", path: "/srv/dmn/{tag}"}
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=9)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vfs-bench-hotplug-systemd-"))
    share = work / "share"
    share.mkdir()
    (share / "payload.txt").write_text("payload\n")
    image = ensure_deb_image(build_deb(work / "deb"))
    config = VMConfig(mode="systemd", name="bench-hotplug-systemd", hotplug_slots=3)
    try:
        with VM.boot(image, config, new_run_dir("bench-hotplug-systemd")) as vm:
            vm.wait_system_running(settle=False)
            vm.put_file("/root/poll.py", POLLER)
            vm.put_file("/etc/vfs-agent/policy.yaml", POLICY)
            vm.run("chmod 755 /etc/vfs-agent && vfs-agent policy compile", check=True)
            vm.run("systemctl daemon-reload && systemctl reload vfs-agent.service", check=True)
            units = vm.run("ls /run/systemd/generator | grep -c '^srv-unit-unit'", check=True)
            assert int(units.stdout) == 3, "the generator wrote no units for unit-0..2"
            unit_up, unit_down = cycles(vm, share, "unit", "/srv/unit", args.cycles)
            daemon_up, daemon_down = cycles(vm, share, "dmn", "/srv/dmn", args.cycles)
            journal = vm.run("journalctl -b -u vfs-agent.service -o cat --no-pager").stdout
            assert "Mounted share 'unit-" not in journal, "the daemon mounted a unit's share"
    finally:
        stop_all()
    print(f"\nhotplug in a systemd guest (TCG), {args.cycles} cycles each:")
    print(summary("systemd units: uevent -> readable", unit_up))
    print(summary("daemon: uevent -> readable", daemon_up))
    print(summary("systemd units: unplug -> unmounted", unit_down))
    print(summary("daemon: unplug -> unmounted", daemon_down))
    ratio = statistics.median(unit_up) / statistics.median(daemon_up)
    print(f"ratio systemd path/daemon path (median, hotplug): {ratio:.2f}")
    print(f"unplug -> mount gone, systemd path, max: {max(unit_down):.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
