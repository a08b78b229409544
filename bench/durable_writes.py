"""What does the directory fsync of the single atomic writer cost?

    .venv/bin/python bench/durable_writes.py [--units 24] [--rounds 15]

Writes N mount units with their `.wants/` links and device drop-ins (what the generator and
`generate systemd --output` write for N shares) into a fresh directory, once with the writer
as it is (file fsync, rename, directory fsync) and once with the directory fsync turned off,
interleaved, on a disk directory (/var/tmp) and on tmpfs (/run, where the generator writes at
boot). Prints the median and range of the wall-clock time of each, their ratio, and the
median CPU time (user + system) of each: on a shared machine the CPU time is the steadier
figure, the wall-clock time the one that includes waiting for the disk.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "agent"))

from vfs_agent.core.observation import Discovery, Share, Source
from vfs_agent.core.plan import plan
from vfs_agent.core.render_systemd import UnitFile, render_units
from vfs_agent.core.transport import Transport
from vfs_agent.policy.types import DefaultsPatch, FileSection, Rule, merge
from vfs_agent.system import atomic
from vfs_agent.system.generated_files import sync_unit_dir


def make_units(count: int) -> list[UnitFile]:
    rules = tuple(
        Rule(f"share-{i}", path=f"/srv/share-{i}", device_timeout=30) for i in range(count)
    )
    policy = merge([FileSection("/etc/vfs-agent/policy.yaml", DefaultsPatch(), rules)])
    shares = tuple(
        Share(f"share-{i}", Transport.VIRTIOFS, f"virtio{i}", Source.SYSFS) for i in range(count)
    )
    units, _ = render_units(
        plan(Discovery(shares, complete=True), policy, []),
        "bench",
        bind_device=True,
        mount_helper=True,
    )
    return units


def one_round(base: Path, units: list[UnitFile], durable: bool) -> tuple[float, float]:
    directory = Path(tempfile.mkdtemp(dir=base, prefix="durable-"))
    real = atomic.fsync_dir
    if not durable:
        atomic.fsync_dir = lambda directory: None
    try:
        start, cpu = time.perf_counter(), time.process_time()
        sync_unit_dir(directory, units)
        return time.perf_counter() - start, time.process_time() - cpu
    finally:
        atomic.fsync_dir = real
        shutil.rmtree(directory)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--units", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    units = make_units(args.units)
    files = len(units) + sum(len(u.extras) for u in units)
    print(f"{args.units} units, {files} files and links per round, {args.rounds} rounds each")
    for label, base in (("disk  /var/tmp", Path("/var/tmp")), ("tmpfs /run", Path("/run"))):
        times: dict[bool, list[float]] = {True: [], False: []}
        cpu: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(args.rounds):
            for durable in (True, False):
                wall, used = one_round(base, units, durable)
                times[durable].append(wall)
                cpu[durable].append(used)
        with_dir, without = (statistics.median(times[d]) * 1000 for d in (True, False))
        spread = {d: f"{min(times[d]) * 1000:.1f}-{max(times[d]) * 1000:.1f}" for d in times}
        cpu_with, cpu_without = (statistics.median(cpu[d]) * 1000 for d in (True, False))
        print(
            f"{label}: with directory fsync {with_dir:.1f} ms ({spread[True]}), "
            f"without {without:.1f} ms ({spread[False]}), ratio {with_dir / without:.2f}; "
            f"CPU {cpu_with:.1f} ms against {cpu_without:.1f} ms"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
