"""How does plan() grow with the number of shares and rules?

    .venv/bin/python bench/plan_scale.py [--runs 3]

In one process (start-up not counted): N attached shares against R rules in two policy files
(exact tags, a few globs, one ignore glob; a drop-in that overrides some tags), plus a mount
table with a tenth of the shares mounted. Prints the best of --runs for each size and the time
per share, which stays flat when plan() grows linearly.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "agent"))

from vfs_agent.core.observation import Discovery, Mounted, Share, Source
from vfs_agent.core.plan import plan
from vfs_agent.core.transport import Transport
from vfs_agent.policy.types import DefaultsPatch, FileSection, Policy, Rule, UnknownTags, merge

SIZES = [(1_000, 100), (1_000, 1_000), (10_000, 1_000), (20_000, 2_000)]


def make_policy(rules: int) -> Policy:
    main = []
    for i in range(rules - 10):
        main.append(Rule(f"share-{i}", path=f"/srv/share-{i}", required=i % 7 == 0))
    globs = [
        Rule("data-*", path="/srv/data/{tag}"),
        Rule("cache-[0-9]*", path="/srv/cache/{tag}", options=("ro",)),
        Rule("private-*", ignore=True),
        Rule("scratch-?", path="/srv/scratch/{tag}"),
    ]
    dropin = [Rule(f"share-{i}", path=f"/srv/override-{i}") for i in range(0, rules, 200)][:6]
    return merge(
        [
            FileSection(
                "/etc/vfs-agent/policy.yaml",
                DefaultsPatch(unknown=UnknownTags.MOUNT),
                (*main, *globs),
            ),
            FileSection("/etc/vfs-agent/policy.d/50-x.yaml", DefaultsPatch(), tuple(dropin)),
        ]
    )


def make_shares(count: int) -> list[Share]:
    kinds = ["share-{}", "data-{}", "cache-{}", "private-{}", "other-{}"]
    return [
        Share(kinds[i % len(kinds)].format(i), Transport.VIRTIOFS, f"virtio{i}", Source.SYSFS)
        for i in range(count)
    ]


def time_plan(shares: int, rules: int, runs: int) -> tuple[float, int]:
    policy = make_policy(rules)
    found = make_shares(shares)
    table = [Mounted(1, 0, "/", "ext4", "/dev/vda")] + [
        Mounted(100 + i, 1, f"/srv/share-{i}", "virtiofs", s.tag)
        for i, s in enumerate(found)
        if i % 10 == 0 and s.tag.startswith("share-")
    ]
    discovery = Discovery(tuple(found), True)
    best, count = float("inf"), 0
    for _ in range(runs):
        start = time.perf_counter()
        actions = plan(discovery, policy, table)
        best = min(best, time.perf_counter() - start)
        count = len(actions)
    return best, count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    print(f"{'shares':>7} {'rules':>6} {'actions':>8} {'plan() s':>9} {'us/share':>9}")
    for shares, rules in SIZES:
        seconds, count = time_plan(shares, rules, args.runs)
        print(f"{shares:7d} {rules:6d} {count:8d} {seconds:9.3f} {seconds / shares * 1e6:9.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
