"""What do the host's policy layers cost the boot-time generator?

    .venv/bin/python bench/generator_layers.py [--runs 15] [--shares 8]

On this machine (no guest): a fake system root with --shares virtio-fs shares, the image's
policy file, the credential vfs-agent.policy and two vfs_agent.mount= arguments in
/proc/cmdline. The generator runs as systemd runs it (a new process, output on tmpfs) with
$CREDENTIALS_DIRECTORY set, --runs times per setup; the figure is the median wall time:
- no host layer, compiled policy (the cache);
- with the credential and the command line, compiled policy (the cache keys on them);
- with them, cache stale (YAML + pydantic: the first boot with a new credential);
- `python3 -c pass`, for scale.
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "agent"))

from tests.unit.faketree import FakeTree  # noqa: E402

from vfs_agent.policy.compiled import CACHE, compile_policy  # noqa: E402
from vfs_agent.policy.load import read_policy  # noqa: E402
from vfs_agent.system.sysroot import SysRoot  # noqa: E402

CREDENTIAL = """\
version: 1
defaults: {mount_root: /srv/host}
mounts:
  - {tag: share-0, path: /mnt/zero, options: [ro]}
  - {tag: "share-1*", path: "/srv/one/{tag}"}
"""
GENERATE = "import sys; from vfs_agent.systemd.generator import main; sys.exit(main(sys.argv[1:]))"


def timed(argv: list[str], env: dict[str, str], runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(argv, env=env, check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--shares", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir="/dev/shm") as tmp:
        tree = FakeTree(Path(tmp) / "root")
        for i in range(args.shares):
            tree.virtiofs(f"share-{i}")
        tree.policy("version: 1\ndefaults: {device_timeout: 30}\n")
        out = Path(tmp) / "out"
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO / "agent"),
            "VFS_AGENT_ROOT": str(tree.root),
            "VFS_AGENT_KMSG": str(Path(tmp) / "kmsg"),
            "CREDENTIALS_DIRECTORY": "/run/credentials/@system",
        }

        def generator(name: str) -> list[str]:
            return [sys.executable, "-c", GENERATE, str(out / name)]

        sysroot = SysRoot(tree.root)
        base = timed([sys.executable, "-c", "pass"], env, args.runs)
        compile_policy(sysroot, read_policy(sysroot))
        plain = timed(generator("plain"), env, args.runs)
        tree.write("run/credentials/@system/vfs-agent.policy", CREDENTIAL, mode=0o400)
        tree.write(
            "proc/cmdline",
            "root=/dev/vda quiet vfs_agent.mount=share-2:/mnt/two "
            "vfs_agent.mount=share-3:/mnt/three:ro\n",
        )
        compile_policy(sysroot, read_policy(sysroot))
        cached = timed(generator("cached"), env, args.runs)
        (tree.root / CACHE.lstrip("/")).unlink()
        stale = timed(generator("stale"), env, args.runs)
        units = len(list((out / "stale").glob("*.mount")))
    print(f"generator, {args.shares} shares, {units} units, median of {args.runs} runs:")
    print(f"  python3 -c pass:                        {base * 1000:6.0f} ms")
    print(f"  no host layer, compiled policy:         {plain * 1000:6.0f} ms")
    print(f"  credential + cmdline, compiled policy:  {cached * 1000:6.0f} ms")
    print(f"  credential + cmdline, YAML + pydantic:  {stale * 1000:6.0f} ms")


if __name__ == "__main__":
    main()
