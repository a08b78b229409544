"""The fake system root for unit tests: sysfs shares, mountinfo, kernel files, policy files,
host layers; and the helpers that look at one (snapshot) or run the generator on one.

`tests/unit/conftest.py` hands a fresh one to every test that asks for `fake_tree`. PCI
configuration space (older kernels) is built by fake_pci.py, a different job.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterable, Mapping
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

    def set_tags(self, tags: Iterable[str | bytes]) -> None:
        """Make /sys/fs/virtiofs list exactly `tags` (as the kernel does: one directory per
        device, the tag file ending in a newline); the virtio devices are left as they are."""
        base = self.root / "sys/fs/virtiofs"
        if base.exists():
            for entry in base.iterdir():
                for child in entry.iterdir():
                    child.unlink()
                entry.rmdir()
        base.mkdir(parents=True, exist_ok=True)
        for n, tag in enumerate(tags):
            (base / str(n)).mkdir()
            (base / str(n) / "tag").write_bytes(raw_tag(tag) + b"\n")

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


def make_tree(
    tmp_path: Path,
    *,
    tags: Iterable[str | bytes] = (),
    policy: str | None = None,
    dropins: Mapping[str, str] | None = None,
    name: str = "root",
) -> Path:
    """A fake root under tmp_path/name listing these virtio-fs tags in sysfs, with this main
    policy and these policy.d drop-ins (file name -> text). Returns the root."""
    tree = FakeTree(tmp_path / name)
    tree.set_tags(tags)
    if policy is not None:
        tree.policy(policy)
    for file_name, text in (dropins or {}).items():
        tree.policy(text, f"policy.d/{file_name}")
    return tree.root


def raw_tag(tag: str | bytes) -> bytes:
    """The bytes of a tag as the kernel holds them (str tags may carry surrogateescape bytes)."""
    return tag if isinstance(tag, bytes) else tag_bytes(tag)


def snapshot(root: Path) -> dict[str, tuple[int, bytes | str | None]]:
    """Every entry below root: relative path -> (mode, content or link target), so a test can
    prove that a command changed nothing."""
    out: dict[str, tuple[int, bytes | str | None]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for entry in [*dirnames, *filenames]:
            path = Path(dirpath) / entry
            st = path.lstat()
            if path.is_symlink():
                content: bytes | str | None = os.readlink(path)
            elif path.is_file():
                content = path.read_bytes()
            else:
                content = None
            out[str(path.relative_to(root))] = (st.st_mode, content)
    return out


def run_generator(
    root: Path,
    out: Path,
    *extra: str,
    importtime: bool = False,
    env: dict[str, str] | None = None,
    kmsg: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """The generator's real entry point in a process of its own, as systemd runs it, on the
    fake root (VFS_AGENT_ROOT); its kernel log goes to `kmsg` (default: root/kmsg)."""
    env = {
        **{k: v for k, v in os.environ.items() if k != "CREDENTIALS_DIRECTORY"},
        "VFS_AGENT_ROOT": str(root),
        "VFS_AGENT_KMSG": str(kmsg or root / "kmsg"),
        **(env or {}),
    }
    flags = ["-X", "importtime"] if importtime else []
    code = "import sys; from vfs_agent.systemd.replay import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run(
        [sys.executable, *flags, "-c", code, str(out), *extra],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def write_policy(path: Path, text: str, *, mode: int = 0o644, dir_mode: int = 0o755) -> Path:
    """Write a policy file with sshd-style modes: not group/world-writable, nor its directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, dir_mode)
    path.write_text(text, encoding="utf-8")
    os.chmod(path, mode)
    return path


def _esc(text: str) -> str:
    return "".join(f"\\{ord(c):03o}" if c in " \t\n\\" else c for c in text)
