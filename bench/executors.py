"""Does routing actions to executors cost anything, and is the output unchanged?

    .venv/bin/python bench/executors.py [--shares 200] [--runs 15] [--before REV]

No guest. A fake system root with --shares virtio-fs tags, systemd "running" in it and a
vfs-agent generated unit for every other share's path (so both the systemd and the kernel
routes are taken). Each round, interleaved, runs the same command with this checkout's code
and with REV's (`git archive`, default `main`): `mount-all --dry-run --json` and
`mount TAG --dry-run --json` through `--root`. Nothing is mounted and no unit is started (a
dry run, and --root never asks the running manager). Checks that both print the same bytes and
exit alike, then prints median wall-clock and CPU (user + system) milliseconds and the ratio
after/before. Last, the pure routing function alone: nanoseconds per call.
"""

from __future__ import annotations

import argparse
import compileall
import io
import os
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import timeit
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.unit.faketree import FakeTree  # noqa: E402

from vfs_agent.core.escape import mount_unit_name  # noqa: E402
from vfs_agent.core.plan import Action, ActionKind  # noqa: E402
from vfs_agent.core.render_systemd import GENERATED_MARK  # noqa: E402
from vfs_agent.core.transport import Transport  # noqa: E402
from vfs_agent.execute.route import Situation, Step, route  # noqa: E402


def build_tree(root: Path, shares: int) -> FakeTree:
    tree = FakeTree(root)
    for i in range(shares):
        tree.virtiofs(f"share-{i:03d}")
    tree.policy("version: 1\ndefaults: {mount_root: /srv/v, unknown: mount}\n")
    tree.write("run/systemd/system/.keep", "")
    for i in range(0, shares, 2):
        name = mount_unit_name(f"/srv/v/share-{i:03d}")
        tree.write(f"etc/systemd/system/{name}", f"{GENERATED_MARK} from a bench\n")
    return tree


def extract(rev: str, into: Path) -> Path:
    data = subprocess.run(
        ["git", "-C", str(REPO), "archive", rev, "agent/vfs_agent"], capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(into, filter="data")
    return into / "agent"


def run(pythonpath: Path, argv: list[str]) -> tuple[float, float, int, bytes]:
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "vfs_agent", *argv], env=env, capture_output=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall * 1000, cpu * 1000, done.returncode, done.stdout


def route_ns() -> float:
    action = Action(
        kind=ActionKind.MOUNT, tag="t", reason="r", path="/srv/t", transport=Transport.VIRTIOFS
    )
    step, situation = Step(action, "srv-t.mount"), Situation(live=True, dry_run=False)
    number = 200_000
    best = min(timeit.repeat(lambda: route(step, situation), number=number, repeat=5))
    return best / number * 1e9


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shares", type=int, default=200)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--before", default="main", help="git revision to compare with")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vfs-bench-executors-") as tmp:
        work = Path(tmp)
        tree = build_tree(work / "root", args.shares)
        codes = {"after": REPO / "agent", "before": extract(args.before, work / "before")}
        # Both byte-compiled, as installed code is: under PYTHONDONTWRITEBYTECODE (set by CI
        # and sandboxes) the extracted copy would otherwise be compiled from source at every
        # run, which made identical code look 10-15% apart.
        for code in codes.values():
            if not compileall.compile_dir(code / "vfs_agent", quiet=1):
                sys.exit(f"cannot byte-compile {code}")
        commands = {
            "mount-all --dry-run": ["--root", str(tree.root), "mount-all", "--dry-run", "--json"],
            "mount TAG --dry-run": [
                "--root",
                str(tree.root),
                "mount",
                "share-000",
                "--dry-run",
                "--json",
            ],
        }
        print(f"{args.shares} shares, {args.runs} interleaved runs, before = {args.before}")
        for name, argv in commands.items():
            walls: dict[str, list[float]] = {k: [] for k in codes}
            cpus: dict[str, list[float]] = {k: [] for k in codes}
            outputs: dict[str, set[tuple[int, bytes]]] = {k: set() for k in codes}
            for _ in range(args.runs):
                for which, path in codes.items():
                    wall, cpu, rc, out = run(path, argv)
                    walls[which].append(wall)
                    cpus[which].append(cpu)
                    outputs[which].add((rc, out))
            same = outputs["before"] == outputs["after"] and len(outputs["after"]) == 1
            w = {k: statistics.median(v) for k, v in walls.items()}
            c = {k: statistics.median(v) for k, v in cpus.items()}
            verdict = "identical" if same else "DIFFERS"
            print(
                f"{name:22s} wall {w['before']:6.1f} -> {w['after']:6.1f} ms "
                f"({w['after'] / w['before']:.2f}x)  cpu {c['before']:6.1f} -> {c['after']:6.1f} "
                f"ms ({c['after'] / c['before']:.2f}x)  output {verdict}"
            )
            if not same:
                return 1
        _, _, _, out = run(codes["after"], commands["mount-all --dry-run"])
        if b"would start" not in out or b"would mount" not in out:
            print("the tree did not take both the systemd and the kernel route")
            return 1
    print(f"route() alone: {route_ns():.0f} ns per call")
    return 0


if __name__ == "__main__":
    sys.exit(main())
