"""The udev helper (systemd/vfs-agent-tag-id.in), run as udev runs it: /bin/sh with the device
path, no Python for a share listed in /sys/fs/virtiofs. Its alias must be exactly
encode_tag(read_tag(tag file)), as the Python helper (vfs_agent.systemd.udev_tag) computes it."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from faketree import FakeTree
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vfs_agent.commands.install import Layout
from vfs_agent.core.escape import encode_tag
from vfs_agent.system.discovery import read_tag
from vfs_agent.system.sysroot import SysRoot
from vfs_agent.systemd.udev_tag import tag_for_device


def render_helper(directory: Path, python: str = sys.executable) -> Path:
    script = directory / "vfs-agent-tag-id"
    script.write_text(Layout("/usr", python, "/usr/bin").render("vfs-agent-tag-id.in"))
    script.chmod(0o755)
    return script


def share(root: Path, raw: bytes, n: int = 1, device: str = "virtio0") -> str:
    """A /sys/fs/virtiofs/N entry with these exact tag bytes; returns the device's DEVPATH."""
    devpath = f"/devices/pci0000:00/0000:00:0{n}.0/{device}"
    (root / f"sys{devpath}").mkdir(parents=True, exist_ok=True)
    entry = root / f"sys/fs/virtiofs/{n}"
    entry.mkdir(parents=True, exist_ok=True)
    (entry / "tag").write_bytes(raw)
    (entry / "device").symlink_to(f"../../../devices/pci0000:00/0000:00:0{n}.0/{device}")
    return devpath


def run(script: Path, root: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    env = {"VFS_AGENT_ROOT": str(root)}  # udev passes the event's properties, not PATH
    return subprocess.run(["/bin/sh", str(script), *args], env=env, capture_output=True)


def expected(raw: bytes) -> bytes | None:
    tag = read_tag(raw)
    return f"VFS_AGENT_TAG_ALIAS={encode_tag(tag)}\n".encode() if tag else None


@pytest.fixture
def helper(tmp_path: Path) -> Path:
    return render_helper(tmp_path)


@pytest.mark.parametrize(
    "raw",
    [
        b"media_tag\n",
        b"weird tag#1\n",
        b"../escape\n",
        b".hidden\n",
        b"a.b-c_D9\n",
        b"quote'\"back\\slash\ttab\n",
        b"per%cent\n",
        "caf\u00e9-\u2603\n".encode(),
        b"\xff\xfe not utf-8\n",
        b"line\nbreak\n",
        b"no-newline",
        b"padded" + bytes(30),
        b"two-newlines\n\n",
        b"x" * 36 + b"\n",
    ],
)
def test_alias_is_the_encoded_tag(helper: Path, tmp_path: Path, raw: bytes):
    root = FakeTree(tmp_path / "root").root
    devpath = share(root, raw)
    done = run(helper, root, devpath)
    assert done.returncode == 0, done.stderr
    assert done.stdout == expected(raw)
    alias = done.stdout.decode().split("=", 1)[1].rstrip("\n")
    assert not any(c in alias for c in " \t\n\"'\\")
    assert tag_for_device(SysRoot(root), devpath) == read_tag(raw)  # the Python helper agrees


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(raw=st.binary(min_size=0, max_size=37))
def test_alias_matches_encode_tag_for_any_bytes(helper: Path, tmp_path_factory, raw: bytes):
    root = tmp_path_factory.mktemp("tree")
    devpath = share(root, raw)
    done = run(helper, root, devpath)
    want = expected(raw)
    if want is None:
        assert (done.returncode, done.stdout) == (1, b"")
    else:
        assert (done.returncode, done.stdout) == (0, want)


def test_the_device_of_the_event_picks_the_entry(helper: Path, tmp_path: Path):
    root = FakeTree(tmp_path / "root").root
    share(root, b"first\n", 1, "virtio0")
    second = share(root, b"second\n", 4, "virtio3")
    assert run(helper, root, second).stdout == b"VFS_AGENT_TAG_ALIAS=second\n"
    assert run(helper, root, "/devices/pci0000:00/0000:00:09.0/virtio9").returncode == 1


def test_empty_tag_gives_no_alias(helper: Path, tmp_path: Path):
    root = FakeTree(tmp_path / "root").root
    devpath = share(root, b"\n")
    assert (run(helper, root, devpath).returncode, run(helper, root, devpath).stdout) == (1, b"")


def test_without_sysfs_entries_it_hands_over_to_the_python_helper(tmp_path: Path):
    """Older kernels: no /sys/fs/virtiofs; the Python helper reads the PCI config window."""
    marker = tmp_path / "python-ran"
    wrapper = tmp_path / "python"
    wrapper.write_text(f'#!/bin/sh\n: > {marker}\nexec {sys.executable} "$@"\n')
    wrapper.chmod(0o755)
    script = render_helper(tmp_path, str(wrapper))
    root = FakeTree(tmp_path / "root").root  # no PCI devices either
    done = run(script, root, "/devices/pci0000:00/0000:00:04.0/virtio0")
    assert marker.exists()
    assert (done.returncode, done.stdout) == (1, b"")


def test_a_listed_share_needs_no_python(tmp_path: Path):
    marker = tmp_path / "python-ran"
    wrapper = tmp_path / "python"
    wrapper.write_text(f'#!/bin/sh\n: > {marker}\nexec {sys.executable} "$@"\n')
    wrapper.chmod(0o755)
    script = render_helper(tmp_path, str(wrapper))
    root = FakeTree(tmp_path / "root").root
    devpath = share(root, b"media_tag\n")
    assert run(script, root, devpath).stdout == b"VFS_AGENT_TAG_ALIAS=media_tag\n"
    assert not marker.exists()


def test_usage(helper: Path, tmp_path: Path):
    done = run(helper, tmp_path)
    assert done.returncode == 2 and b"usage" in done.stderr
    assert os.access(helper, os.X_OK)
