"""What one look costs the daemon: the CPU of a reconcile, as at every uevent it follows.

    .venv/bin/python bench/reconcile_cost.py [--runs 10]

One systemd guest of the .deb image with 8 shares, named by the policy and mounted through their
generated units (`vfs-agent mount-all` starts them; the image's own policy's mounts of the
shares are unmounted first); vfs-agent.service is stopped, and one
interpreter runs the daemon's reconcile (commands/operations.reconcile with the daemon's
executors: shares with a unit left to systemd) --runs times: each reconcile's wall time, and
the CPU time of the interpreter and of its children (the liveness probe's forked child, see
system/liveness.py), medians. Then the same with the probe replaced by an answer of `alive`
for every mount, so the difference is the probe's cost. Every reconcile finds the 8 shares
mounted and changes nothing, as most uevents of a hotplug find the shares they do not concern.
The guest runs a TCG thread per vCPU (VMConfig.tcg_thread), as the other guest benchmarks do.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from boot_policy_vs_fstab import POLICY, TAGS, share_dirs
from tests.guestlib.deb_image import build_deb, ensure_deb_image
from tests.guestlib.processes import stop_all
from tests.guestlib.vm import VM, VMConfig, new_run_dir

from vfs_agent.core.escape import mount_unit_name

# Run in the guest: RUNS, then one line per setting, "NAME WALL_MS SELF_MS CHILDREN_MS ACTIONS".
MEASURE = """import resource, statistics, sys, time
from pathlib import Path
from vfs_agent.commands import operations as ops
from vfs_agent.commands.context import Context
from vfs_agent.execute.apply import Executors
from vfs_agent.execute.route import SystemdMode
from vfs_agent.system import bounded, liveness, observe
from vfs_agent.system.sysroot import SysRoot

runs = int(sys.argv[1])
ctx = Context(SysRoot(Path("/")))
policy = ctx.policy()
executors = Executors.pick(ctx.sysroot, dry_run=False, systemd=SystemdMode.LEAVE)


def cpu():
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


def measure(name):
    ops.reconcile(ctx, policy, executors)  # not counted: the first look imports and caches
    walls, own, children = [], [], []
    for _ in range(runs):
        before = cpu()
        started = time.perf_counter()
        outcomes = ops.reconcile(ctx, policy, executors)
        walls.append(time.perf_counter() - started)
        while bounded.unreaped():  # a probe child's CPU counts once it is reaped
            time.sleep(0.01)
            bounded.reap()
        after = cpu()
        own.append(after[0] - before[0])
        children.append(after[1] - before[1])
        assert not any(o.changed for o in outcomes), "a reconcile changed something"
    ms = [round(statistics.median(v) * 1000) for v in (walls, own, children)]
    print(name, *ms, len(outcomes), flush=True)


measure("reconcile")
observe.probe = lambda sysroot, mounts, devices, timeout=1.0: {
    target: liveness.Liveness.ALIVE for target, _ in mounts
}
measure("without-probe")
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="vfs-bench-reconcile-"))
    image = ensure_deb_image(build_deb(root / "deb"))
    config = VMConfig(
        mode="systemd",
        name="bench-reconcile",
        shares=share_dirs(root),
        hotplug_slots=0,
        tcg_thread="multi",
    )
    try:
        with VM.boot(image, config, new_run_dir("bench-reconcile")) as vm:
            vm.wait_system_running(settle=False)
            # The image's own policy mounted every share at boot: those mounts go first.
            vm.run("systemctl stop vfs-agent.service && umount -a -t virtiofs", check=True)
            vm.put_file("/etc/vfs-agent/policy.yaml", POLICY)
            vm.run("chmod 755 /etc/vfs-agent && vfs-agent policy compile", check=True)
            vm.run("systemctl daemon-reload && vfs-agent mount-all", check=True, timeout=300)
            mounted = vm.run("findmnt -n -t virtiofs -o TARGET", check=True).stdout.split()
            assert len(mounted) == len(TAGS), f"{len(mounted)} shares mounted, not {len(TAGS)}"
            units = [mount_unit_name(f"/srv/{tag}") for tag in TAGS]
            states = vm.run(["systemctl", "is-active", *units]).stdout.split()
            assert states == ["active"] * len(TAGS), f"the shares' units: {states}"
            vm.put_file("/root/measure.py", MEASURE)
            out = vm.run(["python3", "/root/measure.py", str(args.runs)], check=True, timeout=600)
    finally:
        stop_all()
    print(f"\na reconcile of the daemon, {len(TAGS)} shares mounted by their units,")
    print(f"{args.runs} runs, medians:")
    for line in out.stdout.splitlines():
        name, wall, own, children, actions = line.split()
        print(
            f"  {name:14} wall {wall:>4} ms   CPU: the interpreter {own:>4} ms,"
            f" its children {children:>4} ms   ({actions} actions)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
