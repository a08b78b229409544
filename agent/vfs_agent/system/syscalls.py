"""mount(2), umount2(2) and unshare(2) through libc, and errno turned into words a person can act
on."""

from __future__ import annotations

import ctypes
import errno
import os

from vfs_agent.core.observation import Transport

MNT_DETACH = 2
CLONE_NEWNS = 0x00020000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_char_p,
]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]


def _bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def mount(source: str, target: str, fstype: str, flags: int, data: str) -> None:
    """mount(2); raises OSError with the errno."""
    if (
        _libc.mount(_bytes(source), _bytes(target), _bytes(fstype), flags, _bytes(data) or None)
        != 0
    ):
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def private_mount_namespace() -> None:
    """unshare(2) a mount namespace of this process's own, with every mount in it private, so
    what it mounts stays in it. Raises OSError with the errno."""
    if _libc.unshare(CLONE_NEWNS) != 0 or _libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None):
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def umount(target: str, *, lazy: bool = False) -> None:
    """umount2(2); lazy detaches now and cleans up when the last user goes (MNT_DETACH)."""
    if _libc.umount2(_bytes(target), MNT_DETACH if lazy else 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def explain_mount_error(err: OSError, tag: str, transport: Transport) -> str:
    """Why mount(2) failed, and what to do about it."""
    code = err.errno
    if code == errno.ENOENT and transport is Transport.VIRTIOFS:
        return (
            f"the kernel has no virtio-fs share with tag {tag!r}: is the device attached? "
            "(see 'vfs-agent status')"
        )
    if code == errno.ENOENT:
        return f"no 9p share with tag {tag!r} is attached (see 'vfs-agent status')"
    if code == errno.ENODEV:
        return (
            f"the kernel does not support {transport.value} "
            "(module not loaded or missing; see 'vfs-agent kernel')"
        )
    if code in (errno.EPERM, errno.EACCES):
        return (
            "permission denied: mounting needs root (CAP_SYS_ADMIN in the initial mount namespace)"
        )
    if code == errno.EBUSY:
        return "busy: something is already mounted there or the share is in use"
    if code == errno.EINVAL:
        return "the kernel rejected the options or the tag (EINVAL); check the rule's options"
    if code == errno.ETIMEDOUT:
        return (
            f"{err.strerror}: the kernel is stuck removing a virtio-fs device whose host daemon "
            "died, and every virtio-fs mount waits for that until the guest reboots "
            "(see 'vfs-agent status')"
        )
    if code == errno.ENOTCONN:
        return "the share's device is gone (ENOTCONN); unplugged shares must be unmounted"
    if code in (errno.ELOOP, errno.ENOTDIR):
        return "the mount path has a symlink or non-directory component"
    return err.strerror or str(err)
