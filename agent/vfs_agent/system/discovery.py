"""Which shares the hypervisor attached, read from sysfs as plain data.

Sources, each a function of the system root:
- discover_sysfs: /sys/fs/virtiofs/<n>/{tag,device} (Linux >= 6.9), walked by sysfs_tags(),
  which the udev helper uses too;
- discover_9p: /sys/bus/virtio/devices/virtioN/mount_tag;
- discover_pci (system/pci_config.py): the virtio-pci config window, for older kernels.
`discover()` combines them and says whether the virtio-fs list is known to be complete, and
reports devices the kernel is still removing (removing_devices) and tag files it cannot read
(an EACCES or EIO tag is a problem the reports show, never a share silently dropped).
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

from vfs_agent.core.observation import Discovery, Share, Source
from vfs_agent.core.transport import Transport
from vfs_agent.system.sysroot import SysRoot

SYSFS_VIRTIOFS = "/sys/fs/virtiofs"
VIRTIO_DEVICES = "/sys/bus/virtio/devices"
VIRTIO_ID_FS = 0x1A
VIRTIO_ID_9P = 0x09
UNLISTABLE = (
    "cannot list {path} ({why}): shares are not known to be complete, so no mount is taken for "
    "stale"
)
UNREADABLE_9P_TAG = (
    "cannot read the tag of 9p device {device} ({path}: {why}); its share is not mounted, and "
    "no 9p mount is taken for stale, until the tag can be read"
)
UNREADABLE_TAG = (
    "cannot read the tag of virtio-fs device {device} ({path}: {why}); its share is not "
    "mounted, and no mount is taken for stale, until the tag can be read"
)
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


@dataclass(frozen=True)
class SysfsTag:
    """One /sys/fs/virtiofs/<entry>: its device and its tag, or why the tag is unknown. An
    entry "" without a device stands for the directory itself when it cannot be listed."""

    entry: str
    device: str | None  # the virtio device (virtioN) its `device` link names
    tag: str | None  # None when the tag file cannot be read (then `problem` says why)
    problem: str | None = None


def sysfs_tags(sysroot: SysRoot) -> list[SysfsTag]:
    """Every entry of /sys/fs/virtiofs with a tag, or with a tag file that exists but cannot
    be read. An entry whose tag file is gone (the device is being removed) or empty is left
    out."""
    try:
        entries = sysroot.listdir(SYSFS_VIRTIOFS)
    except OSError as e:
        why = e.strerror or str(e)
        return [SysfsTag("", None, None, UNLISTABLE.format(path=SYSFS_VIRTIOFS, why=why))]
    found = []
    for entry in entries:
        where = f"{SYSFS_VIRTIOFS}/{entry}"
        link = sysroot.readlink(f"{where}/device")
        device = posixpath.basename(link) if link else None
        try:
            raw = sysroot.read_bytes(f"{where}/tag")
        except OSError as e:
            why = e.strerror or str(e)
            problem = UNREADABLE_TAG.format(device=device or entry, path=f"{where}/tag", why=why)
            found.append(SysfsTag(entry, device, None, problem))
            continue
        tag = read_tag(raw) if raw is not None else ""
        if tag:
            found.append(SysfsTag(entry, device, tag))
    return found


def discover_sysfs(sysroot: SysRoot) -> list[Share]:
    """The shares /sys/fs/virtiofs lists with a readable tag."""
    return _shares(sysfs_tags(sysroot))


def _shares(items: list[SysfsTag]) -> list[Share]:
    return [
        Share(i.tag, Transport.VIRTIOFS, i.device, Source.SYSFS) for i in items if i.tag is not None
    ]


def listed_now(sysroot: SysRoot, transport: Transport, tag: str) -> bool:
    """Whether the kernel lists a share with `tag` now: in /sys/fs/virtiofs for virtio-fs, on
    the virtio bus for 9p. Cheap enough to ask just before acting on a plan made a moment ago.
    No PCI config window is read, so on kernels without /sys/fs/virtiofs no virtio-fs share is
    ever listed here."""
    if transport is Transport.NINEP:
        try:
            shares, _ = discover_9p(sysroot)
        except OSError:
            return False
        return any(s.tag == tag for s in shares)
    return any(i.tag == tag for i in sysfs_tags(sysroot))


def virtio_devices(sysroot: SysRoot, device_id: int) -> list[str]:
    """Names (virtioN) of the virtio devices of one type, from their `device` attribute.
    Raises OSError when the virtio bus cannot be listed."""
    out = []
    for name in sysroot.listdir(VIRTIO_DEVICES):
        try:
            text = sysroot.read_text(f"{VIRTIO_DEVICES}/{name}/device")
            if text is not None and int(text.strip(), 16) == device_id:
                out.append(name)
        except (OSError, ValueError):
            # A device whose type cannot be read is of no kind we know: a share device that
            # hides this way is not counted, and its tag, if sysfs lists it, still is.
            continue
    return out


def discover_9p(sysroot: SysRoot) -> tuple[list[Share], list[str]]:
    """The 9p shares, and a problem for each mount_tag that cannot be read."""
    shares = []
    problems = []
    for name in virtio_devices(sysroot, VIRTIO_ID_9P):
        path = f"{VIRTIO_DEVICES}/{name}/mount_tag"
        try:
            raw = sysroot.read_bytes(path)
        except OSError as e:
            why = e.strerror or str(e)
            problems.append(UNREADABLE_9P_TAG.format(device=name, path=path, why=why))
            continue
        tag = read_tag(raw) if raw is not None else ""
        if tag:
            shares.append(Share(tag, Transport.NINEP, name, Source.NINEP_SYSFS))
    return shares, problems


def discover(sysroot: SysRoot, *, pci: bool = True) -> Discovery:
    """All shares. Virtio-fs tags come from sysfs when the kernel has it; devices sysfs does not
    explain (older kernels) are counted, and make the result incomplete, until another source
    such as the PCI config window accounts for them (`pci=False` skips it: it writes to PCI
    config space, which the boot-time generator should not do)."""
    listed = sysfs_tags(sysroot)
    virtiofs = _shares(listed)
    try:
        devices = virtio_devices(sysroot, VIRTIO_ID_FS)
    except OSError as e:
        return _without_bus(listed, e)
    problems: list[str] = []
    known = {s.device for s in virtiofs}
    unexplained = [d for d in devices if d not in known]
    removing: list[str] = []
    if pci and sysroot.exists(SYSFS_VIRTIOFS):
        removing = removing_devices(sysroot)
        problems += [REMOVAL_STUCK.format(device=d) for d in removing]
    if unexplained and pci:
        virtiofs, more = _from_other_sources(sysroot, virtiofs, unexplained)
        problems += more
        known = {s.device for s in virtiofs}
        unexplained = [d for d in devices if d not in known]
    # An unreadable tag matters while no other source named its device's share; an unlistable
    # /sys/fs/virtiofs (no device) always.
    unreadable = [i.problem for i in listed if i.problem and i.device not in known]
    complete = not unexplained and not any(i.problem and i.device is None for i in listed)
    ninep, ninep_problems = discover_9p(sysroot)
    shares = sorted(set(virtiofs) | set(ninep))
    problems = unreadable + problems + ninep_problems
    return Discovery(
        tuple(shares),
        complete=complete,
        problems=tuple(problems),
        ninep_complete=not ninep_problems,
        removing=tuple(removing),
    )


def _without_bus(listed: list[SysfsTag], error: OSError) -> Discovery:
    """The virtio bus cannot be listed: what sysfs names, and nothing known to be complete
    (so no mount is taken for stale)."""
    bus = UNLISTABLE.format(path=VIRTIO_DEVICES, why=error.strerror or str(error))
    problems = (*[i.problem for i in listed if i.problem], bus)
    shares = tuple(sorted(_shares(listed)))
    return Discovery(shares, complete=False, problems=problems, ninep_complete=False)


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
