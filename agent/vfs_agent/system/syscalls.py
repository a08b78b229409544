"""mount(2), umount2(2) and unshare(2) through libc (one handle), raising OSError with the errno.

What an errno means for a share is in mount_errors.py."""

from __future__ import annotations

import ctypes
import os

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
