"""An emulated virtio-fs PCI function and a fake sysfs tree for discovery_pci tests.

`FakeVirtioPci` models what matters of QEMU's virtio-pci (hw/virtio/virtio-pci.c): a standard
256-byte config space with a capability list, the virtio vendor capabilities, and the
`VIRTIO_PCI_CAP_PCI_CFG` window whose `pci_cfg_data` read performs a BAR access at the
`bar`/`offset`/`length` written into the capability. The BAR holds the device-specific config
(`tag[36]`, `le32 num_request_queues`) and an ISR byte whose read has a side effect, so tests can
prove the reader never touches anything but the window.

Unlike QEMU (which ignores `cap.bar`), the fake honours `bar`, alignment and lengths 1/2/4 as the
spec requires, so a reader that cuts corners gets garbage here.
"""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from vfs_agent.system.pci_config import ConfigSpace

COMMON, NOTIFY, ISR, DEVICE, PCI_CFG = 1, 2, 3, 4, 5
BAR_SIZE = 0x4000
ISR_OFFSET = 0x1000
DEVICE_CFG_OFFSET = 0x2000
PCI_CFG_POS = 0x98


@dataclass
class FakeVirtioPci:
    """Config space and BAR of one virtio PCI function (virtio-fs unless told otherwise)."""

    tag: bytes = b"media_tag"
    vendor: int = 0x1AF4
    device: int = 0x105A
    bar: int = 4
    device_cfg_offset: int = DEVICE_CFG_OFFSET
    device_cfg_length: int = 0x1000
    with_pci_cfg: bool = True
    cap_loop: bool = False
    config_size: int = 0x100
    write_errno: int | None = None
    config: bytearray = field(init=False)
    bar_mem: bytearray = field(init=False)
    window_reads: int = field(default=0, init=False)
    isr_reads: int = field(default=0, init=False)
    foreign_writes: list[int] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self.bar_mem = bytearray(BAR_SIZE)
        raw = self.tag[:36].ljust(36, b"\0") + struct.pack("<I", 1)
        raw = raw[: max(0, BAR_SIZE - self.device_cfg_offset)]  # the BAR never grows
        self.bar_mem[self.device_cfg_offset : self.device_cfg_offset + len(raw)] = raw
        self.config = self._build_config()

    def _build_config(self) -> bytearray:
        cfg = bytearray(0x100)
        struct.pack_into("<HH", cfg, 0, self.vendor, self.device)
        cfg[0x06] = 0x10  # status: capability list present
        cfg[0x34] = 0x40
        caps: list[tuple[int, bytes]] = [
            (0x40, bytes([0x11, 0, 0x0B, 0x80]) + bytes(8)),  # MSI-X
            (0x50, self._virtio_cap(16, COMMON, 0, 0x38)),
            (0x60, self._virtio_cap(16, ISR, ISR_OFFSET, 1)),
            (0x70, self._virtio_cap(16, DEVICE, self.device_cfg_offset, self.device_cfg_length)),
            (0x80, self._virtio_cap(20, NOTIFY, 0x3000, 0x1000) + struct.pack("<I", 4)),
        ]
        if self.with_pci_cfg:
            caps.append((PCI_CFG_POS, self._virtio_cap(20, PCI_CFG, 0, 0, bar=0) + bytes(4)))
        for index, (pos, body) in enumerate(caps):
            cfg[pos : pos + len(body)] = body
            last = index + 1 == len(caps)
            cfg[pos + 1] = 0x40 if last and self.cap_loop else 0 if last else caps[index + 1][0]
        return cfg

    def _virtio_cap(
        self, cap_len: int, cfg_type: int, offset: int, length: int, bar: int | None = None
    ) -> bytes:
        chosen = self.bar if bar is None else bar
        return struct.pack("<BBBBBBxxII", 0x09, 0, cap_len, cfg_type, chosen, 0, offset, length)

    # --- ConfigSpace ---

    def pread(self, size: int, offset: int) -> bytes:
        end = min(offset + size, self.config_size)
        if self.with_pci_cfg and offset < PCI_CFG_POS + 20 and end > PCI_CFG_POS + 16:
            self._window_access()
        return bytes(self.config[offset:end]) if offset < end else b""

    def pwrite(self, data: bytes, offset: int) -> int:
        if self.write_errno is not None:
            raise OSError(self.write_errno, os.strerror(self.write_errno))
        for at, value in enumerate(data, start=offset):
            if self._writable(at):
                self.config[at] = value
            else:
                self.foreign_writes.append(at)
        return len(data)

    def _writable(self, at: int) -> bool:
        """Only the window's bar, offset and length are driver-writable (QEMU's wmask)."""
        rel = at - PCI_CFG_POS
        return self.with_pci_cfg and (rel == 4 or 8 <= rel < 16)

    def _window_access(self) -> None:
        bar, offset, length = struct.unpack_from("<B3xII", self.config, PCI_CFG_POS + 4)
        if length not in (1, 2, 4):
            return
        self.window_reads += 1
        data = bytes(length)
        if bar == self.bar and offset % length == 0 and offset + length <= BAR_SIZE:
            data = bytes(self.bar_mem[offset : offset + length])
            if offset <= ISR_OFFSET < offset + length:
                self.isr_reads += 1
        self.config[PCI_CFG_POS + 16 : PCI_CFG_POS + 16 + length] = data

    # --- sysfs ---

    def install(self, root: Path, address: str = "0000:00:04.0", virtio: str | None = None) -> Path:
        """Create the device's sysfs directory the way Linux lays it out, and return it."""
        real = root / "sys/devices/pci0000:00" / address
        real.mkdir(parents=True)
        (real / "vendor").write_text(f"0x{self.vendor:04x}\n")
        (real / "device").write_text(f"0x{self.device:04x}\n")
        (real / "config").write_bytes(bytes(self.config[: self.config_size]))
        if virtio:
            (real / virtio).mkdir()
        bus = root / "sys/bus/pci/devices"
        bus.mkdir(parents=True, exist_ok=True)
        (bus / address).symlink_to(Path("../../../devices/pci0000:00") / address)
        return bus / address


@dataclass
class FakePciBus:
    """Hands out the emulated config space of each installed device, keyed by PCI address."""

    devices: dict[str, FakeVirtioPci] = field(default_factory=dict)
    open_errno: int | None = None

    def add(
        self, root: Path, device: FakeVirtioPci, address: str, virtio: str | None = None
    ) -> FakeVirtioPci:
        device.install(root, address, virtio)
        self.devices[address] = device
        return device

    @contextmanager
    def open(self, path: Path) -> Iterator[ConfigSpace]:
        if self.open_errno is not None:
            raise PermissionError(self.open_errno, os.strerror(self.open_errno), str(path))
        if path.name != "config" or path.parent.name not in self.devices:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(path))
        yield self.devices[path.parent.name]
