"""The one way vfs-agent replaces a file or a symlink: as systemd does.

A temporary file (or link) is made beside the target, its data fsynced, renamed over the
target, and the directory fsynced, so after a crash the target holds the old or the new
content, never a mix, and the rename itself is on disk. Every writer goes through here: the
unit directory, the fstab block, the compiled policy, the cloud-init drop-in, the installed
files, the probe markers.
"""

from __future__ import annotations

import errno
import os
import stat

from vfs_agent.system.observed import readlink
from vfs_agent.system.safe_io import resolve_output

# Only os, stat and errno: the boot-time generator's replay (systemd/replay.py) writes through
# here, and pathlib, contextlib or tempfile would cost it measurable time under emulation.


def temp_name(name: str) -> str:
    """A hidden temporary name beside `name` (loaders skip dot files); `name` is cut so the
    result fits NAME_MAX (255 bytes) even for a 255-byte unit name."""
    short = os.fsdecode(os.fsencode(name)[:200])
    return f".{short}.{os.getpid()}.tmp"


def fsync_dir(directory: os.PathLike[str] | str) -> None:
    """Make a rename or unlink in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP):  # a filesystem without directory fsync
            raise
    finally:
        os.close(fd)


def _unlink_if_there(path: str) -> bool:
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


def _chown_if_allowed(fd: int, uid: int, gid: int) -> bool:
    """Give the file its old owner back; False for a writer that may not (not root)."""
    try:
        os.fchown(fd, uid, gid)
    except PermissionError:
        return False
    return True


def write_atomic(
    target: os.PathLike[str] | str,
    data: str | bytes,
    *,
    mode: int = 0o644,
    keep_attrs: bool = True,
) -> None:
    """Replace `target` with `data`: temp file in the same directory, fsync, rename, fsync of
    the directory. A symlinked target is followed (the link is kept and its target replaced);
    anything but a regular file is refused (safe_io.resolve_output). Missing parent
    directories are created. With `keep_attrs` an existing file keeps its mode and owner and a
    new one gets `mode`; without, the file gets exactly `mode` and the writer's owner (the
    cloud-init drop-in must be root's and 0644 whatever was there)."""
    path = resolve_output(target)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    st: os.stat_result | None = None
    if keep_attrs:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            st = None
    # O_EXCL on a per-process name instead of tempfile.
    tmp = os.path.join(parent, temp_name(os.path.basename(path)))
    _unlink_if_there(tmp)  # left by an earlier process with the same PID that died
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data)
            handle.flush()
            if st is not None:
                os.fchmod(handle.fileno(), stat.S_IMODE(st.st_mode))
                _chown_if_allowed(handle.fileno(), st.st_uid, st.st_gid)
            else:
                os.fchmod(handle.fileno(), mode)
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        _unlink_if_there(tmp)
        raise
    fsync_dir(parent)


def symlink_atomic(path: os.PathLike[str] | str, link_to: str) -> bool:
    """Make `path` a symlink to `link_to`, replacing what is there (a link or a file, never a
    directory: rename(2) refuses that): a link under a temporary name, renamed over `path`,
    then the directory fsynced. False when `path` already is that link."""
    path = os.fspath(path)
    if readlink(path) == link_to:
        return False
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, temp_name(os.path.basename(path)))
    _unlink_if_there(tmp)
    os.symlink(link_to, tmp)
    try:
        os.replace(tmp, path)
    except BaseException:
        _unlink_if_there(tmp)
        raise
    fsync_dir(parent)
    return True


def remove_durably(path: os.PathLike[str] | str) -> bool:
    """Unlink `path` and fsync its directory; False when it was not there."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    fsync_dir(os.path.dirname(os.fspath(path)))
    return True
