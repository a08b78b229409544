"""The cost of running on pydantic 1.10 versus 2.x: `vfs-agent policy check` of the full example
policy and `import vfs_agent.commands.cli` in each virtual environment (.venv: pydantic 2.x,
.venv-pydantic1: pydantic 1.10.4, see `make venv venv1`), N runs each, median and spread.

    .venv/bin/python bench/pydantic_majors.py [--runs 10]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
POLICY = REPO / "tests/policies/valid/01-full-example.yaml"
VENVS = {"pydantic 2.x (.venv)": ".venv", "pydantic 1.10 (.venv-pydantic1)": ".venv-pydantic1"}


def timed(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    for label, venv in VENVS.items():
        python = REPO / venv / "bin/python"
        if not python.exists():
            print(f"{label}: {python} missing (make venv venv1)")
            continue
        version = subprocess.run(
            [python, "-c", "import pydantic; print(pydantic.VERSION)"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        checks = [
            timed([str(python), "-m", "vfs_agent", "policy", "check", str(POLICY)])
            for _ in range(args.runs)
        ]
        imports = [
            timed([str(python), "-c", "import vfs_agent.commands.cli"]) for _ in range(args.runs)
        ]
        for what, samples in (("policy check", checks), ("import vfs_agent.commands.cli", imports)):
            print(
                f"{label} [{version}] {what}: median {statistics.median(samples) * 1000:.0f} ms "
                f"(min {min(samples) * 1000:.0f}, max {max(samples) * 1000:.0f}, n={len(samples)})"
            )


if __name__ == "__main__":
    main()
