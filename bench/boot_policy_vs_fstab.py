"""What do vfs-agent's generator, units and daemon cost the boot, against hand-written fstab?

    .venv/bin/python bench/boot_policy_vs_fstab.py [--boots 5] [--runs 10]

One systemd guest of the .deb image with 8 shares, rebooted into two setups in turn:
- policy: the 8 tags in /etc/vfs-agent/policy.yaml (required), compiled as the package and
  image builders do, mounted by generated units bound to the udev rule's device units, with
  vfs-agent.service running; nothing changed since the last policy boot, so the generator
  writes its last full run's output again from the memo the daemon kept (a boot not counted
  comes first, to leave one); with --full-generator the memo is removed before each policy
  boot, so the generator runs in full, as at the first boot after a change;
- fstab: the same 8 mounts written by hand in /etc/fstab, vfs-agent out of the boot (its
  generator, udev rule and service masked), as a guest without vfs-agent would boot;
each booted --boots times, interleaved; the figure is systemd's own: the monotonic time at which
multi-user.target was reached (kernel included, the clock starts at the guest's reset). Also
from the start of userspace (the kernel and initramfs phase runs none of vfs-agent, and on a
shared machine it varies most), and each pair's ratio (a policy boot and the fstab boot right
after it see about the same load). And from the start of the generators, the first moment
anything of vfs-agent runs: what PID1 does before them (its own set-up, which once stalled for
13 s on the shared machine) is noise to this comparison; likewise `local-fs.target` from that
moment and from `local-fs-pre.target` (the span of the shares' mount units), and the CPU time
systemd accounted to vfs-agent's units (the daemon, the prober, and the `vfs-agent-answer@`
waits of a system without the mount helper) and to the shares' mount units by the time the boot
was done. Each boot's `systemd-analyze`, critical chain and blame go to the run directory; the
generator phase (all generators, systemd's GeneratorsStart/Finish timestamps) and the host's
load average are printed. Every boot is checked to be the setup it is counted as (check_setup).
Then, in the guest, the generator's run time (nothing changed since its last full run; in full
with the compiled policy; in full with YAML and pydantic) against `python3 -c pass`, --runs
each, each run into a new empty directory; what the standard library's modules that the full
generator imports cost by themselves, and `dataclasses` alone, the least that a core of frozen
dataclasses (the project's contract for the core's types) imports; and the generator with an
empty page cache.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.guestlib.deb_image import build_deb, ensure_deb_image
from tests.guestlib.processes import stop_all
from tests.guestlib.vm import VM, VMConfig, new_run_dir

from vfs_agent.core.render_systemd import GENERATED_MARK, device_unit_name
from vfs_agent.systemd.replay import KEPT, MEMO_NAME, REPLAYED

TAGS = [f"share-{i}" for i in range(8)]
POLICY = "version: 1\ndefaults: {device_timeout: 60}\nmounts:\n" + "".join(
    f"  - {{tag: {t}, path: /srv/{t}, required: true}}\n" for t in TAGS
)
FSTAB = "".join(f"{t} /srv/{t} virtiofs nosuid,nodev 0 0\n" for t in TAGS)
# RUNS [--cold] [--fresh DIR] ARGV...: the median wall time of ARGV; --cold empties the page
# cache before each run, as it is when the generators run at boot; --fresh makes DIR a new
# empty directory before each run, as systemd hands a generator its directories.
TIMER = """import os, shutil, subprocess, sys, time, statistics
runs, argv = int(sys.argv[1]), sys.argv[2:]
cold = argv[0] == "--cold"
argv = argv[cold:]
fresh = argv[1] if argv[0] == "--fresh" else None
argv = argv[2:] if fresh else argv
times = []
for _ in range(runs):
    if fresh:
        shutil.rmtree(fresh, ignore_errors=True); os.mkdir(fresh)
    if cold:
        subprocess.run(["sh", "-c", "sync && echo 3 >/proc/sys/vm/drop_caches"], check=True)
    t = time.perf_counter(); subprocess.run(argv, check=True); times.append(time.perf_counter() - t)
print(statistics.median(times))
"""
# The standard library's public modules that importing the generator adds to an interpreter's
# start (printed by the guest's own Python, so no list here goes stale).
STDLIB_OF_GENERATOR = """import sys
before = set(sys.modules)
import vfs_agent.systemd.generator
added = set(sys.modules) - before
print(",".join(sorted(m for m in added if m in sys.stdlib_module_names and m[0] != "_")))
"""
GENERATOR = "/usr/lib/systemd/system-generators/vfs-agent-generator"
# Masking a generator and a udev rule: a link to /dev/null of the same name in /etc (whose
# system-generators directory a fresh image does not have).
MASKS = {
    "/etc/systemd/system-generators/vfs-agent-generator": "/dev/null",
    "/etc/udev/rules.d/70-vfs-agent.rules": "/dev/null",
    "/etc/systemd/system/vfs-agent.service": "/dev/null",
}
MANAGER_TIMES = (
    "GeneratorsStartTimestampMonotonic",
    "GeneratorsFinishTimestampMonotonic",
)


def share_dirs(root: Path) -> list[tuple[str, Path]]:
    """A new directory under `root` for each of TAGS: the shares, as VMConfig takes them."""
    for tag in TAGS:
        (root / tag).mkdir()
    return [(tag, root / tag) for tag in TAGS]


def manager_seconds(vm: VM, unit: str, *properties: str) -> list[float]:
    out = vm.run(
        ["systemctl", "show", *([unit] if unit else []), *(f"--property={p}" for p in properties)],
        check=True,
    )
    values = dict(line.split("=", 1) for line in out.stdout.splitlines())
    return [int(values[p]) / 1e6 for p in properties]


def unit_cpu(vm: VM) -> dict[str, float]:
    """Seconds of CPU systemd accounted to each of vfs-agent's units in this boot, and to the
    shares' mount units (in both setups: what one unit's start costs)."""
    out = vm.run(
        "units=$(systemctl list-units --all --plain --no-legend vfs-agent.service"
        " vfs-agent-prober.service 'vfs-agent-answer@*' 'srv-share*.mount' | cut -d' ' -f1);"
        ' [ -z "$units" ] || systemctl show --property=Id,CPUUsageNSec $units',
        check=True,
    )
    cpu = {}
    for block in out.stdout.split("\n\n"):
        values = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        # A unit that never ran, or has no cgroup of its own, shows "[not set]".
        if values.get("CPUUsageNSec", "").isdigit():
            cpu[values["Id"]] = int(values["CPUUsageNSec"]) / 1e9
    return cpu


def mounted_count(vm: VM) -> int:
    return len(vm.run("findmnt -n -t virtiofs -o TARGET").stdout.split())


def set_up(vm: VM, setup: str, *, full: bool = False) -> None:
    """Make the next boot `setup`; with `full`, its generator has no memo to write again."""
    vm.run("cp /root/fstab.orig /etc/fstab", check=True)
    if setup == "policy":
        vm.run("rm -f " + " ".join(MASKS), check=True)
        vm.put_file("/etc/vfs-agent/policy.yaml", POLICY)
        vm.run("vfs-agent policy compile", check=True)
        if full:
            vm.run(f"rm -f {KEPT}", check=True)
    else:
        vm.run("rm -f /etc/vfs-agent/policy.yaml /var/lib/vfs-agent/policy.json", check=True)
        vm.put_file("/root/fstab.extra", FSTAB)
        vm.run("cat /root/fstab.extra >> /etc/fstab", check=True)
        links = (
            f"mkdir -p {Path(link).parent} && ln -sf {to} {link}" for link, to in MASKS.items()
        )
        vm.run(" && ".join(links), check=True)


def check_setup(vm: VM, setup: str, *, full: bool = False) -> None:
    """That the boot just made was the setup it is counted as: with the policy, vfs-agent's
    generator wrote the shares' units (from its memo, or in `full`), its daemon ran and its
    udev rule made the shares' device units; with fstab, none of them. A mask that failed
    silently once let vfs-agent's generator run in the fstab boots too."""
    if setup == "policy":
        replayed = REPLAYED in vm.run("dmesg", check=True).stdout
        how = "wrote its memo's output again" if replayed else "ran in full"
        assert replayed != full, f"policy boot: the generator {how}"
    generated = vm.run(
        f"grep -rlsx -e '{GENERATED_MARK}.*' /run/systemd/generator | grep -c '[.]mount$'"
    ).stdout.strip()
    daemon = vm.run("systemctl is-active vfs-agent.service").stdout.strip()
    units = " ".join(shlex.quote(device_unit_name(tag)) for tag in TAGS)
    states = vm.run(f"systemctl is-active {units}").stdout.split()
    devices = str(states.count("active"))
    seen = (generated, daemon, devices)
    expected = (
        (str(len(TAGS)), "active", str(len(TAGS))) if setup == "policy" else ("0", "inactive", "0")
    )
    assert seen == expected, (
        f"{setup} boot: generated units, daemon, devices {seen}, not {expected}"
    )


def boot_into(vm: VM, setup: str, logs: Path, index: int, *, full: bool) -> dict[str, float]:
    """Reboot into `setup`; returns when multi-user.target was reached (from the guest's
    reset, the start of userspace and the generators' start), the generator phase, the time
    from local-fs-pre.target to local-fs.target, the CPU time of the units, and the host's
    load."""
    set_up(vm, setup, full=full)
    vm.reboot()
    vm.wait_system_running(settle=False)
    assert mounted_count(vm) == len(TAGS), f"{setup}: not every share mounted"
    check_setup(vm, setup, full=full)
    (reached,) = manager_seconds(vm, "multi-user.target", "ActiveEnterTimestampMonotonic")
    (local_fs,) = manager_seconds(vm, "local-fs.target", "ActiveEnterTimestampMonotonic")
    (local_fs_pre,) = manager_seconds(vm, "local-fs-pre.target", "ActiveEnterTimestampMonotonic")
    gen_start, gen_end, userspace = manager_seconds(
        vm, "", *MANAGER_TIMES, "UserspaceTimestampMonotonic"
    )
    report = vm.run(
        "systemd-analyze; systemd-analyze critical-chain multi-user.target --no-pager;"
        " systemd-analyze critical-chain local-fs.target --no-pager;"
        " systemd-analyze blame --no-pager | head -25",
        timeout=120,
    ).stdout
    cpu = unit_cpu(vm)
    report += "\nCPU time of vfs-agent's units and the shares' mount units:\n" + "".join(
        f"{seconds:8.3f}s {unit}\n" for unit, seconds in sorted(cpu.items())
    )
    (logs / f"{index:02d}-{setup}.txt").write_text(report)
    return {
        "total": reached,
        "userspace": reached - userspace,
        "from_generators": reached - gen_start,
        "local_fs": local_fs - gen_start,
        "generators": gen_end - gen_start,
        "mounts": local_fs - local_fs_pre,
        "mount_cpu": statistics.median(s for unit, s in cpu.items() if unit.endswith(".mount")),
        "cpu": sum(s for unit, s in cpu.items() if unit.startswith("vfs-agent")),
        "load": float(Path("/proc/loadavg").read_text().split()[0]),
    }


def median_run(vm: VM, runs: int, *argv: str) -> float:
    out = vm.run(["python3", "/root/timer.py", str(runs), *argv], timeout=600, check=True)
    return float(out.stdout)


def line(name: str, values: list[float]) -> str:
    ordered = " ".join(f"{v:.2f}" for v in sorted(values))
    return f"  {name:20} median {statistics.median(values):6.2f} s   [{ordered}]"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boots", type=int, default=5)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument(
        "--full-generator",
        action="store_true",
        help="policy boots without the generator's memo (as the first boot after a change)",
    )
    args = parser.parse_args()
    full = args.full_generator
    root = Path(tempfile.mkdtemp(prefix="vfs-bench-boot-"))
    shares = share_dirs(root)
    image = ensure_deb_image(build_deb(root / "deb"))
    boots: dict[str, list[dict[str, float]]] = {"policy": [], "fstab": []}
    config = VMConfig(
        mode="systemd", name="bench-boot", shares=shares, hotplug_slots=0, tcg_thread="multi"
    )
    run_dir = new_run_dir("bench-boot")
    logs = run_dir / "analyze"
    logs.mkdir()
    try:
        with VM.boot(image, config, run_dir) as vm:
            vm.wait_system_running(settle=False)
            vm.run("cp /etc/fstab /root/fstab.orig && chmod 755 /etc/vfs-agent", check=True)
            if not full and args.boots:
                # Not counted: a boot into the policy, whose daemon keeps the generator's memo.
                set_up(vm, "policy")
                vm.reboot()
                vm.wait_system_running(settle=False)
            for i in range(args.boots):
                for setup in ("policy", "fstab"):
                    b = boot_into(vm, setup, logs, 2 * i + (setup == "fstab"), full=full)
                    boots[setup].append(b)
                    print(
                        f"  boot {i + 1} {setup:6}: multi-user.target at {b['total']:.2f}s"
                        f" ({b['userspace']:.2f}s in userspace, {b['from_generators']:.2f}s"
                        f" from the generators' start), generators {b['generators']:.2f}s;"
                        f" vfs-agent's CPU {b['cpu']:.2f}s; host load {b['load']:.1f}",
                        flush=True,
                    )
            set_up(vm, "policy", full=True)
            vm.put_file("/root/timer.py", TIMER)
            base = median_run(vm, args.runs, "python3", "-c", "pass")
            # /run is a tmpfs, like the generator directories systemd hands over.
            out = ("--fresh", "/run/gen-bench", GENERATOR, "/run/gen-bench")
            imports = median_run(
                vm, args.runs, "python3", "-c", "import vfs_agent.systemd.generator"
            )
            stdlib = vm.run(["python3", "-c", STDLIB_OF_GENERATOR], check=True).stdout.strip()
            stdlib_time = median_run(vm, args.runs, "python3", "-c", f"import {stdlib}")
            dataclasses_time = median_run(vm, args.runs, "python3", "-c", "import dataclasses")
            fast = median_run(vm, args.runs, *out)
            cold_base = median_run(vm, args.runs, "--cold", "python3", "-c", "pass")
            cold = median_run(vm, args.runs, "--cold", *out)
            # The memo of the last full run, kept as the daemon keeps it: nothing changed since.
            vm.run(f"install -m 600 /run/gen-bench/{MEMO_NAME} {KEPT}", check=True)
            replays = vm.run("dmesg", check=True).stdout.count(REPLAYED)
            same = median_run(vm, args.runs, *out)
            cold_same = median_run(vm, args.runs, "--cold", *out)
            replays = vm.run("dmesg", check=True).stdout.count(REPLAYED) - replays
            assert replays == 2 * args.runs, f"{replays} of {2 * args.runs} runs replayed"
            vm.run(f"rm {KEPT} /var/lib/vfs-agent/policy.json", check=True)
            slow = median_run(vm, args.runs, *out)
    finally:
        stop_all()
    for what, title in (
        ("total", "multi-user.target from the guest's reset"),
        ("userspace", "multi-user.target from the start of userspace"),
        ("from_generators", "multi-user.target from the generators' start"),
        ("local_fs", "local-fs.target from the generators' start"),
        ("generators", "generator phase (every generator, systemd's timestamps)"),
        ("mounts", "local-fs-pre.target to local-fs.target (the shares' mount units)"),
        ("mount_cpu", "CPU time of a share's mount unit (median of each boot's 8)"),
    ):
        if not args.boots:
            break
        policy = [b[what] for b in boots["policy"]]
        fstab = [b[what] for b in boots["fstab"]]
        print(f"\n{title}, 8 shares, {args.boots} boots each, interleaved (TCG):")
        print(line("policy + vfs-agent", policy))
        print(line("hand-written fstab", fstab))
        pairs = statistics.median(p / f for p, f in zip(policy, fstab, strict=True))
        ratio = statistics.median(policy) / statistics.median(fstab)
        print(f"  ratio policy/fstab: of the medians {ratio:.3f}, median of the pairs {pairs:.3f}")
    if args.boots:
        print("\nCPU time of vfs-agent's units by the end of each policy boot:")
        print(line("daemon, prober, waits", [b["cpu"] for b in boots["policy"]]))
        print(f"systemd-analyze of each boot: {logs}")
    print(f"generator run time in the guest, median of {args.runs} runs:")
    print(f"  python3 -c pass:           {base * 1000:.0f} ms")
    print(f"  import of the generator:   {imports * 1000:.0f} ms  (ratio {imports / base:.2f})")
    stdlib_ratio = stdlib_time / base
    print(f"  its standard library alone: {stdlib_time * 1000:.0f} ms  (ratio {stdlib_ratio:.2f})")
    print(f"    (import {stdlib})")
    dc_ratio = dataclasses_time / base
    print(f"  dataclasses alone:          {dataclasses_time * 1000:.0f} ms  (ratio {dc_ratio:.2f})")
    print(f"  generator, nothing changed: {same * 1000:.0f} ms  (ratio {same / base:.2f})")
    print(f"  generator, compiled policy: {fast * 1000:.0f} ms  (ratio {fast / base:.2f})")
    print(f"  generator, YAML + pydantic: {slow * 1000:.0f} ms  (ratio {slow / base:.2f})")
    print(f"with an empty page cache, as at boot: python3 -c pass {cold_base * 1000:.0f} ms,")
    cold_ratio = cold_same / cold_base
    print(f"  generator, nothing changed: {cold_same * 1000:.0f} ms  (ratio {cold_ratio:.2f})")
    print(f"  generator, compiled policy: {cold * 1000:.0f} ms  (ratio {cold / cold_base:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
