"""The mount table, read from /proc/self/mountinfo."""

from __future__ import annotations

from vfs_agent.core.model import Mounted
from vfs_agent.core.mountinfo import parse_mountinfo
from vfs_agent.system.sysroot import SysRoot

MOUNTINFO = "/proc/self/mountinfo"


def read_mount_table(sysroot: SysRoot) -> list[Mounted]:
    text = sysroot.read_text(MOUNTINFO)
    return parse_mountinfo(text) if text else []
