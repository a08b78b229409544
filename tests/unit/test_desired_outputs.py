"""`generate systemd|fstab` write what the policy and the attached shares ask for, whatever is
mounted right now, exactly as the boot-time generator does (core/desired.py).

Planning against the live mount table made a policy path that held another filesystem (a bind
mount, a tmpfs) lose its unit: `generate systemd --output DIR` wrote none, exited 0, and its
directory sync deleted the unit that was there; `generate fstab` dropped the line the same way.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from clirunner import cli_runner
from faketree import FakeTree, run_generator

from vfs_agent.commands.cli import main
from vfs_agent.systemd.replay import MEMO_NAME

POLICY = """\
version: 1
defaults: {unknown: ignore}
mounts:
  - {tag: media_tag, path: /mnt/media, required: true}
  - {tag: data, path: /srv/data}
  - {tag: private, ignore: true}
  - {tag: twin-a, path: /srv/twin}
  - {tag: twin-b, path: /srv/twin}
  - {tag: "bad\\\\", path: /srv/bad}
"""
# What is mounted now, on the policy's paths: nothing of it may change the outputs.
BUSY = [
    ("tmpfs", "tmpfs", "/mnt/media"),  # another filesystem on a policy path
    ("ext4", "/dev/vdb", "/srv/data"),  # a bind mount of a disk shows as its fstype
    ("virtiofs", "stray", "/srv/stray"),  # a share mounted by hand elsewhere
]


def invoke(tree: FakeTree, *args: str):
    return cli_runner().invoke(main, ["--root", str(tree.root), *args])


@pytest.fixture
def tree(fake_tree: FakeTree) -> FakeTree:
    fake_tree.policy(POLICY)
    for tag in ("media_tag", "data", "private", "twin-a", "twin-b", "bad\\", "unnamed"):
        fake_tree.virtiofs(tag)
    return fake_tree


def tree_files(directory: Path) -> dict[str, str]:
    out = {}
    for path in sorted(directory.rglob("*")):
        rel = str(path.relative_to(directory))
        if path.is_symlink():
            out[rel] = "-> " + os.readlink(path)
        elif path.is_file():
            out[rel] = path.read_text()
    return out


def test_a_busy_policy_path_keeps_its_unit(tree: FakeTree, tmp_path: Path):
    out = tmp_path / "units"
    first = invoke(tree, "generate", "systemd", "--output", str(out))
    assert first.exit_code == 0, first.output
    before = tree_files(out)
    assert "mnt-media.mount" in before and "srv-data.mount" in before

    tree.mounted(*BUSY)
    again = invoke(tree, "generate", "systemd", "--output", str(out))

    assert again.exit_code == 0, again.output
    assert "removed" not in again.stdout
    assert tree_files(out) == before
    printed = invoke(tree, "generate", "systemd")
    assert "# mnt-media.mount\n" in printed.stdout and "# srv-data.mount\n" in printed.stdout


def test_a_busy_policy_path_keeps_its_fstab_line(tree: FakeTree, tmp_path: Path):
    fstab = tmp_path / "fstab"
    fstab.write_text("/dev/vda / ext4 defaults 0 1\n")
    assert invoke(tree, "generate", "fstab", "--output", str(fstab)).exit_code == 0
    before = fstab.read_text()
    assert "media_tag /mnt/media virtiofs" in before and "data /srv/data virtiofs" in before

    tree.mounted(*BUSY)
    result = invoke(tree, "generate", "fstab", "--output", str(fstab))

    assert result.exit_code == 0, result.output
    assert fstab.read_text() == before


def test_every_share_without_a_unit_is_named_with_why(tree: FakeTree):
    tree.mounted(*BUSY)
    for kind in ("systemd", "fstab"):
        result = invoke(tree, "generate", kind)
        assert result.exit_code == 0, result.output
        skipped = sorted(line for line in result.stderr.splitlines() if "skipped" in line)
        assert skipped == [
            "vfs-agent: skipped 'bad\\\\': the tag 'bad\\\\' ends with a backslash, which systemd"
            " reads as a line continuation",
            "vfs-agent: skipped 'private': ignored by rule 3 ('private') in"
            " /etc/vfs-agent/policy.yaml",
            "vfs-agent: skipped 'twin-a': /srv/twin is claimed by 'twin-a', 'twin-b'",
            "vfs-agent: skipped 'twin-b': /srv/twin is claimed by 'twin-a', 'twin-b'",
            "vfs-agent: skipped 'unnamed': no rule names this tag and defaults.unknown is"
            " 'ignore' (/etc/vfs-agent/policy.yaml)",
        ], kind


def test_generate_systemd_writes_what_the_generator_writes(tree: FakeTree, tmp_path: Path):
    """One computation for both: the same files, names and contents, but for the header's
    "by vfs-agent-generator"."""
    tree.mounted(*BUSY)
    by_command = tmp_path / "command"
    assert invoke(tree, "generate", "systemd", "--output", str(by_command)).exit_code == 0
    by_generator = tmp_path / "generator"
    done = run_generator(tree.root, by_generator, kmsg=Path(os.devnull))
    assert done.returncode == 0, done.stderr
    (by_generator / MEMO_NAME).unlink()  # the memo of its run (systemd/replay.py), no unit
    generated = {
        name: text.replace(" by vfs-agent-generator;", ";", 1)
        for name, text in tree_files(by_generator).items()
    }
    assert generated == tree_files(by_command)
    assert "mnt-media.mount" in generated
