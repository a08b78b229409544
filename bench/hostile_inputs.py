"""What careful files and the checks added for hostile inputs cost, and what they save.

    .venv/bin/python bench/hostile_inputs.py [--runs 5]

On the host, no guest; each figure is the median of --runs runs of a real `vfs-agent` process:
- `policy check` of a 25 MB policy (refused unread past 1 MiB) and of a FIFO in policy.d (no
  hang), against `policy check` of a normal policy;
- the compiled policy's trust checks (owner/mode, bounded read, every value re-checked) in
  process, for a policy of 200 rules: policy_cache.load() per call;
- `policy check` with static conflict detection on 200 rules, against 10;
- `generate fstab` through a symlinked fstab, against a plain file.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "agent"))

from vfs_agent.policy import compiled as policy_cache
from vfs_agent.policy.load import load_policy
from vfs_agent.system.sysroot import SysRoot


def rules(count: int) -> str:
    body = "".join(
        f"  - {{tag: share-{i}, path: /srv/s{i}, options: [ro, noatime]}}\n" for i in range(count)
    )
    return "version: 1\ndefaults: {unknown: mount}\nmounts:\n" + body


def tree(base: Path, name: str, policy: str) -> Path:
    root = base / name
    (root / "etc/vfs-agent/policy.d").mkdir(parents=True)
    (root / "proc/self").mkdir(parents=True)
    (root / "proc/self/mountinfo").write_text("")
    for d in (root / "etc/vfs-agent", root / "etc/vfs-agent/policy.d"):
        os.chmod(d, 0o755)
    (root / "etc/vfs-agent/policy.yaml").write_text(policy)
    os.chmod(root / "etc/vfs-agent/policy.yaml", 0o644)
    return root


def timed(argv: list[str], runs: int) -> tuple[float, int]:
    times, code = [], 0
    for _ in range(runs):
        start = time.perf_counter()
        done = subprocess.run(argv, capture_output=True, timeout=600)
        times.append(time.perf_counter() - start)
        code = done.returncode
    return statistics.median(times), code


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    runs = parser.parse_args().runs
    cli = [sys.executable, "-m", "vfs_agent"]
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        normal = tree(base, "normal", rules(10))
        huge = tree(base, "huge", "version: 1\n" + "# padding\n" * 2_500_000)
        fifo = tree(base, "fifo", rules(10))
        os.mkfifo(fifo / "etc/vfs-agent/policy.d/50-fifo.yaml", 0o644)
        many = tree(base, "many", rules(200))
        rows = []
        for label, root in (
            ("policy check, 10 rules", normal),
            ("policy check, 200 rules (conflict checks)", many),
            ("policy check, 25 MB policy (refused)", huge),
            ("policy check, FIFO in policy.d (refused)", fifo),
        ):
            seconds, code = timed([*cli, "--root", str(root), "policy", "check"], runs)
            rows.append((label, seconds, code))
        fstab = base / "fstab"
        fstab.write_text("/dev/vda / ext4 defaults 0 1\n")
        link = base / "fstab-link"
        link.symlink_to(fstab)
        for label, target in (("plain file", fstab), ("through a symlink", link)):
            argv = [*cli, "--root", str(normal), "generate", "fstab", "--output", str(target)]
            seconds, code = timed(argv, runs)
            rows.append((f"generate fstab, {label}", seconds, code))

        sysroot = SysRoot(many)
        os.environ["PYTHONDONTWRITEBYTECODE"] = "1"
        load_policy(sysroot, save_compiled=True)
        assert policy_cache.load(sysroot) is not None
        per_call = []
        for _ in range(runs):
            start = time.perf_counter()
            for _ in range(20):
                policy_cache.load(sysroot)
            per_call.append((time.perf_counter() - start) / 20)
        rows.append(
            ("compiled policy load + trust checks, 200 rules", statistics.median(per_call), 0)
        )

    print(f"{'what':<50} {'median':>10}  exit")
    for label, seconds, code in rows:
        print(f"{label:<50} {seconds * 1000:>8.1f}ms  {code}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
