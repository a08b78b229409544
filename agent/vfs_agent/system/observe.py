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

    Only the mounts whose share may still be attached are probed. A mount whose share the
    discovery knows is gone is unmounted whatever it answers (core/plan.py), and it is the mount
    systemd is unmounting at that moment where a unit is bound to the share's device: a probe's
    statfs(2) holds the mount while it runs, and systemd's umount(8) fails with EBUSY then.

    The kernel removes a virtio-fs device in this order: it drops the device from
    /sys/fs/virtiofs and /sys/bus/virtio, then fails the requests to its mount (ENOTCONN), and
    only then the device's own directory below its PCI function. A device removed while the
    agent looks would leave a mount that answers ENOTCONN beside a share that seems still
    attached (removed after the discovery), or beside a discovery that lists no tag for a device
    it counted and so cannot tell that the share is gone (removed between listing the virtio bus
    and reading the PCI config window, on kernels without /sys/fs/virtiofs). A dead mount not
    known to be gone is unmounted by the kernel even where systemd manages it
    (execute/route.py), behind the back of the stop job the removal gives that unit. So when a
    mount is dead, the shares are looked at again: that look comes after the probe, when every
    device whose removal killed a mount is off the virtio bus, so a share it still lists was
    really attached again, under the same tag."""
    table = read_mount_table(sysroot)
    discovery = discover(sysroot)
    share_mounts = [
        m for m in top_mounts(table).values() if m.fstype in SHARE_FSTYPES and not discovery.gone(m)
    ]
    devices = " ".join(
        sorted(
            f"{s.device}={s.tag.encode('utf-8', 'surrogateescape').hex()}" for s in discovery.shares
        )
    )
    liveness = probe(sysroot, [(m.target, m.device) for m in share_mounts], devices)
    dead = frozenset(t for t, v in liveness.items() if v is Liveness.DEAD)
    if dead:
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
