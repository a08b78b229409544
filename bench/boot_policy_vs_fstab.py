"""What do the generator and its device-bound units cost the boot?

    .venv/bin/python bench/boot_policy_vs_fstab.py [--boots 5] [--runs 10]

One systemd guest of the .deb image with 8 shares, rebooted into two setups in turn:
- policy: the 8 tags in /etc/vfs-agent/policy.yaml (required), mounted by generated units;
- fstab: the same 8 mounts written by hand in /etc/fstab (no policy);
each booted --boots times; the figure is when multi-user.target was reached (systemd's
monotonic clock, kernel included). Then, in the guest, the generator's run time (compiled
policy, and the slow path with YAML and pydantic) against `python3 -c pass`, --runs each.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.guestlib.deb_image import build_deb, ensure_deb_image
from tests.guestlib.processes import stop_all
from tests.guestlib.vm import VM, VMConfig, new_run_dir

TAGS = [f"share-{i}" for i in range(8)]
POLICY = "version: 1\ndefaults: {device_timeout: 60}\nmounts:\n" + "".join(
    f"  - {{tag: {t}, path: /srv/{t}, required: true}}\n" for t in TAGS
)
FSTAB = "".join(f"{t} /srv/{t} virtiofs nosuid,nodev 0 0\n" for t in TAGS)
TIMER = """import subprocess, sys, time, statistics
argv, runs = sys.argv[2:], int(sys.argv[1])
times = []
for _ in range(runs):
    t = time.perf_counter(); subprocess.run(argv, check=True); times.append(time.perf_counter() - t)
print(statistics.median(times))
"""
GENERATOR = "/usr/lib/systemd/system-generators/vfs-agent-generator"


def multi_user_seconds(vm: VM) -> float:
    out = vm.run(
        "systemctl show multi-user.target --property=ActiveEnterTimestampMonotonic --value",
        check=True,
    )
    return int(out.stdout) / 1e6


def mounted_count(vm: VM) -> int:
    return len(vm.run("findmnt -n -t virtiofs -o TARGET").stdout.split())


def boot_into(vm: VM, setup: str) -> float:
    if setup == "policy":
        vm.put_file("/etc/vfs-agent/policy.yaml", POLICY)
        vm.run("cp /root/fstab.orig /etc/fstab", check=True)
    else:
        vm.run("rm -f /etc/vfs-agent/policy.yaml /var/lib/vfs-agent/policy.json", check=True)
        vm.run("cp /root/fstab.orig /etc/fstab", check=True)
        vm.put_file("/root/fstab.extra", FSTAB)
        vm.run("cat /root/fstab.extra >> /etc/fstab", check=True)
    vm.reboot()
    vm.wait_system_running(settle=False)
    assert mounted_count(vm) == len(TAGS), f"{setup}: not every share mounted"
    return multi_user_seconds(vm)


def median_run(vm: VM, runs: int, *argv: str) -> float:
    out = vm.run(["python3", "/root/timer.py", str(runs), *argv], timeout=600, check=True)
    return float(out.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boots", type=int, default=5)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="vfs-bench-boot-"))
    shares = []
    for tag in TAGS:
        (root / tag).mkdir()
        shares.append((tag, root / tag))
    image = ensure_deb_image(build_deb(root / "deb"))
    times: dict[str, list[float]] = {"policy": [], "fstab": []}
    config = VMConfig(mode="systemd", name="bench-boot", shares=shares, hotplug_slots=0)
    try:
        with VM.boot(image, config, new_run_dir("bench-boot")) as vm:
            vm.wait_system_running(settle=False)
            vm.run("cp /etc/fstab /root/fstab.orig && chmod 755 /etc/vfs-agent", check=True)
            for i in range(args.boots):
                for setup in ("policy", "fstab"):
                    seconds = boot_into(vm, setup)
                    times[setup].append(seconds)
                    print(
                        f"  boot {i + 1} {setup:6}: multi-user.target at {seconds:.2f}s", flush=True
                    )
            vm.put_file("/root/timer.py", TIMER)
            vm.put_file("/etc/vfs-agent/policy.yaml", POLICY)
            vm.run("vfs-agent mount-all", check=True)  # compiles the policy (fast path)
            base = median_run(vm, args.runs, "python3", "-c", "pass")
            # /run is a tmpfs, like the generator directories systemd hands over.
            imports = median_run(
                vm, args.runs, "python3", "-c", "import vfs_agent.systemd.generator"
            )
            fast = median_run(vm, args.runs, GENERATOR, "/run/gen-bench")
            vm.run("rm /var/lib/vfs-agent/policy.json", check=True)
            slow = median_run(vm, args.runs, GENERATOR, "/run/gen-bench")
    finally:
        stop_all()
    if args.boots:
        policy, fstab = statistics.median(times["policy"]), statistics.median(times["fstab"])
        print(f"\nboot to multi-user.target, 8 shares, median of {args.boots} boots each (TCG):")
        print(
            f"  policy + generator: {policy:.2f}s  {sorted(round(t, 2) for t in times['policy'])}"
        )
        print(f"  hand-written fstab: {fstab:.2f}s  {sorted(round(t, 2) for t in times['fstab'])}")
        print(f"  ratio policy/fstab: {policy / fstab:.3f}")
    print(f"generator run time in the guest, median of {args.runs} runs:")
    print(f"  python3 -c pass:           {base * 1000:.0f} ms")
    print(f"  import of the generator:   {imports * 1000:.0f} ms  (ratio {imports / base:.2f})")
    print(f"  generator, compiled policy: {fast * 1000:.0f} ms  (ratio {fast / base:.2f})")
    print(f"  generator, YAML + pydantic: {slow * 1000:.0f} ms  (ratio {slow / base:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
