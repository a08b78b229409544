"""The mount table as data: /proc/self/mountinfo parsed (proc(5)), and the visible mounts."""

from __future__ import annotations

from vfs_agent.core.escape import unescape_octal
from vfs_agent.core.observation import Mounted


def parse_mountinfo(text: str) -> list[Mounted]:
    """Parse mountinfo (proc(5)); malformed lines are skipped. Order is kept: a later entry for
    the same target is mounted on top of an earlier one."""
    entries = []
    for line in text.splitlines():
        fields = line.split(" ")
        try:
            sep = fields.index("-", 6)
            entries.append(
                Mounted(
                    mount_id=int(fields[0]),
                    parent_id=int(fields[1]),
                    target=unescape_octal(fields[4]),
                    fstype=unescape_octal(fields[sep + 1]),
                    source=unescape_octal(fields[sep + 2]),
                    options=tuple(fields[5].split(",")),
                    device=fields[2],
                    super_options=tuple(fields[sep + 3].split(","))
                    if len(fields) > sep + 3
                    else (),
                )
            )
        except (ValueError, IndexError):
            continue
    return entries


def top_mounts(table: list[Mounted]) -> dict[str, Mounted]:
    """The visible (top-most) mount at each target."""
    return {entry.target: entry for entry in table}
