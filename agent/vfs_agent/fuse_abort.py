"""Abort a FUSE connection (virtio-fs is FUSE underneath) through the fusectl filesystem.

Writing to /sys/fs/fuse/connections/N/abort ends every request of the connection with an error,
so processes blocked on a mount whose virtiofsd died are freed, and later accesses fail at once
instead of hanging. N is the mount's device number as the kernel encodes it (major << 20 |
minor), the third field of /proc/self/mountinfo. Documented in the kernel's
Documentation/filesystems/fuse.rst ("Aborting a filesystem connection").
"""

from __future__ import annotations

import os

from vfs_agent import syscalls
from vfs_agent.sysroot import SysRoot

CONNECTIONS = "/sys/fs/fuse/connections"


def connection_id(device: str) -> int:
    """The fusectl directory name of a mount's "major:minor" device."""
    major, minor = (int(part) for part in device.split(":"))
    return (major << 20) | minor


def abort_connection(sysroot: SysRoot, device: str, *, live: bool) -> None:
    """Abort the FUSE connection of the mount with `device`. On the live system fusectl is
    mounted first when nobody did (systemd normally has); raises OSError with what failed."""
    abort = f"{CONNECTIONS}/{connection_id(device)}/abort"
    if not sysroot.exists(abort) and live and not sysroot.listdir(CONNECTIONS):
        syscalls.mount("fusectl", str(sysroot.path(CONNECTIONS)), "fusectl", 0, "")
    fd = os.open(sysroot.path(abort), os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, b"1\n")
    finally:
        os.close(fd)
