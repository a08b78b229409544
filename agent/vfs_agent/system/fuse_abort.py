"""Abort a FUSE connection through the fusectl filesystem, where the kernel lists it.

Writing to /sys/fs/fuse/connections/N/abort ends every request of the connection with an error,
so processes blocked on a dead FUSE mount are freed. N is the mount's device number as the
kernel encodes it (major << 20 | minor), the third field of /proc/self/mountinfo (the kernel's
Documentation/filesystems/fuse.rst, "Aborting a filesystem connection").

virtio-fs is FUSE underneath, but the kernel does not list its connections there (the virtio-fs
driver marks them `no_control`) and refuses MNT_FORCE for it (`no_force_umount`): a request that
reached a virtio-fs device can only end when the device answers. For those mounts this module
says so, and the caller detaches the mount so no new process walks into it.
"""

from __future__ import annotations

import os

from vfs_agent.system.sysroot import SysRoot

CONNECTIONS = "/sys/fs/fuse/connections"


def connection_id(device: str) -> int:
    """The fusectl directory name of a mount's "major:minor" device."""
    major, minor = (int(part) for part in device.split(":"))
    return (major << 20) | minor


def abort_connection(sysroot: SysRoot, device: str) -> bool:
    """Abort the FUSE connection of the mount with `device`. False when the kernel does not list
    it (virtio-fs, or fusectl not mounted); raises OSError when the abort itself fails."""
    abort = f"{CONNECTIONS}/{connection_id(device)}/abort"
    if not sysroot.exists(abort):
        return False
    fd = os.open(sysroot.path(abort), os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, b"1\n")
    finally:
        os.close(fd)
    return True
