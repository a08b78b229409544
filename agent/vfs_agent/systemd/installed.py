"""What of vfs-agent's system files this system has (cheap: the generator asks at boot)."""

from __future__ import annotations

from vfs_agent.system.sysroot import SysRoot

RULE_NAME = "70-vfs-agent.rules"
UDEV_RULE_DIRS = (
    "/etc/udev/rules.d",
    "/run/udev/rules.d",
    "/usr/local/lib/udev/rules.d",
    "/usr/lib/udev/rules.d",
    "/lib/udev/rules.d",
)


def udev_rule_installed(sysroot: SysRoot) -> bool:
    """Whether the share device units exist on this system (so mount units may bind to them)."""
    return any(sysroot.exists(f"{d}/{RULE_NAME}") for d in UDEV_RULE_DIRS)
