"""The system's files read as plain data, and a journal of those reads that can be checked again.

SysRoot's readers (system/sysroot.py) are the functions in READERS. A SysRoot made with
`recording()` appends every read to its journal: the reader's name, its arguments (host paths,
so the journal holds outside the SysRoot) and what came back, a value or an error. `holds()`
performs every read of a journal again and says whether each returns what it returned then.
The boot-time generator's replay (systemd/replay.py) rests on that: when every read the last
full run made returns the same, so does the run, and its output can be written again.

So a reader returns exactly what it records: `owner_and_mode`, not a whole stat result whose
times change on every read. Only os, stat and errno are imported: the replay imports this at
boot, before anything else of vfs-agent.
"""

from __future__ import annotations

import errno
import os

from vfs_agent.system.safe_io import READ_MAX, read_regular

TYPE_CHECKING = False  # typing itself costs the boot-time replay a few ms to import
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    # (reader, its arguments, ("=", value) or ("!", errno, message))
    Observation = tuple[str, tuple[Any, ...], tuple[Any, ...]]

# What "not there" looks like: the file, or a directory on its way, does not exist.
ABSENT = (errno.ENOENT, errno.ENOTDIR)


def read_bytes(path: str, limit: int = READ_MAX) -> bytes | None:
    """File contents, or None if it does not exist. A file that is there but cannot be read
    raises OSError: EACCES, EIO, ... and safe_io.FileRefused when it is not a regular file (a
    FIFO or a device never blocks or floods a reader) or is larger than `limit`."""
    try:
        return read_regular(path, limit)
    except OSError as e:
        if e.errno in ABSENT:
            return None
        raise


def listdir(path: str) -> list[str]:
    """Sorted entries of a directory; empty when it does not exist. A directory that is there
    but cannot be listed raises OSError (EACCES, EIO, ...)."""
    try:
        return sorted(os.listdir(path))
    except OSError as e:
        if e.errno in ABSENT:
            return []
        raise


def readlink(path: str) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


def exists(path: str) -> bool:
    """Whether `path` exists, its symlinks followed. Absent, or a symlink loop, is False; a
    path that cannot be looked at (EACCES, EIO) raises OSError, as pathlib's exists() did
    before Python 3.13, so that an unreadable directory is never taken for an empty one."""
    try:
        os.stat(path)
    except OSError as e:
        if e.errno in (*ABSENT, errno.ELOOP, errno.EBADF):
            return False
        raise
    return True


def lexists(path: str) -> bool:
    """Whether `path` exists, a dangling symlink included."""
    return os.path.lexists(path)


def owner_and_mode(path: str, follow: bool = True) -> tuple[int, int]:
    """The owner and the whole st_mode of `path` (of a symlink itself without `follow`);
    OSError when it cannot be stat'ed."""
    st = os.stat(path, follow_symlinks=follow)
    return st.st_uid, st.st_mode


def identity(path: str) -> tuple[int, int, int, int]:
    """Which file `path` is and which version of it: device, inode, size and modification time,
    as Python's own bytecode cache tells a changed source file (a package upgrade replaces a
    file, so its inode changes even when its time and size do not)."""
    st = os.stat(path)
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


READERS: dict[str, Callable[..., Any]] = {
    f.__name__: f
    for f in (read_bytes, listdir, readlink, exists, lexists, owner_and_mode, identity)
}


def read(journal: list[Observation] | None, reader: str, *args: Any) -> Any:
    """READERS[reader](*args), appended to `journal` unless it is None; an OSError it raises
    is recorded and raised again unchanged."""
    try:
        value = READERS[reader](*args)
    except OSError as e:
        if journal is not None:
            journal.append((reader, args, _error(e)))
        raise
    if journal is not None:
        journal.append((reader, args, ("=", value)))
    return value


def holds(journal: list[Observation]) -> bool:
    """Whether every read in `journal` returns now what it returned when it was recorded."""
    for reader, args, outcome in journal:
        try:
            now: tuple[Any, ...] = ("=", READERS[reader](*args))
        except OSError as e:
            now = _error(e)
        if now != outcome:
            return False
    return True


def distinct(journal: list[Observation]) -> list[Observation]:
    """`journal` with each read (reader and arguments) once, at its first place. Only for a
    journal that holds(): then every repeat of a read returned what its first one did."""
    seen: set[tuple[str, tuple[Any, ...]]] = set()
    unique = []
    for reader, args, outcome in journal:
        if (reader, args) not in seen:
            seen.add((reader, args))
            unique.append((reader, args, outcome))
    return unique


def _error(e: OSError) -> tuple[Any, ...]:
    return ("!", e.errno, str(e))
