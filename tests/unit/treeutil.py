"""Small helpers that build fake system roots for CLI tests (`vfs-agent --root R ...`).

A tree holds only what the test puts there: /sys/fs/virtiofs/<n>/tag files, the policy file and
its drop-ins (with the modes the policy loader insists on), and an empty mount table.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from faketree import FakeTree, write_policy

from vfs_agent.core.escape import tag_bytes

MAIN_POLICY = "etc/vfs-agent/policy.yaml"
DROPIN_DIR = "etc/vfs-agent/policy.d"


def raw_tag(tag: str | bytes) -> bytes:
    """The bytes of a tag as the kernel holds them (str tags may carry surrogateescape bytes)."""
    return tag if isinstance(tag, bytes) else tag_bytes(tag)


def set_tags(root: Path, tags: Iterable[str | bytes]) -> None:
    """Make /sys/fs/virtiofs list exactly `tags` (as the kernel does: one dir per device, the tag
    file ending in a newline)."""
    base = root / "sys/fs/virtiofs"
    if base.exists():
        for entry in base.iterdir():
            (entry / "tag").unlink()
            entry.rmdir()
    base.mkdir(parents=True, exist_ok=True)
    for n, tag in enumerate(tags):
        (base / str(n)).mkdir()
        (base / str(n) / "tag").write_bytes(raw_tag(tag) + b"\n")


def make_tree(
    tmp_path: Path,
    *,
    tags: Iterable[str | bytes] = (),
    policy: str | None = None,
    dropins: Mapping[str, str] | None = None,
    name: str = "root",
) -> Path:
    """A fake system root under tmp_path/name with these virtio-fs tags, this main policy and
    these policy.d drop-ins (file name -> text). Returns the root."""
    root = FakeTree(tmp_path / name).root  # empty mount table, /etc/vfs-agent 0755
    set_tags(root, tags)
    if policy is not None:
        write_policy(root / MAIN_POLICY, policy)
    for file_name, text in (dropins or {}).items():
        write_policy(root / DROPIN_DIR / file_name, text)
    return root


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
