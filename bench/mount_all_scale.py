"""`vfs-agent mount-all` of many shares against a shell loop of `mount -t virtiofs`.

    .venv/bin/python bench/mount_all_scale.py [--shares 24] [--rounds 5]

One fast-boot guest (Debian 13, TCG) with --shares virtio-fs devices attached at boot. Each
round, interleaved: the shell loop (mkdir -p + `mount -t virtiofs -o nosuid,nodev TAG DIR` per
share, what an admin would script) and `vfs-agent mount-all` with a policy that puts every tag
under /srv/agent (compiled policy fresh, as after install); everything is unmounted between
runs. Times are measured inside the guest (`date +%s.%N` around each), so the command channel
is not counted.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.guestlib.image import ensure_image
from tests.guestlib.processes import stop_all
from tests.guestlib.vm import VM, VMConfig, new_run_dir

POLICY = "version: 1\ndefaults: {mount_root: /srv/agent, unknown: mount}\n"
TIMED = 't0=$(date +%s.%N); {cmd} >/dev/null; t1=$(date +%s.%N); echo "$t0 $t1"'


def timed(vm: VM, cmd: str) -> float:
    out = vm.run(["sh", "-c", TIMED.format(cmd=cmd)], timeout=600, check=True)
    t0, t1 = (float(x) for x in out.stdout.split())
    return t1 - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shares", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="vfs-bench-mount-all-"))
    tags = [f"share-{i:02d}" for i in range(args.shares)]
    shares = []
    for tag in tags:
        (root / tag).mkdir()
        shares.append((tag, root / tag))
    loop = "for t in " + " ".join(tags) + "; do mkdir -p /srv/loop/$t && "
    loop += "mount -t virtiofs -o nosuid,nodev $t /srv/loop/$t || exit 1; done"
    config = VMConfig(
        mode="fast", name="bench-mount-all", shares=shares, hotplug_slots=0, tcg_thread="multi"
    )
    agent: list[float] = []
    shell: list[float] = []
    try:
        with VM.boot(ensure_image(), config, new_run_dir("bench-mount-all")) as vm:
            vm.put_file("/etc/vfs-agent/policy.yaml", POLICY)
            vm.run("chmod 755 /etc/vfs-agent && vfs-agent policy compile", check=True)
            for _ in range(args.rounds):
                shell.append(timed(vm, f"sh -c '{loop}'"))
                vm.run("umount /srv/loop/*", check=True)
                agent.append(timed(vm, "vfs-agent mount-all"))
                count = vm.run("findmnt -n -t virtiofs -o TARGET | grep -c ^/srv/agent/")
                assert int(count.stdout) == args.shares, count.stdout
                vm.run("umount /srv/agent/*", check=True)
    finally:
        stop_all()
    print(f"\nmounting {args.shares} shares in a TCG guest, {args.rounds} interleaved rounds:")
    for name, runs in (("shell loop of mount -t virtiofs", shell), ("vfs-agent mount-all", agent)):
        print(f"  {name:32} median {statistics.median(runs):.2f} s  {[round(t, 2) for t in runs]}")
    print(
        f"  ratio mount-all/shell loop: {statistics.median(agent) / statistics.median(shell):.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
