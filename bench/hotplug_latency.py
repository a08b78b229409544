"""How fast does `vfs-agent daemon` follow hotplug and unplug, and what does it cost at rest?

    .venv/bin/python bench/hotplug_latency.py [--cycles 12] [--idle 60]

In one fast-boot guest (no udevd: both contenders read the kernel's own uevents):
- daemon: `vfs-agent daemon` with a policy naming `bench-*`;
- baseline: busybox `uevent` running a four-line shell script that mounts on `add` and lazily
  unmounts on `remove` (the host's static busybox, copied into the guest);
each for N cycles of QMP device_add -> file readable at the mount path -> device_del -> mount
gone. Latencies are measured inside the guest, from the first kernel uevent of the hotplug
(virtio add) or of the unplug (virtiofs remove) to a 1 ms poller seeing the file readable or
the mount gone; the QMP-to-guest part (about 0.4-0.9 s under TCG, the same for both) is not
counted. Then the daemon's CPU time and wakeups (context switches) over an idle period, started
by hand as here it has no watchdog to ping, and its RSS.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.guestlib.image import ensure_image
from tests.guestlib.processes import stop_all
from tests.guestlib.vm import VM, VMConfig, new_run_dir

POLICY = 'version: 1\nmounts:\n  - {tag: "bench-*", path: "/srv/bench/{tag}"}\n'
BASELINE = """#!/bin/sh
[ "$SUBSYSTEM" = virtiofs ] || exit 0
case "$ACTION" in
add) mkdir -p "/srv/base/$TAG" && mount -t virtiofs -o nosuid,nodev "$TAG" "/srv/base/$TAG" ;;
remove) umount -l "/srv/base/$TAG" ;;
esac
"""
# In the guest: listen for kernel uevents, stamp the first one of the hotplug (virtio add) or
# the unplug (virtiofs remove) with CLOCK_MONOTONIC, then poll every millisecond until PATH is
# readable ("up") or its directory is no longer a mount point ("down"); write the seconds
# between the two to OUT. Guest-side, so neither the channel nor Python start-up is counted.
POLLER = """import os, socket, sys, time
mode, path, out = sys.argv[1:4]
sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, 15)
sock.bind((0, 1))
open(out + ".ready", "w").close()
if mode == "up":
    want = (b"ACTION=add", b"SUBSYSTEM=virtio")
else:
    want = (b"ACTION=remove", b"SUBSYSTEM=virtiofs")
while True:
    fields = sock.recv(65536).split(bytes(1))
    if all(w in fields for w in want):
        break
t0 = time.monotonic()
def done():
    if mode == "up":
        try:
            return open(path).read() == "payload" + chr(10)
        except OSError:
            return False
    target = os.path.dirname(path)
    return not any(l.split()[4] == target for l in open("/proc/self/mountinfo"))
while not done():
    time.sleep(0.001)
with open(out + ".tmp", "w") as f:
    f.write(str(time.monotonic() - t0))
os.rename(out + ".tmp", out)
"""


def arm(vm: VM, mode: str, path: str) -> str:
    """Start the guest poller; returns its result file once it listens."""
    out = f"/run/bench-{mode}"
    vm.run(f"rm -f {out} {out}.ready", check=True)
    vm.run(f"setsid -f python3 /root/poll.py {mode} {path} {out} </dev/null >/dev/null 2>&1")
    while vm.run(f"test -e {out}.ready").rc != 0:
        time.sleep(0.05)
    return out


def collect(vm: VM, out: str) -> float:
    """The guest-side seconds, once the poller wrote them."""
    while vm.run(f"test -e {out}").rc != 0:
        time.sleep(0.02)
    return float(vm.get_file(out))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(name: str, values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return (
        f"{name:40} median {statistics.median(ms):7.0f} ms   p95 {percentile(ms, 0.95):7.0f} ms"
        f"   min {min(ms):6.0f}   max {max(ms):6.0f}   (n={len(ms)})"
    )


def cycles(vm: VM, share: Path, prefix: str, root: str, n: int) -> tuple[list[float], list[float]]:
    up, down = [], []
    for i in range(n):
        tag = f"{prefix}-{i % 3}"
        path = f"{root}/{tag}/payload.txt"
        out = arm(vm, "up", path)
        vm.hotplug_share(tag, share)  # QMP device_add
        up.append(collect(vm, out))
        out = arm(vm, "down", path)
        vm.unplug_share(tag)  # QMP device_del, waits for DEVICE_DELETED
        down.append(collect(vm, out))
    return up, down


def daemon_pid(vm: VM) -> int:
    out = vm.run("pgrep -f '^/usr/bin/python3 /usr/local/bin/vfs-agent daemon'", check=True)
    return int(out.stdout.split()[0])


def cpu_seconds(vm: VM, pid: int) -> float:
    fields = vm.get_file(f"/proc/{pid}/stat").decode().rsplit(")", 1)[1].split()
    ticks = int(vm.run("getconf CLK_TCK", check=True).stdout)
    return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime


def wakeups(vm: VM, pid: int) -> int:
    """Voluntary plus involuntary context switches of the process so far."""
    status = vm.get_file(f"/proc/{pid}/status").decode()
    return sum(int(line.split()[1]) for line in status.splitlines() if "ctxt_switches" in line)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=12)
    parser.add_argument("--idle", type=int, default=60)
    args = parser.parse_args()
    share = Path(tempfile.mkdtemp(prefix="vfs-bench-"))
    (share / "payload.txt").write_text("payload\n")
    config = VMConfig(mode="fast", name="bench-hotplug", hotplug_slots=3, tcg_thread="multi")
    try:
        with VM.boot(ensure_image(), config, new_run_dir("bench-hotplug")) as vm:
            vm.put_file("/root/poll.py", POLLER)
            vm.put_file("/etc/vfs-agent/policy.yaml", POLICY)
            vm.run("chmod 755 /etc/vfs-agent", check=True)
            vm.put_file("/usr/local/bin/busybox", Path("/bin/busybox").read_bytes(), 0o755)
            vm.put_file("/root/baseline.sh", BASELINE, 0o755)

            base = "setsid -f sh -c 'exec /usr/local/bin/busybox uevent /root/baseline.sh"
            vm.run(base + " >/var/log/baseline.log 2>&1 </dev/null'", check=True)
            time.sleep(2)
            base_up, base_down = cycles(vm, share, "base", "/srv/base", args.cycles)
            vm.run("pkill -f 'busybox uevent'")

            start = "setsid -f sh -c 'exec vfs-agent daemon >/var/log/daemon.log 2>&1 </dev/null'"
            vm.run(start, check=True)
            time.sleep(5)
            up, down = cycles(vm, share, "bench", "/srv/bench", args.cycles)

            pid = daemon_pid(vm)
            cpu0, woken0 = cpu_seconds(vm, pid), wakeups(vm, pid)
            time.sleep(args.idle)
            cpu1, woken1 = cpu_seconds(vm, pid), wakeups(vm, pid)
            rss = vm.run(f"grep VmRSS /proc/{pid}/status", check=True).stdout.split()[1]
            vm.run(f"kill {pid}")
    finally:
        stop_all()
    print(f"\nhotplug latency in a TCG guest (fast boot, kernel uevents), {args.cycles} cycles:")
    print(summary("daemon: hotplug uevent -> readable", up))
    print(summary("busybox: hotplug uevent -> readable", base_up))
    print(summary("daemon: unplug uevent -> unmounted", down))
    print(summary("busybox: unplug uevent -> unmounted", base_down))
    add_ratio = statistics.median(up) / statistics.median(base_up)
    remove_ratio = statistics.median(down) / statistics.median(base_down)
    print(f"ratio daemon/baseline (median): add {add_ratio:.2f}, remove {remove_ratio:.2f}")
    print(
        f"daemon over {args.idle} idle seconds: CPU {cpu1 - cpu0:.2f} s, "
        f"{woken1 - woken0} wakeups; RSS {rss} kB"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
