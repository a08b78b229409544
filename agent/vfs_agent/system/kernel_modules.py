"""Loading a filesystem module before the first mount that needs it, the virtio driver of
a share device that was added where nothing loads drivers (modprobe, through
system/tools.py), and probing again a share device its driver refused."""

from __future__ import annotations

from vfs_agent.core.transport import Transport
from vfs_agent.system.discovery import VIRTIO_DEVICES, VIRTIO_ID_9P, VIRTIO_ID_FS, virtio_devices
from vfs_agent.system.sysroot import SysRoot
from vfs_agent.system.tools import run_tool

MODULES = {Transport.VIRTIOFS: ["virtiofs"], Transport.NINEP: ["9pnet_virtio", "9p"]}
# The virtio driver of each kind of share device (also the name of its module).
DRIVERS = {Transport.VIRTIOFS: "virtiofs", Transport.NINEP: "9pnet_virtio"}
VIRTIO_DRIVERS = "/sys/bus/virtio/drivers"
VIRTIO_DRIVERS_PROBE = "/sys/bus/virtio/drivers_probe"
DEVICE_IDS = {Transport.VIRTIOFS: VIRTIO_ID_FS, Transport.NINEP: VIRTIO_ID_9P}


def filesystem_registered(sysroot: SysRoot, fstype: str) -> bool:
    # Unreadable counts as not registered: the worst that follows is a modprobe that finds
    # the module loaded already.
    text = sysroot.read_optional("/proc/filesystems") or ""
    return any(line.split()[-1:] == [fstype] for line in text.splitlines())


def ensure_filesystem(sysroot: SysRoot, transport: Transport) -> str | None:
    """Load the modules `transport` needs if its filesystem is not registered yet.
    Returns None when ready, else what went wrong. Only acts on the running system (root /)."""
    if filesystem_registered(sysroot, transport.value) or not sysroot.live:
        return None
    for module in MODULES[transport]:
        problem = _modprobe(module)
        if problem:
            return problem
    return None


def ensure_driver(sysroot: SysRoot, transport: Transport) -> str | None:
    """Register the virtio driver of `transport`'s devices, loading its module if needed: what
    udevd does by modalias when a device appears. Without udevd (minimal guests) and with the
    driver a module that is not loaded (Debian 12: virtiofs.ko), a new device stays unbound, so
    no `bind` uevent ever follows its `add`. Returns None when ready, else what went wrong."""
    driver = DRIVERS[transport]
    if sysroot.exists(f"{VIRTIO_DRIVERS}/{driver}") or not sysroot.live:
        return None
    return _modprobe(driver)


def bind_unbound(sysroot: SysRoot, transport: Transport) -> list[str]:
    """Ask the kernel to probe share devices of `transport` that have no driver although it is
    registered, and return those that are bound now. The virtio-fs driver refuses a device
    whose tag another device still holds (EEXIST), and nothing probes it again by itself: the
    host plugged a share while the guest was still removing the previous device with that tag.
    Only acts on the running system (root /)."""
    if not sysroot.live or not sysroot.exists(f"{VIRTIO_DRIVERS}/{DRIVERS[transport]}"):
        return []
    bound = []
    try:
        devices = virtio_devices(sysroot, DEVICE_IDS[transport])
    except OSError:
        return []  # an unlistable bus: discovery reports it
    for name in devices:
        if sysroot.exists(f"{VIRTIO_DEVICES}/{name}/driver"):
            continue
        try:
            with open(sysroot.path(VIRTIO_DRIVERS_PROBE), "w") as probe:
                probe.write(name)
        except OSError:
            continue  # still refused (the old device is not gone yet): the next event retries
        if sysroot.exists(f"{VIRTIO_DEVICES}/{name}/driver"):
            bound.append(name)
    return bound


def _modprobe(module: str) -> str | None:
    return run_tool(["modprobe", "-q", module], 30)
