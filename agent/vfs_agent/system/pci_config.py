"""Discover virtio-fs tags through the virtio-pci "PCI configuration access" capability.

Kernels before 6.9 have no /sys/fs/virtiofs, so the tag of a virtio-fs device is not published
anywhere in sysfs. It still lives in the device-specific configuration of the device (virtio 1.x,
"Device configuration layout": `u8 tag[36]` then `le32 num_request_queues`), which sits in a BAR.
Mapping that BAR from user space (`resourceN`) is refused on Debian kernels
(CONFIG_IO_STRICT_DEVMEM) while the driver owns the device, but virtio 1.x offers a second path
that needs only the PCI configuration space, which root can read and write through
/sys/bus/pci/devices/<address>/config: the `VIRTIO_PCI_CAP_PCI_CFG` capability (cfg_type 5).
Writing `bar`, `offset` and `length` into that capability and then reading its `pci_cfg_data`
field makes the device perform that BAR access and return the bytes (virtio 1.x section 4.1.4.9,
QEMU hw/virtio/virtio-pci.c `virtio_read_config`).

The module is split in two:

- pure helpers that parse config-space bytes (walk the capability list, parse a virtio
  capability, decode a tag) and never touch the system;
- a thin I/O layer that talks to one config file through the `ConfigSpace` protocol, so tests
  can hand in an emulated device, and `discover_pci(root)` that walks `<root>/sys/bus/pci`.

Only the bar/offset/length/data fields of the cfg_type 5 capability are ever written; the Linux
driver never uses that window, so leaving it pointed at the tag does not disturb the driver.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import struct
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Protocol

from vfs_agent.core.observation import Share, Source
from vfs_agent.core.transport import Transport

VIRTIO_VENDOR_ID = 0x1AF4
VIRTIO_FS_PCI_DEVICE_ID = 0x105A  # 0x1040 + virtio device id 26 (modern, non-transitional)

PCI_STATUS = 0x06
PCI_STATUS_CAP_LIST = 0x10
PCI_CAPABILITY_LIST = 0x34
PCI_CAP_ID_VNDR = 0x09
PCI_STD_HEADER_SIZE = 0x40
PCI_STD_CONFIG_SIZE = 0x100  # virtio capabilities live in the standard (not extended) space
PCI_FIND_CAP_TTL = 48  # the kernel's bound on a capability walk (drivers/pci/pci.c)
PCI_STD_NUM_BARS = 6

VIRTIO_PCI_CAP_SIZE = 16  # struct virtio_pci_cap
VIRTIO_PCI_CFG_CAP_SIZE = 20  # struct virtio_pci_cfg_cap: the cap, then u8 pci_cfg_data[4]
CAP_BAR = 4
CAP_OFFSET = 8
CAP_LENGTH = 12
CAP_DATA = 16

TAG_SIZE = 36  # struct virtio_fs_config: u8 tag[36]

REFUSED_ERRNOS = frozenset({errno.EPERM, errno.EACCES})


class CfgType(IntEnum):
    """`cfg_type` of a virtio vendor capability (virtio 1.x, 4.1.4)."""

    COMMON = 1
    NOTIFY = 2
    ISR = 3
    DEVICE = 4
    PCI = 5
    SHARED_MEMORY = 8
    VENDOR = 9


@dataclass(frozen=True)
class VirtioPciCap:
    """One `struct virtio_pci_cap` found in config space; `pos` is its config-space offset."""

    pos: int
    cap_len: int
    cfg_type: int
    bar: int
    id: int
    offset: int
    length: int


@dataclass(frozen=True)
class PciDiscovery:
    """What the config window revealed: one share per readable device, one problem per other."""

    shares: tuple[Share, ...] = ()
    problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class PciDevice:
    """A virtio-fs PCI function: its address, sysfs directory and bound virtio device, if any."""

    address: str
    path: Path
    virtio: str | None

    def describe(self) -> str:
        """Name the device the way a person finds it in `lspci` and /sys/bus/virtio."""
        return f"{self.address} ({self.virtio})" if self.virtio else self.address


class ConfigSpace(Protocol):
    """The config file of one PCI function, opened read-write (positional I/O only)."""

    def pread(self, size: int, offset: int) -> bytes: ...

    def pwrite(self, data: bytes, offset: int) -> int: ...


ConfigOpener = Callable[[Path], AbstractContextManager[ConfigSpace]]


class TagReadError(Exception):
    """The tag of one device could not be read; `str()` says why, for a person."""


class WriteRefusedError(TagReadError):
    """The kernel refused a config-space write (EPERM/EACCES): lockdown, or not root."""


# --- pure parsing ---------------------------------------------------------------------------


def capability_offsets(config: bytes, cap_id: int = PCI_CAP_ID_VNDR) -> tuple[int, ...]:
    """Offsets of the capabilities with `cap_id`, following the list from 0x34 as the kernel does.

    The chain comes from the device (or a hostile hypervisor), so it is walked like
    `__pci_find_next_cap_ttl`: pointers below the 64-byte header end the walk, the low two bits
    are masked off, id 0xff (all ones: absent device) ends it, and at most 48 links are followed
    so a loop cannot hang us. A pointer past the bytes we could read ends the walk too (a short
    read: a non-root reader sees only the first 64 bytes).
    """
    if len(config) <= PCI_CAPABILITY_LIST or not config[PCI_STATUS] & PCI_STATUS_CAP_LIST:
        return ()
    found: list[int] = []
    pos = config[PCI_CAPABILITY_LIST]
    for _ in range(PCI_FIND_CAP_TTL):
        if pos < PCI_STD_HEADER_SIZE:
            break
        pos &= ~3
        if pos + 2 > len(config) or config[pos] == 0xFF:
            break
        if config[pos] == cap_id and pos not in found:
            found.append(pos)
        pos = config[pos + 1]
    return tuple(found)


def parse_virtio_cap(config: bytes, pos: int) -> VirtioPciCap | None:
    """Parse the `struct virtio_pci_cap` at `pos`, or None when it is cut short or too small.

    `cap_len` is the device's own claim of the structure size; a virtio cap shorter than 16 bytes
    (or one that runs past what we read) cannot carry bar/offset/length, so it is skipped rather
    than trusted.
    """
    if pos + VIRTIO_PCI_CAP_SIZE > len(config):
        return None
    _vndr, _next, cap_len, cfg_type, bar, cap_id, offset, length = struct.unpack_from(
        "<BBBBBBxxII", config, pos
    )
    if cap_len < VIRTIO_PCI_CAP_SIZE:
        return None
    return VirtioPciCap(pos, cap_len, cfg_type, bar, cap_id, offset, length)


def virtio_caps(config: bytes) -> tuple[VirtioPciCap, ...]:
    """Every well-formed virtio vendor capability, in list order."""
    parsed = (parse_virtio_cap(config, pos) for pos in capability_offsets(config))
    return tuple(cap for cap in parsed if cap is not None)


def find_device_cfg(caps: tuple[VirtioPciCap, ...]) -> VirtioPciCap | None:
    """The first device-specific config cap with a real BAR (as `virtio_pci_find_capability`).

    The spec tells drivers to use the first instance of a structure they can use, and the kernel
    skips reserved BAR numbers (> 5); a cap too short to hold the 36-byte tag is of no use here.
    """
    for cap in caps:
        if cap.cfg_type == CfgType.DEVICE and cap.bar < PCI_STD_NUM_BARS and cap.length >= TAG_SIZE:
            return cap
    return None


def find_pci_cfg(caps: tuple[VirtioPciCap, ...]) -> VirtioPciCap | None:
    """The first PCI configuration access cap big enough to hold the 4-byte data window."""
    for cap in caps:
        if cap.cfg_type == CfgType.PCI and cap.cap_len >= VIRTIO_PCI_CFG_CAP_SIZE:
            return cap
    return None


def decode_tag(raw: bytes) -> str:
    """Decode a tag the way `virtio_fs_read_tag` does, keeping undecodable bytes reversible.

    The tag is the bytes before the first NUL within 36 bytes (all 36 when there is no NUL).
    It is host-chosen, untrusted text: bad UTF-8 must neither crash nor be lost, so it is decoded
    with surrogateescape and `tag.encode("utf-8", "surrogateescape")` gives the exact bytes back.
    """
    return raw[:TAG_SIZE].split(b"\0", 1)[0].decode("utf-8", errors="surrogateescape")


def check_tag(tag: str) -> None:
    """Refuse the tags the kernel driver refuses (its probe fails: the tag can never be mounted)."""
    if not tag:
        raise TagReadError("the device reports an empty tag, which the kernel refuses")
    if "\n" in tag:
        raise TagReadError("its tag contains a newline, which the kernel refuses")


# --- config-space I/O -----------------------------------------------------------------------


class ConfigFile:
    """`ConfigSpace` over an open file descriptor (the real sysfs config file)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def pread(self, size: int, offset: int) -> bytes:
        return os.pread(self._fd, size, offset)

    def pwrite(self, data: bytes, offset: int) -> int:
        return os.pwrite(self._fd, data, offset)


@contextmanager
def open_config_file(path: Path) -> Iterator[ConfigSpace]:
    """Open a config file read-write, holding an exclusive flock so two agents never interleave
    their window accesses (the window is one shared register set per device)."""
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        with suppress(OSError):  # advisory only; sysfs supports it, but never fail over it
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield ConfigFile(fd)
    finally:
        os.close(fd)


def _write(space: ConfigSpace, data: bytes, offset: int) -> None:
    try:
        written = space.pwrite(data, offset)
    except OSError as err:
        if err.errno in REFUSED_ERRNOS:
            raise WriteRefusedError(
                "writing PCI config space is refused (kernel lockdown?)"
            ) from err
        raise TagReadError(f"writing PCI config space failed: {err.strerror}") from err
    if written != len(data):
        raise TagReadError("writing PCI config space was cut short")


def _read(space: ConfigSpace, size: int, offset: int) -> bytes:
    try:
        return space.pread(size, offset)
    except OSError as err:
        raise TagReadError(f"reading PCI config space failed: {err.strerror}") from err


def read_window(space: ConfigSpace, window: VirtioPciCap, address: int, width: int) -> bytes:
    """Read `width` bytes at BAR offset `address` through the cfg_type 5 window.

    Only the window's offset and data fields are touched here: its bar and length were set once
    by `read_device_bytes`. The data come back in config-space (little-endian) byte order, which
    is BAR byte order, so no swapping is needed.
    """
    _write(space, struct.pack("<I", address), window.pos + CAP_OFFSET)
    data = _read(space, width, window.pos + CAP_DATA)
    if len(data) != width:
        raise TagReadError("its PCI config space is truncated (the access window is cut short)")
    return data


def read_device_bytes(
    space: ConfigSpace, window: VirtioPciCap, device_cfg: VirtioPciCap, size: int
) -> bytes:
    """Read the first `size` bytes of the device-specific config through the window.

    Accesses are 4 bytes wide (9 for the tag) when the config is 4-aligned, else 1 byte wide:
    the spec requires `offset` to be a multiple of `length`.
    """
    if device_cfg.offset + size > 0xFFFFFFFF:
        raise TagReadError("its device configuration lies beyond a 32-bit BAR offset")
    width = 4 if device_cfg.offset % 4 == 0 else 1
    _write(space, bytes([device_cfg.bar]), window.pos + CAP_BAR)
    _write(space, struct.pack("<I", width), window.pos + CAP_LENGTH)
    chunks = (
        read_window(space, window, device_cfg.offset + at, width) for at in range(0, size, width)
    )
    return b"".join(chunks)[:size]


def read_tag(space: ConfigSpace) -> str:
    """Find the two capabilities in the standard config space and read the tag through them."""
    config = _read(space, PCI_STD_CONFIG_SIZE, 0)
    caps = virtio_caps(config)
    if not caps:
        raise TagReadError(
            f"its PCI config space shows no virtio capabilities ({len(config)} bytes readable)"
        )
    window = find_pci_cfg(caps)
    if window is None:
        raise TagReadError("the device offers no virtio PCI configuration access capability")
    device_cfg = find_device_cfg(caps)
    if device_cfg is None:
        raise TagReadError("the device offers no usable device-specific configuration")
    tag = decode_tag(read_device_bytes(space, window, device_cfg, TAG_SIZE))
    check_tag(tag)
    return tag


# --- sysfs walk -----------------------------------------------------------------------------


# The walk below runs at every look at the shares (discovery.removing_devices) over every PCI
# function of the machine: plain strings and os calls, where a pathlib.Path per directory entry
# cost the daemon tens of milliseconds per uevent under emulation.
_VIRTIO_CHILD = re.compile(r"virtio\d+")


def _read_hex(path: str) -> int | None:
    try:
        with open(path, "rb") as attribute:
            return int(attribute.read(), 16)
    except (OSError, ValueError):
        return None


def _virtio_child(path: str) -> str | None:
    """The `virtioN` device the virtio_pci driver created under this PCI function, if bound."""
    try:
        names = sorted(os.listdir(path))
    except OSError:
        return None
    return next((name for name in names if _VIRTIO_CHILD.fullmatch(name)), None)


def virtio_fs_devices(root: Path) -> tuple[PciDevice, ...]:
    """Every PCI function under `<root>/sys/bus/pci/devices` that is a modern virtio-fs device."""
    bus = os.path.join(root, "sys/bus/pci/devices")
    try:
        names = sorted(os.listdir(bus))
    except OSError:
        return ()
    found = []
    for name in names:
        where = f"{bus}/{name}"
        if (
            _read_hex(f"{where}/vendor") == VIRTIO_VENDOR_ID
            and _read_hex(f"{where}/device") == VIRTIO_FS_PCI_DEVICE_ID
        ):
            found.append(PciDevice(name, Path(where), _virtio_child(where)))
    return tuple(found)


def _problem(device: PciDevice, reason: str) -> str:
    return (
        f"cannot read the tag of virtio-fs device {device.describe()}: {reason}: "
        "name the tag in the policy"
    )


def read_device_tag(device: PciDevice, open_config: ConfigOpener) -> str:
    """Open the device's config file and read its tag; every failure is a `TagReadError`."""
    try:
        with open_config(device.path / "config") as space:
            return read_tag(space)
    except OSError as err:
        if err.errno in REFUSED_ERRNOS:
            raise WriteRefusedError(
                "opening its PCI config space for writing is refused (vfs-agent must run as root)"
            ) from err
        raise TagReadError(f"cannot open its PCI config space: {err.strerror}") from err


def _duplicate_problems(shares: tuple[Share, ...]) -> tuple[str, ...]:
    seen: dict[str, list[str]] = {}
    for share in shares:
        seen.setdefault(share.tag, []).append(share.device or "an unbound device")
    return tuple(
        f"tag {tag!r} is offered by {len(names)} devices ({', '.join(names)}): "
        "the kernel binds only one of them"
        for tag, names in seen.items()
        if len(names) > 1
    )


def discover_pci(root: Path, open_config: ConfigOpener = open_config_file) -> PciDiscovery:
    """Read the tag of every virtio-fs PCI device under `root` through the config window.

    Devices whose tag cannot be read (lockdown, not root, odd capabilities) become problems,
    never exceptions: the caller falls back to the tags named in the policy.
    """
    shares: list[Share] = []
    problems: list[str] = []
    for device in virtio_fs_devices(root):
        try:
            tag = read_device_tag(device, open_config)
        except TagReadError as err:
            problems.append(_problem(device, str(err)))
            continue
        shares.append(Share(tag, Transport.VIRTIOFS, device.virtio, Source.PCI_CONFIG))
    found = tuple(shares)
    return PciDiscovery(found, tuple(problems) + _duplicate_problems(found))


# --- standalone checker ---------------------------------------------------------------------


def _share_json(share: Share) -> dict[str, str | None]:
    return {
        "tag": share.tag,
        "tag_hex": share.tag.encode("utf-8", "surrogateescape").hex(),
        "device": share.device,
        "source": str(share.source),
    }


def main(argv: list[str] | None = None) -> int:
    """`python3 -m vfs_agent.system.pci_config [ROOT]`: print the tags as JSON (exit 1 on
    problems)."""
    args = sys.argv[1:] if argv is None else argv
    result = discover_pci(Path(args[0] if args else "/"))
    report = {
        "shares": [_share_json(share) for share in result.shares],
        "problems": list(result.problems),
    }
    print(json.dumps(report, indent=2, sort_keys=True))
    return 1 if result.problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
