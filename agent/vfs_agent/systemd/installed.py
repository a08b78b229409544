"""What of vfs-agent's system files this system has (cheap: the generator asks at boot)."""

from __future__ import annotations

from vfs_agent.core.render_systemd import MOUNT_HELPER_TYPE
from vfs_agent.system.sysroot import SysRoot

RULE_NAME = "70-vfs-agent.rules"
# mount(8) (libmount) looks for helpers in /sbin and nowhere else: /usr/sbin where /usr is
# merged (Debian 12 and later, Fedora), which is where the packages install it.
MOUNT_HELPER = f"/sbin/mount.{MOUNT_HELPER_TYPE}"
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


def mount_helper_installed(sysroot: SysRoot) -> bool:
    """Whether mount(8) finds vfs-agent's mount helper (so a share's wait for its host may run
    inside its mount unit)."""
    return sysroot.exists(MOUNT_HELPER)
