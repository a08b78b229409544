"""Which shares the hypervisor attached, read from sysfs as plain data.

Sources, each a function of the system root:
- discover_sysfs: /sys/fs/virtiofs/<n>/{tag,device} (Linux >= 6.9);
- discover_9p: /sys/bus/virtio/devices/virtioN/mount_tag;
- discover_pci (system/pci_config.py): the virtio-pci config window, for older kernels.
`discover()` combines them and says whether the virtio-fs list is known to be complete, and
reports devices the kernel is still removing (removing_devices).
"""

from __future__ import annotations

import posixpath

from vfs_agent.core.model import Discovery, Share, Source, Transport
from vfs_agent.system.sysroot import SysRoot

SYSFS_VIRTIOFS = "/sys/fs/virtiofs"
VIRTIO_DEVICES = "/sys/bus/virtio/devices"
VIRTIO_ID_FS = 0x1A
VIRTIO_ID_9P = 0x09
# A device being removed: a moment normally, for good when requests to a dead virtiofsd are in
# flight (the removal waits for them while holding virtio-fs's global lock).
REMOVAL_STUCK = (
    "virtio-fs device {device} is being removed; if this stays, requests to its host daemon are "
    "stuck in flight (did the host's virtiofsd die?): until they end, no virtio-fs device can be "
    "added and every virtio-fs mount waits (a guest reboot ends it)"
)


def read_tag(raw: bytes) -> str:
    """Decode a tag file: NUL padding and the one newline sysfs appends are not part of it."""
    raw = raw.split(b"\0", 1)[0]
    if raw.endswith(b"\n"):
        raw = raw[:-1]
    return raw.decode("utf-8", "surrogateescape")


def discover_sysfs(sysroot: SysRoot) -> list[Share]:
    shares = []
    for entry in sysroot.listdir(SYSFS_VIRTIOFS):
        raw = sysroot.read_bytes(f"{SYSFS_VIRTIOFS}/{entry}/tag")
        if raw is None:
            continue
        tag = read_tag(raw)
        if not tag:
            continue
        link = sysroot.readlink(f"{SYSFS_VIRTIOFS}/{entry}/device")
        device = posixpath.basename(link) if link else None
        shares.append(Share(tag, Transport.VIRTIOFS, device, Source.SYSFS))
    return shares


def virtio_devices(sysroot: SysRoot, device_id: int) -> list[str]:
    """Names (virtioN) of the virtio devices of one type, from their `device` attribute."""
    out = []
    for name in sysroot.listdir(VIRTIO_DEVICES):
        text = sysroot.read_text(f"{VIRTIO_DEVICES}/{name}/device")
        try:
            if text is not None and int(text.strip(), 16) == device_id:
                out.append(name)
        except ValueError:
            continue
    return out


def discover_9p(sysroot: SysRoot) -> list[Share]:
    shares = []
    for name in virtio_devices(sysroot, VIRTIO_ID_9P):
        raw = sysroot.read_bytes(f"{VIRTIO_DEVICES}/{name}/mount_tag")
        tag = read_tag(raw) if raw is not None else ""
        if tag:
            shares.append(Share(tag, Transport.NINEP, name, Source.NINEP_SYSFS))
    return shares


def discover(sysroot: SysRoot, *, pci: bool = True) -> Discovery:
    """All shares. Virtio-fs tags come from sysfs when the kernel has it; devices sysfs does not
    explain (older kernels) are counted, and make the result incomplete, until another source
    such as the PCI config window accounts for them (`pci=False` skips it: it writes to PCI
    config space, which the boot-time generator should not do)."""
    virtiofs = discover_sysfs(sysroot)
    devices = virtio_devices(sysroot, VIRTIO_ID_FS)
    known = {s.device for s in virtiofs}
    unexplained = [d for d in devices if d not in known]
    problems: list[str] = []
    removing: list[str] = []
    if pci and sysroot.exists(SYSFS_VIRTIOFS):
        removing = removing_devices(sysroot)
        problems += [REMOVAL_STUCK.format(device=d) for d in removing]
    if unexplained and pci:
        virtiofs, found_problems = _from_other_sources(sysroot, virtiofs, unexplained)
        problems += found_problems  # a removal in progress stays reported
        known = {s.device for s in virtiofs}
        unexplained = [d for d in devices if d not in known]
    shares = sorted(set(virtiofs) | set(discover_9p(sysroot)))
    return Discovery(
        tuple(shares),
        complete=not unexplained,
        problems=tuple(problems),
        removing=tuple(removing),
    )


def removing_devices(sysroot: SysRoot) -> list[str]:
    """virtio-fs PCI functions the kernel is removing: no longer bound to a driver, their
    virtio device still below them. The driver lets go of them first, and their virtio device
    leaves /sys/bus/virtio before its own driver is done, so this is where a removal that cannot
    finish shows."""
    from vfs_agent.system.pci_config import virtio_fs_devices

    return [
        d.describe()
        for d in virtio_fs_devices(sysroot.root)
        if d.virtio and not (d.path / "driver").exists()
    ]


def _from_other_sources(
    sysroot: SysRoot, found: list[Share], unexplained: list[str]
) -> tuple[list[Share], list[str]]:
    """Seam for discovery sources that work without /sys/fs/virtiofs (older kernels)."""
    try:
        from vfs_agent.system.pci_config import discover_pci
    except ImportError:
        return found, [f"no tag source for virtio-fs devices: {', '.join(unexplained)}"]
    result = discover_pci(sysroot.root)
    extra = [s for s in result.shares if s.device in unexplained]
    return found + extra, list(result.problems)
