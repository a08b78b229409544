"""Loading the policy only reads; compiling it is an explicit step (compiled.compile_policy)
that the commands acting on the policy take, and only they."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from faketree import FakeTree
from test_apply import RecordingKernel

from vfs_agent.commands import operations as ops
from vfs_agent.commands.cli import main
from vfs_agent.commands.context import Context
from vfs_agent.execute.apply import Executors
from vfs_agent.policy import compiled as policy_cache
from vfs_agent.policy.compiled import CACHE, compile_policy
from vfs_agent.policy.load import load_policy, read_policy
from vfs_agent.system.sysroot import SysRoot

POLICY = "version: 1\nmounts:\n  - {tag: media_tag, path: /mnt/media, options: [ro]}\n"
CREDENTIAL = "version: 1\nmounts:\n  - {tag: other, path: /mnt/from-host}\n"


@pytest.fixture
def tree(tmp_path: Path) -> FakeTree:
    """Every kind of layer: the main file, a drop-in, the credential, the command line."""
    tree = FakeTree(tmp_path / "root")
    tree.virtiofs("media_tag")
    tree.policy(POLICY)
    tree.policy("version: 1\ndefaults: {unknown: ignore}\n", "policy.d/10-local.yaml")
    tree.write("run/credentials/@system/vfs-agent.policy", CREDENTIAL, mode=0o400)
    tree.write("proc/cmdline", "quiet vfs_agent.mount=third:/mnt/third\n")
    (tree.root / "var/lib").mkdir(parents=True)
    return tree


def snapshot(root: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every entry under `root`: mode, mtime (ns) and, for files, contents."""
    out = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        data = path.read_bytes() if path.is_file() and not path.is_symlink() else b""
        out[str(path.relative_to(root))] = (st.st_mode, st.st_mtime_ns, data)
    return out


def test_loading_writes_nothing(tree: FakeTree) -> None:
    sysroot = SysRoot(tree.root)
    before = snapshot(tree.root)
    loaded = read_policy(sysroot)
    assert [layer.name for layer in loaded.layers] == [
        "/etc/vfs-agent/policy.yaml",
        "/etc/vfs-agent/policy.d/10-local.yaml",
        "credential vfs-agent.policy",
        "kernel command line",
    ]
    assert load_policy(sysroot) == loaded.policy
    assert Context(sysroot).policy() == loaded.policy  # what reports use
    assert snapshot(tree.root) == before
    assert not (tree.root / CACHE.lstrip("/")).exists()


def test_the_loader_does_not_import_the_compiler() -> None:
    """So no flag or later edit can make loading write: the writer is not within its reach."""
    code = "import sys, vfs_agent.policy.load; print('vfs_agent.policy.compiled' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_compiling_is_what_the_loader_returned_for_those_layers(tree: FakeTree) -> None:
    sysroot = SysRoot(tree.root)
    loaded = read_policy(sysroot)
    assert compile_policy(sysroot, loaded) is True
    assert policy_cache.load(sysroot) == loaded.policy
    assert compile_policy(sysroot, loaded) is False  # unchanged: not rewritten
    cache = tree.root / CACHE.lstrip("/")
    assert oct(cache.stat().st_mode & 0o777) == "0o644"
    assert json.loads(cache.read_text())["layers"] == [layer.name for layer in loaded.layers]


def test_a_file_added_after_loading_leaves_the_compiled_policy_stale(tree: FakeTree) -> None:
    """The layers compiled are those the loader read, not those present when it writes: a
    drop-in that appears in between must not be taken as covered."""
    sysroot = SysRoot(tree.root)
    loaded = read_policy(sysroot)
    tree.policy("version: 1\ndefaults: {unknown: mount}\n", "policy.d/20-late.yaml")
    compile_policy(sysroot, loaded)
    assert (tree.root / CACHE.lstrip("/")).exists()
    assert policy_cache.load(sysroot) is None
    compile_policy(sysroot, read_policy(sysroot))
    assert policy_cache.load(sysroot) is not None


def test_a_policy_given_with_policy_path_is_never_compiled(tree: FakeTree) -> None:
    sysroot = SysRoot(tree.root)
    loaded = read_policy(sysroot, "/etc/vfs-agent/policy.yaml")
    assert not loaded.default_files
    with pytest.raises(ValueError, match="--policy"):
        compile_policy(sysroot, loaded)
    Context(sysroot, "/etc/vfs-agent/policy.yaml").policy_to_apply()
    assert not (tree.root / CACHE.lstrip("/")).exists()


def test_only_a_command_that_acts_compiles(tree: FakeTree) -> None:
    sysroot = SysRoot(tree.root)
    Context(sysroot).policy()
    assert not (tree.root / CACHE.lstrip("/")).exists()
    policy = Context(sysroot).policy_to_apply()  # mount-all, the daemon
    assert policy_cache.load(sysroot) == policy


def test_acting_goes_on_when_the_compiled_policy_cannot_be_written(tree: FakeTree) -> None:
    (tree.root / "var/lib/vfs-agent").write_text("a file where the directory goes\n")
    sysroot = SysRoot(tree.root)
    policy = Context(sysroot).policy_to_apply()
    assert policy.files[0] == "/etc/vfs-agent/policy.yaml"
    assert policy_cache.load(sysroot) is None


def test_policy_compile_says_when_it_cannot_write(tree: FakeTree) -> None:
    (tree.root / "var/lib/vfs-agent").write_text("a file where the directory goes\n")
    result = CliRunner().invoke(main, ["--root", str(tree.root), "policy", "compile"])
    assert result.exit_code == 1, result.output
    assert "vfs-agent: error:" in result.output
    os.unlink(tree.root / "var/lib/vfs-agent")
    result = CliRunner().invoke(main, ["--root", str(tree.root), "policy", "compile"])
    assert result.exit_code == 0, result.output
    assert policy_cache.load(SysRoot(tree.root)) is not None


@pytest.mark.parametrize("dry_run", [True, False])
def test_mount_all_compiles_unless_it_is_a_dry_run(tree: FakeTree, dry_run: bool) -> None:
    sysroot = SysRoot(tree.root)
    run = Executors.pick(sysroot, dry_run=dry_run, kernel=RecordingKernel())
    outcomes = ops.mount_all(Context(sysroot), run)
    assert outcomes
    assert (tree.root / CACHE.lstrip("/")).exists() is not dry_run
