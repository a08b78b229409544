"""Each command imports only what it needs, and reports use the compiled policy only while it
stands for the policy files exactly. Run as users run it: a new process per command."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from faketree import FakeTree

from vfs_agent.commands.cli import main
from vfs_agent.policy.compiled import CACHE

POLICY = """\
version: 1
defaults: {unknown: mount}
mounts:
  - {tag: media_tag, path: /mnt/media, options: [ro], required: true}
  - {tag: "data-*", path: "/srv/data/{tag}"}
  - {tag: absent_tag, path: /srv/absent}
"""
HEAVY = ("pydantic", "yaml", "click")


def vfs_agent(*args: str) -> subprocess.CompletedProcess[str]:
    """The console script's main() in a fresh interpreter, with -X importtime on stderr."""
    code = (
        "import sys; from vfs_agent.commands.console import main; sys.argv[0] = 'vfs-agent'; main()"
    )
    return subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def imported(done: subprocess.CompletedProcess[str]) -> set[str]:
    """Top-level packages and vfs_agent modules the process imported."""
    names = set()
    for line in done.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            names.add(name if name.startswith("vfs_agent") else name.split(".")[0])
    return names


def output(done: subprocess.CompletedProcess[str]) -> str:
    return done.stdout


@pytest.fixture
def tree(fake_tree: FakeTree) -> FakeTree:
    tree = fake_tree
    for tag in ("media_tag", "data-1", "weird tag#1"):
        tree.virtiofs(tag)
    tree.policy(POLICY)
    return tree


def compile_policy(tree: FakeTree) -> None:
    done = vfs_agent("--root", str(tree.root), "policy", "compile")
    assert done.returncode == 0, done.stderr
    assert (tree.root / CACHE.lstrip("/")).is_file()


def test_version_before_click_prints_what_click_prints():
    fast = vfs_agent("--version")
    assert fast.returncode == 0
    assert "click" not in imported(fast)
    assert fast.stdout == CliRunner().invoke(main, ["--version"]).output


# What the command tree itself needs: the console script, the group with its guard, and the
# policy's file names for the help text. Nothing of discovery, the core or the system door.
COMMAND_TREE = {
    "vfs_agent",
    "vfs_agent.commands",
    "vfs_agent.commands.console",
    "vfs_agent.commands.cli",
    "vfs_agent.commands.guard",
    "vfs_agent.policy",
    "vfs_agent.policy.files",
}
# Standard modules that click does not import itself and no command's parsing needs.
NOT_FOR_PARSING = {"json", "pathlib", "logging", "dataclasses"}


def own_modules(names: set[str]) -> set[str]:
    return {name for name in names if name.startswith("vfs_agent")}


def test_help_imports_only_the_command_tree():
    done = vfs_agent("--help")
    assert done.returncode == 0 and "mount-all" in done.stdout and "cloud-init" in done.stdout
    names = imported(done)
    assert own_modules(names) == COMMAND_TREE
    assert not names & (NOT_FOR_PARSING | {"pydantic", "yaml"}), names


def test_shell_completion_imports_only_the_command_tree(monkeypatch: pytest.MonkeyPatch):
    # What bash does at every TAB (click's completion protocol, the script that
    # `vfs-agent install-system-files` puts in place).
    monkeypatch.setenv("_VFS_AGENT_COMPLETE", "bash_complete")
    monkeypatch.setenv("COMP_WORDS", "vfs-agent pol")
    monkeypatch.setenv("COMP_CWORD", "1")
    done = vfs_agent()
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["plain,policy"]
    names = imported(done)
    assert own_modules(names) == COMMAND_TREE
    assert not names & NOT_FOR_PARSING, names & NOT_FOR_PARSING


def test_kernel_imports_no_policy_code(tree: FakeTree):
    done = vfs_agent("--root", str(tree.root), "kernel", "--json")
    assert done.returncode in (0, 1), done.stderr
    json.loads(done.stdout)
    names = imported(done)
    policy_code = {"vfs_agent.policy.load", "vfs_agent.policy.compiled", "vfs_agent.policy.types"}
    assert not names & ({"pydantic", "yaml", "vfs_agent.core.plan"} | policy_code), names


@pytest.mark.parametrize(
    ("args", "module"),
    [
        (["plan", "--json"], "vfs_agent.commands.planned"),
        (["status", "--json"], "vfs_agent.commands.planned"),
        (["generate", "systemd"], "vfs_agent.commands.persistent"),
        (["generate", "fstab"], "vfs_agent.commands.persistent"),
    ],
)
def test_reports_and_generate_import_no_executor(tree: FakeTree, args: list[str], module: str):
    compile_policy(tree)
    done = vfs_agent("--root", str(tree.root), *args)
    assert done.returncode == 0, done.stderr
    names = own_modules(imported(done))
    assert module in names
    acting = {n for n in names if n.startswith("vfs_agent.execute")}
    acting |= names & {"vfs_agent.commands.operations"}
    assert not acting, acting


@pytest.mark.parametrize("command", ["plan", "status"])
def test_reports_use_the_compiled_policy_with_the_same_result(tree: FakeTree, command: str):
    slow = vfs_agent("--root", str(tree.root), command, "--json")
    assert slow.returncode == 0, slow.stderr
    assert "pydantic" in imported(slow)  # nothing compiled yet: the full loader
    assert not (tree.root / CACHE.lstrip("/")).exists()  # reports never write it
    compile_policy(tree)
    fast = vfs_agent("--root", str(tree.root), command, "--json")
    assert fast.returncode == 0, fast.stderr
    assert not imported(fast) & {"pydantic", "yaml"}
    assert json.loads(fast.stdout) == json.loads(slow.stdout)


def test_a_changed_policy_is_validated_again(tree: FakeTree):
    compile_policy(tree)
    tree.policy(POLICY.replace("/mnt/media", "relative/media"))
    done = vfs_agent("--root", str(tree.root), "plan", "--json")
    assert done.returncode == 2
    assert "mounts[0].path: path 'relative/media' is not absolute" in done.stderr


def test_a_new_drop_in_is_validated(tree: FakeTree):
    compile_policy(tree)
    tree.policy("version: 1\nmounts: [{tag: x, pathh: /srv/x}]\n", "policy.d/10-new.yaml")
    done = vfs_agent("--root", str(tree.root), "status", "--json")
    assert done.returncode == 2 and "unknown key 'pathh'" in done.stderr


def test_modes_are_checked_again(tree: FakeTree):
    compile_policy(tree)
    os.chmod(tree.root / "etc/vfs-agent/policy.yaml", 0o664)
    done = vfs_agent("--root", str(tree.root), "plan")
    assert done.returncode == 2 and "writable by group or others" in done.stderr


def test_a_writable_cache_is_not_trusted(tree: FakeTree):
    compile_policy(tree)
    cache = tree.root / CACHE.lstrip("/")
    forged = json.loads(cache.read_text())
    forged["rules"][0]["path"] = "/srv/forged"
    cache.write_text(json.dumps(forged))
    os.chmod(cache, 0o666)
    done = vfs_agent("--root", str(tree.root), "plan", "--json")
    assert done.returncode == 0, done.stderr
    assert "pydantic" in imported(done)
    assert "/srv/forged" not in done.stdout and "/mnt/media" in done.stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the policy another owner")
def test_an_owner_the_loader_refuses_is_checked_again(tree: FakeTree):
    compile_policy(tree)
    os.chown(tree.root / "etc/vfs-agent/policy.yaml", 4321, 4321)
    done = vfs_agent("--root", str(tree.root), "plan")
    assert done.returncode == 2 and "must be owned by root" in done.stderr


def test_compiled_into_an_image_holds_where_the_image_boots(tree: FakeTree, tmp_path: Path):
    """An image builder compiles with --root; the fingerprint names paths inside the root, so
    the same tree seen from another place (the booted image) still uses it."""
    compile_policy(tree)
    moved = tmp_path / "booted"
    shutil.copytree(tree.root, moved, symlinks=True)
    done = vfs_agent("--root", str(moved), "plan", "--json")
    assert done.returncode == 0, done.stderr
    assert not imported(done) & {"pydantic", "yaml"}


def test_compile_refuses_an_invalid_policy_and_writes_nothing(tree: FakeTree):
    tree.policy("version: 1\nmounts: [{tag: x, path: relative}]\n")
    done = vfs_agent("--root", str(tree.root), "policy", "compile")
    assert done.returncode == 2 and "is not absolute" in done.stderr
    assert not (tree.root / CACHE.lstrip("/")).exists()


def test_compile_refuses_an_explicit_policy_file(tree: FakeTree):
    policy = str(tree.root / "etc/vfs-agent/policy.yaml")
    done = vfs_agent("--root", str(tree.root), "--policy", policy, "policy", "compile")
    assert done.returncode == 2 and "drop --policy" in done.stderr


def test_the_daemon_module_imports_no_validator():
    """With a fresh compiled policy the daemon never loads YAML or pydantic (about 12 MB of its
    resident memory); only a stale one brings in the loader."""
    code = (
        "import sys, vfs_agent.commands.daemon;"
        " print(sorted({'pydantic', 'yaml'} & set(sys.modules)))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_another_vfs_agent_version_does_not_trust_the_cache(tree: FakeTree, monkeypatch):
    """A newer vfs-agent may validate differently: its reports read the files again."""
    from vfs_agent.policy import compiled as policy_cache
    from vfs_agent.system.sysroot import SysRoot

    compile_policy(tree)
    assert policy_cache.load(SysRoot(tree.root)) is not None
    monkeypatch.setattr(policy_cache, "__version__", "99.0")
    assert policy_cache.load(SysRoot(tree.root)) is None


def test_a_fifo_among_the_policy_files_never_blocks_the_compiled_policy_check(tree: FakeTree):
    from vfs_agent.policy import compiled as policy_cache
    from vfs_agent.system.sysroot import SysRoot

    compile_policy(tree)
    dropins = tree.root / "etc/vfs-agent/policy.d"
    dropins.mkdir(mode=0o755)
    os.mkfifo(dropins / "50-fifo.yaml", 0o644)
    assert policy_cache.load(SysRoot(tree.root)) is None  # returns at once: stale


def test_a_policy_file_replaced_by_a_symlink_is_checked_again(tree: FakeTree):
    from vfs_agent.policy import compiled as policy_cache
    from vfs_agent.system.sysroot import SysRoot

    compile_policy(tree)
    policy = tree.root / "etc/vfs-agent/policy.yaml"
    target = tree.root / "etc/vfs-agent/real.yml"
    policy.rename(target)
    policy.symlink_to("real.yml")
    assert policy_cache.load(SysRoot(tree.root)) is None


@pytest.mark.parametrize(
    ("module", "unwanted"),
    [
        # On the boot's critical path: typing alone costs a few ms, click and the validator
        # several times the interpreter's start-up.
        ("vfs_agent.systemd.generator", ("typing", "click", "pydantic", "yaml")),
        # The prober: every virtio-fs mount of the boot and of a hotplug waits for it to start,
        # so none of the core's data (dataclasses brings inspect and ast) unless a mount fails.
        ("vfs_agent.system.answer", ("dataclasses", "enum", "pathlib", "typing")),
    ],
)
def test_boot_time_code_imports_nothing_heavy(module: str, unwanted: tuple[str, ...]):
    code = f"import sys, {module}; print(sorted({set(unwanted)!r} & set(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-I", "-c", code], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
