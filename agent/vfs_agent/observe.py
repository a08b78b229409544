"""One look at the system: shares, mount table, dead mounts. Everything plan() needs."""

from __future__ import annotations

from dataclasses import dataclass

from vfs_agent.discovery import Discovery, discover
from vfs_agent.model import Mounted, Transport
from vfs_agent.mounttable import probe_dead, read_mount_table
from vfs_agent.sysroot import SysRoot

SHARE_FSTYPES = frozenset(t.value for t in Transport)


@dataclass(frozen=True)
class Observed:
    discovery: Discovery
    table: list[Mounted]
    dead: frozenset[str]


def observe(sysroot: SysRoot) -> Observed:
    table = read_mount_table(sysroot)
    return Observed(discover(sysroot), table, probe_dead(sysroot, table, SHARE_FSTYPES))
