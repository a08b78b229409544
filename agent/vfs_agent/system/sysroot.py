"""The door to the system's files, relative to a root.

`SysRoot(Path("/"))` is the running system; tests point it at a fake tree, image builds at an
image directory. Paths given to it are absolute paths *inside* that root. Readers tell a file
that is absent (None, or an empty listing) from one that is there but cannot be read (the
OSError is raised: EACCES, EIO, not a regular file, too large), so a caller decides what an
unreadable file means instead of losing it silently; the *_optional readers are for hints
only (kernel facts a report shows as unknown). Every file is replaced through
system/atomic.py (`write_atomic`, also this class's method). Code that needs the host path
itself (mount(2) through an fd, the PCI config window, the lock) takes `path()`.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from vfs_agent.system.atomic import write_atomic
from vfs_agent.system.safe_io import read_regular

__all__ = ["ABSENT", "SysRoot", "UnsafePathError", "write_atomic"]

# What "not there" looks like: the file, or a directory on its way, does not exist.
ABSENT = (errno.ENOENT, errno.ENOTDIR)


class UnsafePathError(OSError):
    """A path component is a symlink or not a directory where one is required."""


@dataclass(frozen=True)
class SysRoot:
    root: Path

    @property
    def live(self) -> bool:
        """Whether this is the running system (root /), not an image or a test tree: the one
        place that decides it. Only the running system loads modules, binds devices or asks
        its service manager to start units."""
        return self.root == Path("/")

    def path(self, inner: str) -> Path:
        """The host path of `inner`, an absolute path inside the root (no symlink resolution)."""
        return self.root / inner.lstrip("/")

    def read_text(self, inner: str) -> str | None:
        """read_bytes(), decoded (UTF-8; other bytes kept as surrogates)."""
        raw = self.read_bytes(inner)
        return None if raw is None else raw.decode("utf-8", "surrogateescape")

    def read_bytes(self, inner: str) -> bytes | None:
        """File contents, or None if it does not exist. A file that is there but cannot be
        read raises OSError: EACCES, EIO, ... and safe_io.FileRefused when it is not a regular
        file (a FIFO or a device never blocks or floods a reader) or is too large."""
        try:
            return read_regular(self.path(inner))
        except OSError as e:
            if e.errno in ABSENT:
                return None
            raise

    def listdir_optional(self, inner: str) -> list[str]:
        """listdir() for a listing that is only a hint: unreadable counts as empty."""
        try:
            return self.listdir(inner)
        except OSError:
            return []

    def read_optional(self, inner: str) -> str | None:
        """read_text() for a file whose content is only a hint (kernel facts a report shows
        as "unknown" when missing): unreadable counts as absent. Never for anything whose
        loss would change what is mounted."""
        try:
            return self.read_text(inner)
        except OSError:
            return None

    def exists(self, inner: str) -> bool:
        return self.path(inner).exists()

    def listdir(self, inner: str) -> list[str]:
        """Sorted entries of a directory; empty when it does not exist. A directory that is
        there but cannot be listed raises OSError (EACCES, EIO, ...)."""
        try:
            return sorted(os.listdir(self.path(inner)))
        except OSError as e:
            if e.errno in ABSENT:
                return []
            raise

    def readlink(self, inner: str) -> str | None:
        try:
            return os.readlink(self.path(inner))
        except OSError:
            return None

    def lstat(self, inner: str) -> os.stat_result | None:
        try:
            return os.lstat(self.path(inner))
        except OSError:
            return None

    @contextlib.contextmanager
    def open_dir_nofollow(self, inner: str, *, create: bool, mode: int = 0o755) -> Iterator[int]:
        """Open directory `inner` as an O_PATH fd, walking from the root one component at a time
        without following symlinks; with `create`, make missing components (mode `mode`).

        The fd names the directory itself, so a later mount through /proc/self/fd/N cannot be
        redirected by a symlink swapped in after the check.
        """
        fd = os.open(self.root, os.O_PATH | os.O_DIRECTORY)
        try:
            for part in [p for p in inner.split("/") if p]:
                child = _open_child(fd, part, inner, create=create, mode=mode)
                os.close(fd)
                fd = child
            yield fd
        finally:
            os.close(fd)

    def write_atomic(
        self, inner: str, data: str | bytes, *, mode: int = 0o644, keep_attrs: bool = True
    ) -> None:
        """Replace a file so readers see the old or the new content, never a mix, and the
        change survives a crash (atomic.write_atomic)."""
        write_atomic(self.path(inner), data, mode=mode, keep_attrs=keep_attrs)


def _open_child(parent: int, name: str, whole: str, *, create: bool, mode: int) -> int:
    flags = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW
    try:
        return os.open(name, flags, dir_fd=parent)
    except FileNotFoundError:
        if not create:
            raise
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            raise UnsafePathError(
                e.errno, f"refusing {whole}: {name!r} is a symlink or not a directory"
            ) from None
        raise
    with contextlib.suppress(FileExistsError):
        os.mkdir(name, mode, dir_fd=parent)
    return _open_child(parent, name, whole, create=False, mode=mode)
