"""The door to the system's files, relative to a root.

`SysRoot(Path("/"))` is the running system; tests point it at a fake tree, image builds at an
image directory. Paths given to it are absolute paths *inside* that root. Readers tell a file
that is absent (None, or an empty listing) from one that is there but cannot be read (the
OSError is raised: EACCES, EIO, not a regular file, too large), so a caller decides what an
unreadable file means instead of losing it silently; the *_optional readers are for hints
only (kernel facts a report shows as unknown). Every file is replaced through
system/atomic.py (`write_atomic`, also this class's method). Code that needs the host path
itself (mount(2) through an fd, the PCI config window, the lock) takes `path()`.

The readers are system/observed.py's; a SysRoot made with `recording()` keeps a journal of
every read, which the boot-time generator keeps to know later whether anything it read changed.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from vfs_agent.system import observed
from vfs_agent.system.atomic import write_atomic
from vfs_agent.system.observed import ABSENT
from vfs_agent.system.safe_io import READ_MAX

TYPE_CHECKING = False  # typing itself costs the boot-time generator a few ms to import
if TYPE_CHECKING:
    from typing import Any

    from vfs_agent.system.observed import Observation

__all__ = ["ABSENT", "SysRoot", "UnsafePathError", "write_atomic"]


@functools.lru_cache(maxsize=4096)
def _under(root: Path, inner: str) -> Path:
    """`inner` without its leading slashes, under `root` (SysRoot.path), remembered: the daemon
    reads the same few dozen sysfs files at every look, and under emulation building each Path
    again, and its string, cost it tens of milliseconds per uevent. A Path keeps its string once
    made, so the same Path again gives it at once."""
    return root / inner.lstrip("/")


class UnsafePathError(OSError):
    """A path component is a symlink or not a directory where one is required."""


@dataclass(frozen=True)
class SysRoot:
    root: Path
    # With a journal (recording()), every read below is appended to it (system/observed.py).
    journal: list[Observation] | None = field(default=None, compare=False, repr=False)

    def recording(self) -> SysRoot:
        """This root, with a new journal of every read made through it."""
        return SysRoot(self.root, [])

    @property
    def live(self) -> bool:
        """Whether this is the running system (root /), not an image or a test tree: the one
        place that decides it. Only the running system loads modules, binds devices or asks
        its service manager to start units."""
        return self.root == Path("/")

    def path(self, inner: str) -> Path:
        """The host path of `inner`, an absolute path inside the root (no symlink resolution)."""
        return _under(self.root, inner)

    def _read(self, reader: str, inner: str, *args: Any) -> Any:
        return observed.read(self.journal, reader, str(self.path(inner)), *args)

    def read_text(self, inner: str) -> str | None:
        """read_bytes(), decoded (UTF-8; other bytes kept as surrogates)."""
        raw = self.read_bytes(inner)
        return None if raw is None else raw.decode("utf-8", "surrogateescape")

    def read_bytes(self, inner: str, limit: int = READ_MAX) -> bytes | None:
        """File contents, or None if it does not exist. A file that is there but cannot be
        read raises OSError: EACCES, EIO, ... and safe_io.FileRefused when it is not a regular
        file (a FIFO or a device never blocks or floods a reader) or is larger than `limit`."""
        result: bytes | None = self._read("read_bytes", inner, limit)
        return result

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
        result: bool = self._read("exists", inner)
        return result

    def lexists(self, inner: str) -> bool:
        """exists() without following a symlink at the end (a dangling link exists)."""
        result: bool = self._read("lexists", inner)
        return result

    def listdir(self, inner: str) -> list[str]:
        """Sorted entries of a directory; empty when it does not exist. A directory that is
        there but cannot be listed raises OSError (EACCES, EIO, ...)."""
        result: list[str] = self._read("listdir", inner)
        return result

    def readlink(self, inner: str) -> str | None:
        result: str | None = self._read("readlink", inner)
        return result

    def owner_and_mode(self, inner: str, *, follow: bool = True) -> tuple[int, int]:
        """The owner and st_mode of `inner` (of a symlink itself without `follow`); OSError
        when it cannot be stat'ed."""
        result: tuple[int, int] = self._read("owner_and_mode", inner, follow)
        return result

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
