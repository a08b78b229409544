"""The mount table, read from /proc/self/mountinfo."""

from __future__ import annotations

from vfs_agent.core.mountinfo import parse_mountinfo
from vfs_agent.core.observation import Mounted
from vfs_agent.system.sysroot import SysRoot

MOUNTINFO = "/proc/self/mountinfo"


def read_mount_table(sysroot: SysRoot) -> list[Mounted]:
    """The mounts; none when there is no mountinfo (an image tree). A mountinfo that cannot be
    read raises OSError: an empty table would make every share look unmounted."""
    text = sysroot.read_text(MOUNTINFO)
    return parse_mountinfo(text) if text else []
