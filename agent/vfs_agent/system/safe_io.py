"""Reading and replacing files the way systemd and util-linux do.

Readers open with O_NONBLOCK and check what they opened, so a FIFO cannot hang them and a
device (/dev/zero) cannot flood them; every read is bounded. Writers resolve a symlinked
target first, so the link survives and its target is updated (what `sed -i` without
--follow-symlinks gets wrong), and refuse to replace anything that is not a regular file.
"""

from __future__ import annotations

import errno
import os
import stat

SYMLINK_MAX = 40  # as the kernel's MAXSYMLINKS
READ_MAX = 64 << 20  # anything the agent reads without a tighter bound


class FileRefused(OSError):
    """A path names something the agent will not read or replace; the message says why."""

    def __init__(self, path: os.PathLike[str] | str, why: str, code: int = errno.EINVAL) -> None:
        super().__init__(code, why, str(path))


def kind_of(mode: int) -> str:
    """What a stat mode is, in words."""
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISLNK, "a symlink"),
    ):
        if test(mode):
            return name
    return "a regular file" if stat.S_ISREG(mode) else "not a regular file"


def read_regular(path: os.PathLike[str] | str, limit: int = READ_MAX) -> bytes:
    """The contents of a regular file of at most `limit` bytes (symlinks followed).

    Raises FileNotFoundError, FileRefused (not a regular file, too large), or another OSError.
    """
    st = os.stat(path)  # before open(): opening some devices has side effects
    if not stat.S_ISREG(st.st_mode):
        raise FileRefused(path, f"is {kind_of(st.st_mode)}, not a regular file")
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    try:
        st = os.fstat(fd)  # the file may have been swapped since stat()
        if not stat.S_ISREG(st.st_mode):
            raise FileRefused(path, f"is {kind_of(st.st_mode)}, not a regular file")
        chunks = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    if size > limit:
        raise FileRefused(path, f"is larger than {limit} bytes", errno.EFBIG)
    return b"".join(chunks)


def resolve_output(path: os.PathLike[str] | str) -> str:
    """The file a write to `path` must replace: a symlink is followed (a relative target is
    resolved from the link's directory) so the link is kept. Refuses a target that exists and
    is not a regular file, and links into /proc (/proc/self/fd/1 is not a file to replace).
    """
    current = os.path.abspath(path)
    for _ in range(SYMLINK_MAX):
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            break  # a new file (or a dangling link's target): created
        except NotADirectoryError:
            raise FileRefused(path, "a component of the path is not a directory") from None
        if not stat.S_ISLNK(st.st_mode):
            if not stat.S_ISREG(st.st_mode):
                what = current if current != os.path.abspath(path) else path
                raise FileRefused(
                    path, f"{what} is {kind_of(st.st_mode)}; only a regular file is replaced"
                )
            break
        target = os.path.join(os.path.dirname(current), os.readlink(current))
        current = os.path.normpath(target)
        if current == "/proc" or current.startswith("/proc/"):
            raise FileRefused(path, f"links into /proc ({current}); write to a regular file")
    else:
        raise FileRefused(path, "too many levels of symbolic links", errno.ELOOP)
    parent = os.path.realpath(os.path.dirname(current))
    if parent == "/proc" or parent.startswith("/proc/"):
        raise FileRefused(path, f"lies in /proc ({parent}); write to a regular file")
    return os.path.join(parent, os.path.basename(current))


def check_output_dir(path: os.PathLike[str] | str) -> None:
    """Refuse an output directory that exists as something else (a file, a device)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        raise FileRefused(path, f"is {kind_of(st.st_mode)}, not a directory", errno.ENOTDIR)
