"""Which shares systemd mounts itself (through generated .mount units); execute/systemd.py
starts them."""

from __future__ import annotations

from vfs_agent.core.escape import mount_unit_name
from vfs_agent.system.generated_files import generated_text
from vfs_agent.system.sysroot import SysRoot

UNIT_DIRS = ("/run/systemd/generator", "/etc/systemd/system", "/run/systemd/system")


def systemd_running(sysroot: SysRoot) -> bool:
    return sysroot.exists("/run/systemd/system")


def managed_unit(sysroot: SysRoot, path: str, *, following_device: bool = False) -> str | None:
    """The name of the vfs-agent generated unit that mounts `path`, if systemd runs and has one.
    With `following_device`, only a unit that systemd stops when the share's device unit goes
    (`BindsTo=` or `StopPropagatedFrom=` it: core/render_systemd.py), which then unmounts the
    share by itself."""
    if not systemd_running(sysroot):
        return None
    name = mount_unit_name(path)
    for directory in UNIT_DIRS:
        text = generated_text(sysroot.path(f"{directory}/{name}"))
        if text is not None:
            return name if not following_device or _follows_device(text) else None
    return None


def _follows_device(unit_text: str) -> bool:
    return any(
        line.startswith(("BindsTo=", "StopPropagatedFrom=")) and line.rstrip().endswith(".device")
        for line in unit_text.splitlines()
    )
