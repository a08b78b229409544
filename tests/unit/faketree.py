"""A fake system root for unit tests: sysfs shares, mountinfo, kernel files, policy files."""

from __future__ import annotations

import os
from pathlib import Path

from vfs_agent.core.escape import tag_bytes


class FakeTree:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._next_index = 1
        self._next_device = 0
        for d in ("proc/self", "sys/bus/virtio/devices", "etc/vfs-agent"):
            (root / d).mkdir(parents=True, exist_ok=True)
        os.chmod(root / "etc/vfs-agent", 0o755)
        self.write("proc/self/mountinfo", "")

    def write(self, inner: str, text: str | bytes, mode: int = 0o644) -> Path:
        path = self.root / inner
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text, encoding="utf-8", errors="surrogateescape")
        os.chmod(path, mode)
        return path

    def _device(self, device_id: int) -> str:
        name = f"virtio{self._next_device}"
        self._next_device += 1
        self.write(f"sys/bus/virtio/devices/{name}/device", f"0x{device_id:04x}\n")
        return name

    def virtiofs(self, tag: str | bytes, *, sysfs: bool = True, index: int | None = None) -> str:
        """Attach a virtio-fs device; with sysfs, list its tag under /sys/fs/virtiofs."""
        device = self._device(0x1A)
        if sysfs:
            n = index if index is not None else self._next_index
            self._next_index = max(self._next_index, n) + 1
            raw = tag if isinstance(tag, bytes) else tag_bytes(tag)
            self.write(f"sys/fs/virtiofs/{n}/tag", raw + b"\n")
            link = self.root / f"sys/fs/virtiofs/{n}/device"
            link.symlink_to(f"../../../devices/pci0000:00/0000:00:0{n}.0/{device}")
        return device

    def ninep(self, tag: str) -> str:
        device = self._device(0x09)
        self.write(f"sys/bus/virtio/devices/{device}/mount_tag", tag_bytes(tag) + b"\0")
        return device

    def mounted(self, *entries: tuple[str, str, str]) -> None:
        """(fstype, source, target) entries, written as real mountinfo lines."""
        lines = ["22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda rw"]
        for i, (fstype, source, target) in enumerate(entries, start=100):
            lines.append(
                f"{i} 22 0:{i} / {_esc(target)} rw,nosuid,nodev,relatime shared:{i} - "
                f"{fstype} {_esc(source)} rw"
            )
        self.write("proc/self/mountinfo", "\n".join(lines) + "\n")

    def policy(self, text: str, name: str = "policy.yaml") -> Path:
        """A policy file (or policy.d/NAME) with the modes the loader insists on."""
        return write_policy(self.root / "etc/vfs-agent" / name, text)

    def kernel(
        self,
        release: str,
        *,
        filesystems: str = "",
        modules: str = "",
        builtin: str = "",
        dep: str = "",
        config: str | None = None,
    ) -> None:
        self.write("proc/sys/kernel/osrelease", release + "\n")
        self.write("proc/filesystems", filesystems)
        self.write("proc/modules", modules)
        self.write(f"lib/modules/{release}/modules.builtin", builtin)
        self.write(f"lib/modules/{release}/modules.dep", dep)
        if config is not None:
            self.write(f"boot/config-{release}", config)


def write_policy(path: Path, text: str, *, mode: int = 0o644, dir_mode: int = 0o755) -> Path:
    """Write a policy file with sshd-style modes: not group/world-writable, nor its directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, dir_mode)
    path.write_text(text, encoding="utf-8")
    os.chmod(path, mode)
    return path


def _esc(text: str) -> str:
    return "".join(f"\\{ord(c):03o}" if c in " \t\n\\" else c for c in text)
