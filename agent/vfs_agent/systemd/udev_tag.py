"""The udev helper: map a virtio device path to its share's tag, as udev environment lines.

Called as IMPORT{program} on the virtio device (see systemd/70-vfs-agent.rules); prints
VFS_AGENT_TAG_ALIAS=<encoded tag>, the name used for /dev/virtiofs/by-tag/. Kept tiny: it
runs once per virtio-fs device at coldplug and on hotplug.
"""

from __future__ import annotations

import os
import posixpath
import sys
from pathlib import Path

from vfs_agent.core.escape import encode_tag
from vfs_agent.system.discovery import sysfs_tags
from vfs_agent.system.sysroot import SysRoot


def tag_for_device(sysroot: SysRoot, devpath: str) -> str | None:
    """The tag of the virtio device at /sys<devpath>, or None (also when its tag file cannot
    be read: no alias is better than a wrong one)."""
    device = posixpath.basename(devpath.rstrip("/"))
    for item in sysfs_tags(sysroot):
        if item.device == device:  # virtioN names are unique on the virtio bus
            return item.tag
    # Older kernels: no /sys/fs/virtiofs; read the tag through the PCI config window.
    from vfs_agent.system.pci_config import discover_pci

    for share in discover_pci(sysroot.root).shares:
        if share.device == device:
            return share.tag
    return None


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        sys.stderr.write("usage: vfs-agent-tag-id DEVPATH\n")
        return 2
    sysroot = SysRoot(Path(os.environ.get("VFS_AGENT_ROOT", "/")))
    tag = tag_for_device(sysroot, argv[0])
    if not tag:
        return 1
    sys.stdout.write(f"VFS_AGENT_TAG_ALIAS={encode_tag(tag)}\n")
    return 0
