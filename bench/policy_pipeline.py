"""What each step of the policy pipeline costs, in process, on a policy of --rules rules.

    .venv/bin/python bench/policy_pipeline.py [--rules 200] [--runs 20] [--json]

On the host, no guest. The policy is split over the main file and three drop-ins, with the
systemd credential and a `vfs_agent.mount=` argument as host layers (policy/layers.py). Each
figure is the median of --runs runs, wall-clock and CPU milliseconds:
- load: read_policy(), every layer read, checked, validated and merged (writes nothing);
- compile, written: compile_policy() into an empty /var/lib/vfs-agent;
- compile, unchanged: compile_policy() when the compiled policy holds that text already;
- compiled load: compiled.load(), what the generator and the reports do instead of loading;
- cloud-init drop-in: cloud_config.dropin_text() for a user-data `vfs_agent` key of as many
  rules (render, then validate the text that would be written).
And, in fresh `python3 -I` processes, the CPU time (user + system) of importing the loader
(`vfs_agent.policy.load`) against `python3 -I -c pass`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "agent"))

from vfs_agent.policy import compiled
from vfs_agent.policy.cloud_config import dropin_text
from vfs_agent.policy.load import read_policy
from vfs_agent.system.sysroot import SysRoot

CREDENTIAL = "version: 1\nmounts:\n  - {tag: from-host, path: /mnt/from-host}\n"


def rule_lines(first: int, count: int) -> str:
    return "".join(
        f"  - {{tag: share-{i}, path: /srv/s{i}, options: [ro, noatime]}}\n"
        for i in range(first, first + count)
    )


def build(root: Path, rules: int) -> None:
    etc = root / "etc/vfs-agent"
    (etc / "policy.d").mkdir(parents=True)
    for d in (etc, etc / "policy.d"):
        os.chmod(d, 0o755)
    share = rules // 4
    files = {
        etc / "policy.yaml": "version: 1\ndefaults: {unknown: mount}\nmounts:\n",
        etc / "policy.d/10-a.yaml": "version: 1\nmounts:\n",
        etc / "policy.d/20-b.yaml": "version: 1\nmounts:\n",
        etc / "policy.d/30-c.yaml": "version: 1\nmounts:\n",
    }
    for n, (path, head) in enumerate(files.items()):
        count = share if n < 3 else rules - 3 * share
        path.write_text(head + rule_lines(n * share, count))
        os.chmod(path, 0o644)
    cred = root / "run/credentials/@system/vfs-agent.policy"
    cred.parent.mkdir(parents=True)
    cred.write_text(CREDENTIAL)
    (root / "proc").mkdir()
    (root / "proc/cmdline").write_text("quiet vfs_agent.mount=cmd:/mnt/cmd:ro\n")
    (root / "var/lib").mkdir(parents=True)


def median_ms(
    call: Callable[[], object], runs: int, before: Callable[[], None] = lambda: None
) -> tuple[float, float]:
    """Median wall-clock and CPU milliseconds of `call` (CPU: the shared machine's load
    disturbs it less; wall-clock includes the fsyncs of a write)."""
    walls, cpus = [], []
    for _ in range(runs):
        before()
        wall, cpu = time.perf_counter(), time.process_time()
        call()
        cpus.append(time.process_time() - cpu)
        walls.append(time.perf_counter() - wall)
    return statistics.median(walls) * 1000, statistics.median(cpus) * 1000


def child_cpu_ms(code: str, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run([sys.executable, "-I", "-c", code], check=True, env={**os.environ})
        end = resource.getrusage(resource.RUSAGE_CHILDREN)
        times.append((end.ru_utime - start.ru_utime) + (end.ru_stime - start.ru_stime))
    return statistics.median(times) * 1000


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rules", type=int, default=200)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        build(root, args.rules)
        sysroot = SysRoot(root)
        cache = root / compiled.CACHE.lstrip("/")
        loaded = read_policy(sysroot)
        assert len(loaded.policy.rules) == args.rules + 2 and len(loaded.layers) == 6

        def drop_cache() -> None:
            cache.unlink(missing_ok=True)

        value = {
            "version": 1,
            "mounts": [
                {"tag": f"share-{i}", "path": f"/srv/s{i}", "options": ["ro"]}
                for i in range(args.rules)
            ],
        }
        text, problems = dropin_text(value, None)
        assert text is not None and not problems
        agent = str(Path(__file__).resolve().parents[1] / "agent")
        importing = f"import sys; sys.path.insert(0, {agent!r}); import vfs_agent.policy.load"
        figures = {
            "load (read_policy)": median_ms(lambda: read_policy(sysroot), args.runs),
            "compile, written": median_ms(
                lambda: compiled.compile_policy(sysroot, loaded), args.runs, drop_cache
            ),
            "compile, unchanged": median_ms(
                lambda: compiled.compile_policy(sysroot, loaded), args.runs
            ),
            "compiled load (generator, reports)": median_ms(
                lambda: compiled.load(sysroot), args.runs
            ),
            "cloud-init drop-in (dropin_text)": median_ms(
                lambda: dropin_text(value, None), args.runs
            ),
        }
        assert compiled.load(sysroot) == loaded.policy
        floor = child_cpu_ms("pass", args.runs)
        loader = child_cpu_ms(importing, args.runs)
    if args.json:
        print(
            json.dumps(
                {
                    "rules": args.rules,
                    "ms": figures,
                    "import_cpu_ms": {
                        "python3 -I -c pass": floor,
                        "import vfs_agent.policy.load": loader,
                    },
                },
                indent=1,
            )
        )
        return 0
    print(f"policy pipeline, {args.rules} rules in 4 files + 2 host layers, median of {args.runs}:")
    print(f"  {'':38} {'wall':>8}    {'CPU':>8}")
    for label, (wall, cpu) in figures.items():
        print(f"  {label:38} {wall:8.2f} ms {cpu:8.2f} ms")
    print(
        f"  import the loader (CPU):               {loader:8.1f} ms "
        f"({loader / floor:.1f}x python3 -I -c pass, {floor:.1f} ms)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
