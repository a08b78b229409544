"""One lock for everything that changes mounts: the daemon and every command, so a mount-all
run by hand while the daemon handles an event never stacks two mounts on one path."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator

from vfs_agent.system.sysroot import SysRoot

LOCK_FILE = "/run/vfs-agent/lock"


@contextlib.contextmanager
def mount_lock(sysroot: SysRoot) -> Iterator[None]:
    path = sysroot.path(LOCK_FILE)
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
