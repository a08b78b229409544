"""The systemd generator, run as systemd runs it: a process with one or three output
directories. What it writes for each kind of policy and share is in the golden trees
(tests/generator/, test_generator_golden.py); this is how it runs."""

from pathlib import Path

import pytest
from faketree import FakeTree, run_generator

from vfs_agent.policy.compiled import CACHE
from vfs_agent.policy.load import load_policy
from vfs_agent.system.sysroot import SysRoot
from vfs_agent.systemd.generator import main
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


@pytest.fixture
def tree(fake_tree: FakeTree) -> FakeTree:
    fake_tree.policy(POLICY)
    fake_tree.virtiofs("media_tag")
    fake_tree.virtiofs("data-1")
    fake_tree.write(f"usr/lib/udev/rules.d/{RULE_NAME}", "# installed\n")
    return fake_tree


def test_three_directories_write_into_the_normal_one(tree: FakeTree, tmp_path: Path):
    out, early, late = tmp_path / "normal", tmp_path / "early", tmp_path / "late"
    done = run_generator(tree.root, out, str(early), str(late))
    assert done.returncode == 0, done.stderr
    assert len(list(out.glob("*.mount"))) == 4
    assert not early.exists() and not late.exists()
    assert "generated 4 mount unit(s)" in (tree.root / "kmsg").read_text()


@pytest.mark.parametrize("argv", [[], ["a", "b"], ["a", "b", "c", "d"]], ids=len)
def test_a_wrong_number_of_directories_is_a_usage_error(
    argv: list[str], capsys: pytest.CaptureFixture[str]
):
    assert main(argv) == 1
    assert "usage: vfs-agent-generator NORMAL_DIR [EARLY_DIR LATE_DIR]" in capsys.readouterr().err


def test_compiled_policy_keeps_pydantic_off_the_boot_path(tree: FakeTree, tmp_path: Path):
    load_policy(SysRoot(tree.root), save_compiled=True)  # as mount-all and the daemon do
    assert (tree.root / CACHE.lstrip("/")).exists()
    fast = run_generator(tree.root, tmp_path / "a", importtime=True)
    assert fast.returncode == 0
    for heavy in ("pydantic", "click", "pyudev", "yaml"):
        assert f" {heavy}\n" not in fast.stderr and f" {heavy}." not in fast.stderr, heavy
    # Any change to a policy file makes the cache stale: the full loader runs and sees it.
    tree.policy(POLICY.replace("/mnt/media", "/mnt/media2"))
    slow = run_generator(tree.root, tmp_path / "b", importtime=True)
    assert " pydantic" in slow.stderr
    assert (tmp_path / "b/mnt-media2.mount").exists()
