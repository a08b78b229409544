"""The systemd generator, run as systemd runs it: a process with an output directory."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from faketree import FakeTree

from vfs_agent.policy.compiled import CACHE
from vfs_agent.policy.load import load_policy
from vfs_agent.system.sysroot import SysRoot
from vfs_agent.systemd.installed import RULE_NAME

POLICY = """\
version: 1
defaults: {device_timeout: 7}
mounts:
  - {tag: media_tag, path: /mnt/media, required: true}
  - {tag: "weird tag#1"}
  - {tag: absent_tag, path: /srv/absent}
  - {tag: "data-*", path: "/srv/{tag}"}
"""


def run_generator(
    tree: FakeTree,
    out: Path,
    *extra: str,
    importtime: bool = False,
    env: dict[str, str] | None = None,
):
    env = {
        **{k: v for k, v in os.environ.items() if k != "CREDENTIALS_DIRECTORY"},
        "VFS_AGENT_ROOT": str(tree.root),
        "VFS_AGENT_KMSG": str(tree.root / "kmsg"),
        **(env or {}),
    }
    flags = ["-X", "importtime"] if importtime else []
    return subprocess.run(
        [
            sys.executable,
            *flags,
            "-c",
            "import sys; from vfs_agent.systemd.generator import main;"
            " sys.exit(main(sys.argv[1:]))",
            str(out),
            *extra,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def tree(tmp_path: Path) -> FakeTree:
    tree = FakeTree(tmp_path / "root")
    tree.policy(POLICY)
    tree.virtiofs("media_tag")
    tree.virtiofs("data-1")
    tree.write(f"usr/lib/udev/rules.d/{RULE_NAME}", "# installed\n")
    return tree


def test_units_links_and_device_timeouts(tree: FakeTree, tmp_path: Path):
    out = tmp_path / "normal"
    done = run_generator(tree, out, str(tmp_path / "early"), str(tmp_path / "late"))
    assert done.returncode == 0, done.stderr
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if not p.is_dir())
    dev = "dev-virtiofs-by\\x2dtag-"
    assert files == sorted(
        [
            "mnt-media.mount",
            "mnt-virtiofs-weird\\x2520tag\\x25231.mount",
            "srv-absent.mount",
            "srv-data\\x2d1.mount",
            "local-fs.target.wants/mnt-media.mount",  # the only required share
            f"{dev}media_tag.device.wants/mnt-media.mount",
            f"{dev}media_tag.device.d/50-vfs-agent-timeout.conf",
            f"{dev}weird\\x2520tag\\x25231.device.wants/mnt-virtiofs-weird\\x2520tag\\x25231.mount",
            f"{dev}weird\\x2520tag\\x25231.device.d/50-vfs-agent-timeout.conf",
            f"{dev}absent_tag.device.wants/srv-absent.mount",
            f"{dev}absent_tag.device.d/50-vfs-agent-timeout.conf",
            f"{dev}data\\x2d1.device.wants/srv-data\\x2d1.mount",
            f"{dev}data\\x2d1.device.d/50-vfs-agent-timeout.conf",
            # every virtio-fs mount waits for its host to answer first (system/answer.py)
            "vfs-agent-answer@mnt-media.service",
            "vfs-agent-answer@mnt-virtiofs-weird\\x2520tag\\x25231.service",
            "vfs-agent-answer@srv-absent.service",
            "vfs-agent-answer@srv-data\\x2d1.service",
        ]
    )
    media = (out / "mnt-media.mount").read_text()
    answer = "vfs-agent-answer@mnt-media.service"
    assert (
        f"Requires={answer}\nAfter={answer}\n"
        f"BindsTo={dev}media_tag.device\nAfter={dev}media_tag.device\nBefore=local-fs.target\n"
        in media
    )
    waits = (out / answer).read_text()
    assert f"BindsTo={dev}media_tag.device\nAfter={dev}media_tag.device\n" in waits
    assert "-I -m vfs_agent.system.answer 6d656469615f746167 30\n" in waits  # the tag in hex; 30 s
    assert "Options=nosuid,nodev\n" in media
    absent = (out / "srv-absent.mount").read_text()
    assert "Before=local-fs.target" not in absent and "Options=nosuid,nodev,nofail\n" in absent
    assert (
        "JobRunningTimeoutSec=7s"
        in (out / f"{dev}absent_tag.device.d/50-vfs-agent-timeout.conf").read_text()
    )
    assert os.readlink(out / f"{dev}media_tag.device.wants/mnt-media.mount") == "../mnt-media.mount"
    assert "generated 4 mount unit(s)" in (tree.root / "kmsg").read_text()


def test_invalid_policy_never_fails_and_writes_nothing(tree: FakeTree, tmp_path: Path):
    tree.policy("version: 1\nmounts:\n  - {tag: media_tag, path: relative}\n")
    out = tmp_path / "normal"
    done = run_generator(tree, out)
    assert done.returncode == 0
    assert not out.exists() or not any(out.iterdir())
    log = (tree.root / "kmsg").read_text()
    assert "<3>vfs-agent-generator: invalid policy: /etc/vfs-agent/policy.yaml:3:" in log
    assert "mounts[0].path" in log and "no mount units generated" in log


def test_compiled_policy_keeps_pydantic_off_the_boot_path(tree: FakeTree, tmp_path: Path):
    load_policy(SysRoot(tree.root), save_compiled=True)  # as mount-all and the daemon do
    assert (tree.root / CACHE.lstrip("/")).exists()
    fast = run_generator(tree, tmp_path / "a", importtime=True)
    assert fast.returncode == 0
    for heavy in ("pydantic", "click", "pyudev", "yaml"):
        assert f" {heavy}\n" not in fast.stderr and f" {heavy}." not in fast.stderr, heavy
    # Any change to a policy file makes the cache stale: the full loader runs and sees it.
    tree.policy(POLICY.replace("/mnt/media", "/mnt/media2"))
    slow = run_generator(tree, tmp_path / "b", importtime=True)
    assert " pydantic" in slow.stderr
    assert (tmp_path / "b/mnt-media2.mount").exists()


def test_without_the_udev_rule_units_do_not_bind_to_devices(tree: FakeTree, tmp_path: Path):
    (tree.root / f"usr/lib/udev/rules.d/{RULE_NAME}").unlink()
    out = tmp_path / "normal"
    assert run_generator(tree, out).returncode == 0
    assert "BindsTo" not in (out / "mnt-media.mount").read_text()
    assert not list(out.glob("*.device.wants"))


def test_without_device_timeout_systemd_waits_its_own_default(tree: FakeTree, tmp_path: Path):
    """No policy value: no JobRunningTimeoutSec drop-in, so systemd's DefaultDeviceTimeoutSec
    (90 s) applies and a slow udev never fails a present required share."""
    tree.policy("version: 1\nmounts:\n  - {tag: media_tag, path: /mnt/media, required: true}\n")
    out = tmp_path / "normal"
    done = run_generator(tree, out)
    assert done.returncode == 0, done.stderr
    assert (out / "mnt-media.mount").is_file()
    assert (out / "local-fs.target.wants/mnt-media.mount").is_symlink()
    assert not list(out.rglob("*timeout*"))
