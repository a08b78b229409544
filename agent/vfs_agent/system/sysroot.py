"""The one door to the system: every file the agent reads or writes, relative to a root.

`SysRoot(Path("/"))` is the running system; tests point it at a fake tree, image builds at an
image directory. Paths given to it are absolute paths *inside* that root.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from vfs_agent.system.safe_io import read_regular, resolve_output


class UnsafePathError(OSError):
    """A path component is a symlink or not a directory where one is required."""


@dataclass(frozen=True)
class SysRoot:
    root: Path

    def path(self, inner: str) -> Path:
        """The host path of `inner`, an absolute path inside the root (no symlink resolution)."""
        return self.root / inner.lstrip("/")

    def read_text(self, inner: str) -> str | None:
        """File contents, or None if it does not exist or cannot be read (also when it is not
        a regular file: a FIFO or a device never blocks or floods a reader)."""
        raw = self.read_bytes(inner)
        return None if raw is None else raw.decode("utf-8", "surrogateescape")

    def read_bytes(self, inner: str) -> bytes | None:
        try:
            return read_regular(self.path(inner))
        except OSError:
            return None

    def exists(self, inner: str) -> bool:
        return self.path(inner).exists()

    def listdir(self, inner: str) -> list[str]:
        """Sorted entries of a directory; empty when it does not exist."""
        try:
            return sorted(os.listdir(self.path(inner)))
        except OSError:
            return []

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

    def write_atomic(self, inner: str, data: str, *, mode: int = 0o644) -> None:
        """Write a file so readers see the old or the new content, never a mix."""
        write_atomic(self.path(inner), data, mode=mode)


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


def temp_name(name: str) -> str:
    """A hidden temporary name beside `name` (loaders skip dot files); `name` is cut so the
    result fits NAME_MAX (255 bytes) even for a 255-byte unit name."""
    short = os.fsdecode(os.fsencode(name)[:200])
    return f".{short}.{os.getpid()}.tmp"


def write_atomic(target: Path, data: str, *, mode: int = 0o644) -> None:
    """Temp file in the same directory, fsync, rename over the target; keeps an existing
    file's mode and owner. A symlinked target is followed (the link is kept and its target
    replaced); anything but a regular file is refused (safe_io.resolve_output)."""
    target = resolve_output(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        st: os.stat_result | None = os.stat(target)
    except FileNotFoundError:
        st = None
    # O_EXCL on a per-process name instead of tempfile: the boot-time generator writes through
    # here, and tempfile's imports cost it measurable time under emulation.
    tmp = str(target.parent / temp_name(target.name))
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)  # left by an earlier process with the same PID that died
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if st is not None:
            os.chmod(tmp, stat.S_IMODE(st.st_mode))
            with contextlib.suppress(PermissionError):
                os.chown(tmp, st.st_uid, st.st_gid)
        else:
            os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
