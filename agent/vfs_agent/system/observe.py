"""One look at the system: shares, mount table, liveness of share mounts. Everything plan()
needs."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable

from vfs_agent.core.mountinfo import top_mounts
from vfs_agent.core.observation import SHARE_FSTYPES, Observed
from vfs_agent.system.discovery import discover
from vfs_agent.system.liveness import Liveness, probe
from vfs_agent.system.mount_table import read_mount_table
from vfs_agent.system.sysroot import SysRoot


def observe(sysroot: SysRoot) -> Observed:
    """Shares, mount table and liveness, looked at one after the other.

    The kernel removes a virtio-fs device in this order: it drops the device from
    /sys/fs/virtiofs and /sys/bus/virtio, then fails the requests to its mount (ENOTCONN). So a
    device removed between the discovery and the probe would leave a mount that answers ENOTCONN
    beside a share that seems still attached, and a dead mount of an attached share is unmounted
    by the kernel even where systemd manages it (execute/route.py), behind the back of the stop
    job the removal gives that unit. When a dead mount's share is listed, the shares are
    therefore looked at again: that look comes after the probe, so a share it still lists was
    really attached again, under the same tag."""
    table = read_mount_table(sysroot)
    discovery = discover(sysroot)
    shares = [e for e in top_mounts(table).values() if e.fstype in SHARE_FSTYPES]
    devices = " ".join(
        sorted(
            f"{s.device}={s.tag.encode('utf-8', 'surrogateescape').hex()}" for s in discovery.shares
        )
    )
    liveness = probe(sysroot, [(e.target, e.device) for e in shares], devices)
    dead = frozenset(t for t, v in liveness.items() if v is Liveness.DEAD)
    listed = {(s.transport.value, s.tag) for s in discovery.shares}
    if any(e.target in dead and (e.fstype, e.source) in listed for e in shares):
        discovery = discover(sysroot)
    return Observed(
        discovery,
        table,
        dead,
        frozenset(t for t, v in liveness.items() if v is Liveness.UNRESPONSIVE),
        unanswered_tags(sysroot),
    )


def unanswered_tags(sysroot: SysRoot) -> tuple[tuple[str, int], ...]:
    """The records answer.py leaves of shares whose host did not answer in time."""
    from vfs_agent.system.answer import UNANSWERED_DIR

    found = []
    for name in sysroot.listdir(UNANSWERED_DIR):
        text = sysroot.read_text(f"{UNANSWERED_DIR}/{name}")
        try:
            tag = bytes.fromhex(name).decode("utf-8", "surrogateescape")
            seconds = int((text or "").strip())
        except ValueError:
            continue
        found.append((tag, seconds))
    return tuple(sorted(found))


def nonempty_dirs(sysroot: SysRoot, paths: Iterable[str]) -> frozenset[str]:
    """Those of `paths` that are directories holding at least one entry. Reached without
    following symlinks (a path through one is refused when mounting anyway)."""
    found = set()
    for path in paths:
        with contextlib.suppress(OSError), sysroot.open_dir_nofollow(path, create=False) as fd:
            listing = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
            try:
                if os.listdir(listing):
                    found.add(path)
            finally:
                os.close(listing)
    return frozenset(found)
