"""What does vfs-agent.service cost while nothing happens?

    .venv/bin/python bench/daemon_idle.py [--idle 60]

One systemd guest of the .deb image with two shares attached at boot (zero-config: the
generator's units mount them, the daemon follows udev). The daemon runs as the packaged
vfs-agent.service, started by systemd, in two set-ups in turn:
- without watchdog: a drop-in `WatchdogSec=0` (systemd then sets no WATCHDOG_USEC);
- the packaged unit as it is (`WatchdogSec=60s`: a WATCHDOG=1 every 30 s).
After a restart and 10 s to settle, the daemon's wakeups are counted over --idle seconds: the
voluntary plus involuntary context switches of all its threads (/proc/PID/task/*/status), and
the times it was scheduled in (/proc/PID/task/*/schedstat, third field) as a cross-check;
then its RSS and peak RSS. Reading /proc from outside does not wake it. It runs in a guest,
not on the host, because only there it is the real service: started by systemd, with its
NOTIFY_SOCKET, and listening to udevd's netlink source rather than the kernel's.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.guestlib.deb_image import build_deb, ensure_deb_image
from tests.guestlib.processes import stop_all
from tests.guestlib.vm import VM, VMConfig, new_run_dir

DROP_IN = "/etc/systemd/system/vfs-agent.service.d/bench-no-watchdog.conf"
SETUPS = {"without watchdog": "[Service]\nWatchdogSec=0\n", "packaged (WatchdogSec=60s)": None}
# Sums over the daemon's threads: context switches, times scheduled in; then its memory.
SAMPLE = """pid=$(systemctl show -P MainPID vfs-agent.service)
cat /proc/$pid/task/*/status | awk '/ctxt_switches/ {s += $2} END {print s}'
cat /proc/$pid/task/*/schedstat | awk '{s += $3} END {print s}'
awk '/^VmRSS:/ {r = $2} /^VmHWM:/ {h = $2} /^Threads:/ {t = $2} END {print r, h, t}' \
    /proc/$pid/status
echo $pid
"""


def sample(vm: VM) -> list[int]:
    """[context switches, times scheduled in, RSS kB, peak RSS kB, threads, pid]."""
    return [int(v) for v in vm.run(SAMPLE, check=True).stdout.split()]


def measure(vm: VM, drop_in: str | None, idle: int) -> dict[str, int]:
    if drop_in is None:
        vm.run(f"rm -f {DROP_IN}", check=True)
    else:
        vm.put_file(DROP_IN, drop_in)
    vm.run("systemctl daemon-reload && systemctl restart vfs-agent.service", check=True)
    env = vm.run("systemctl show -P MainPID vfs-agent.service", check=True).stdout.strip()
    watchdog = vm.run(f"tr '\\0' '\\n' < /proc/{env}/environ | grep -c ^WATCHDOG_USEC=").stdout
    time.sleep(10)
    before = sample(vm)
    time.sleep(idle)
    after = sample(vm)
    assert before[5] == after[5], "the daemon restarted while it was measured"
    return {
        "switches": after[0] - before[0],
        "scheduled": after[1] - before[1],
        "rss": after[2],
        "peak": after[3],
        "threads": after[4],
        "watchdog_env": int(watchdog.strip() or 0),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idle", type=int, default=60)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vfs-bench-idle-"))
    shares = []
    for tag in ("idle-a", "idle-b"):
        (work / tag).mkdir()
        shares.append((tag, work / tag))
    image = ensure_deb_image(build_deb(work / "deb"))
    config = VMConfig(
        mode="systemd", name="bench-idle", shares=shares, hotplug_slots=0, tcg_thread="multi"
    )
    results = {}
    try:
        with VM.boot(image, config, new_run_dir("bench-idle")) as vm:
            vm.wait_system_running()
            for name, drop_in in SETUPS.items():
                results[name] = measure(vm, drop_in, args.idle)
            mounts = vm.run("findmnt -n -t virtiofs -o TARGET", check=True).stdout.split()
            assert len(mounts) == 2, f"expected both shares mounted, got {mounts}"
    finally:
        stop_all()
    print(f"\nvfs-agent.service idle in a systemd guest (TCG), {args.idle} s each:")
    for name, r in results.items():
        per_minute = r["switches"] * 60 / args.idle
        print(
            f"  {name:28} {per_minute:5.1f} wakeups/min ({r['switches']} context switches,"
            f" scheduled in {r['scheduled']} times; WATCHDOG_USEC set: {bool(r['watchdog_env'])})"
            f"   RSS {r['rss'] / 1024:.1f} MB, peak {r['peak'] / 1024:.1f} MB,"
            f" {r['threads']} thread(s)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
