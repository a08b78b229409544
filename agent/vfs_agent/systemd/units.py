"""Which shares systemd mounts itself (through generated .mount units); execute/systemd.py
starts them."""

from __future__ import annotations

from vfs_agent.core.escape import mount_unit_name
from vfs_agent.system.generated_files import is_ours
from vfs_agent.system.sysroot import SysRoot

UNIT_DIRS = ("/run/systemd/generator", "/etc/systemd/system", "/run/systemd/system")


def systemd_running(sysroot: SysRoot) -> bool:
    return sysroot.exists("/run/systemd/system")


def managed_unit(sysroot: SysRoot, path: str) -> str | None:
    """The name of the vfs-agent generated unit that mounts `path`, if systemd runs and has one."""
    if not systemd_running(sysroot):
        return None
    name = mount_unit_name(path)
    for directory in UNIT_DIRS:
        if is_ours(sysroot.path(f"{directory}/{name}")):
            return name
    return None
