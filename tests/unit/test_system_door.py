"""The system edge has one door per kind of thing: one atomic writer (system/atomic.py) used
by every writer, one tool runner (system/tools.py), readers that tell an absent file from one
that cannot be read, and one control-character rule."""

from __future__ import annotations

import ast
import errno
import json
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from clirunner import cli_runner
from faketree import FakeTree

import vfs_agent
from vfs_agent.commands.cli import main
from vfs_agent.commands.install import Layout, install
from vfs_agent.core.render_systemd import render_units
from vfs_agent.policy import compiled as policy_cache
from vfs_agent.policy.layers import CLOUD_INIT_DROPIN
from vfs_agent.policy.load import load_policy, read_policy
from vfs_agent.system import cloud_init, liveness
from vfs_agent.system.atomic import remove_durably, symlink_atomic, write_atomic
from vfs_agent.system.generated_files import sync_unit_dir, write_fstab_block
from vfs_agent.system.safe_io import FileRefused
from vfs_agent.system.sysroot import SysRoot
from vfs_agent.system.tools import ToolError

PACKAGE = Path(vfs_agent.__file__).parent


# --- one atomic writer ------------------------------------------------------------------------


@pytest.fixture
def synced(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The directories fsync(2) was called on, in order."""
    seen: list[str] = []
    real = os.fsync

    def spy(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            seen.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    return seen


def test_write_atomic_syncs_file_then_directory_and_keeps_the_link(
    tmp_path: Path, synced: list[str]
) -> None:
    real = tmp_path / "real" / "fstab"
    real.parent.mkdir()
    real.write_text("old\n")
    os.chmod(real, 0o640)
    link = tmp_path / "fstab"
    link.symlink_to("real/fstab")
    write_atomic(link, "new\n")
    assert link.is_symlink() and real.read_text() == "new\n"
    assert stat.S_IMODE(real.stat().st_mode) == 0o640  # an existing file keeps its mode
    assert synced == [str(real.parent)]
    write_atomic(real, b"\xffraw", mode=0o600, keep_attrs=False)
    assert real.read_bytes() == b"\xffraw" and stat.S_IMODE(real.stat().st_mode) == 0o600


def test_a_failed_rename_leaves_the_old_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "unit.mount"
    target.write_text("old\n")
    link = tmp_path / "x.wants" / "unit.mount"
    symlink_atomic(link, "../unit.mount")

    def full(src: str, dst: str) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(OSError, match="No space"):
        write_atomic(target, "new\n")
    with pytest.raises(OSError, match="No space"):
        symlink_atomic(link, "../other.mount")
    assert target.read_text() == "old\n" and os.readlink(link) == "../unit.mount"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["unit.mount", "unit.mount", "x.wants"]


def test_symlink_atomic_replaces_a_link_and_syncs_the_directory(
    tmp_path: Path, synced: list[str]
) -> None:
    link = tmp_path / "a.wants" / "u.mount"
    assert symlink_atomic(link, "../u.mount")
    assert symlink_atomic(link, "../v.mount")
    assert not symlink_atomic(link, "../v.mount")  # already that link: nothing written
    assert os.readlink(link) == "../v.mount"
    assert synced == [str(link.parent)] * 2
    assert remove_durably(link) and not remove_durably(link)
    assert synced == [str(link.parent)] * 3


def test_write_atomic_refuses_what_is_not_a_regular_file(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(FileRefused, match="FIFO"):
        write_atomic(tmp_path / "fifo", "x")


def _writers(tree: FakeTree) -> Iterator[tuple[str, Callable[[], object], Path]]:
    """(name, call, the directory that must be fsynced) for every writer of the agent."""
    root = tree.root
    sysroot = SysRoot(root)
    tree.virtiofs("media_tag")
    tree.policy("version: 1\nmounts:\n  - {tag: media_tag, path: /mnt/media}\n")
    policy = load_policy(sysroot)
    from vfs_agent.core.plan import plan
    from vfs_agent.system.discovery import discover

    units, _ = render_units(
        plan(discover(sysroot), policy, []), "test", bind_device=True, mount_helper=True
    )
    unit_dir = root / "run/units"
    yield "unit directory", lambda: sync_unit_dir(unit_dir, units), unit_dir
    wants = next(e.relpath for u in units for e in u.extras if e.link_to)
    links = root / "run/links"
    yield "unit link", lambda: sync_unit_dir(links, units), (links / wants).parent
    yield "stale unit removed", lambda: sync_unit_dir(unit_dir, []), unit_dir
    fstab = root / "etc/fstab"
    yield (
        "fstab block",
        lambda: write_fstab_block(fstab, "x /mnt virtiofs defaults 0 0\n"),
        (fstab.parent),
    )
    loaded = read_policy(sysroot)
    cache = root / policy_cache.CACHE.lstrip("/")
    yield "compiled policy", lambda: policy_cache.compile_policy(sysroot, loaded), cache.parent
    dropin = root / CLOUD_INIT_DROPIN.lstrip("/")
    yield (
        "cloud-init drop-in",
        lambda: cloud_init.write_dropin(sysroot, CLOUD_INIT_DROPIN, "version: 1\n"),
        (dropin.parent),
    )
    yield (
        "cloud-init drop-in removed",
        lambda: cloud_init.remove_dropin(sysroot, CLOUD_INIT_DROPIN),
        dropin.parent,
    )
    layout = Layout("/usr", "/usr/bin/python3", "/usr/bin")
    service = root / "usr/lib/systemd/system"
    yield "install", lambda: install(root, layout), service
    probes = root / liveness.PROBE_DIR.lstrip("/")
    yield "probe marker", lambda: liveness._remember(sysroot, "0:99", os.getpid(), "x"), probes


def test_every_writer_syncs_the_directory_of_what_it_replaced(
    tmp_path: Path, synced: list[str]
) -> None:
    tree = FakeTree(tmp_path)
    missed = []
    for name, call, directory in _writers(tree):
        synced.clear()
        call()
        if str(directory) not in synced:
            missed.append(f"{name}: {directory} not in {synced}")
    assert missed == []


def _sources() -> Iterator[tuple[Path, ast.Module]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path, ast.parse(path.read_text(encoding="utf-8"))


def _calls(tree: ast.Module) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        func = node.func if isinstance(node, ast.Call) else None
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
            names.add(f"{func.value.id}.{func.attr}")
        if isinstance(node, ast.Import | ast.ImportFrom):
            names |= {f"import {a.name}" for a in node.names}
            if isinstance(node, ast.ImportFrom) and node.module:
                names.add(f"import {node.module}")
    return names


def test_only_the_atomic_writer_renames_and_only_the_tool_runner_runs_tools() -> None:
    """A second writer or runner would bypass the fsyncs and the one-line errors."""
    owners = {
        "os.replace": {"system/atomic.py"},
        "os.rename": set(),
        "os.symlink": {"system/atomic.py"},
        "import tempfile": set(),
        "import subprocess": {"system/tools.py"},
        "import shutil": set(),
    }
    found: dict[str, set[str]] = {name: set() for name in owners}
    for path, module in _sources():
        for name in _calls(module) & owners.keys():
            found[name].add(str(path.relative_to(PACKAGE)))
    assert found == owners


# --- one tool runner --------------------------------------------------------------------------


@pytest.fixture
def bin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "bin"
    directory.mkdir()
    monkeypatch.setenv("PATH", f"{directory}:{os.environ['PATH']}")
    return directory


def fake_tool(bin_dir: Path, name: str, script: str) -> None:
    path = bin_dir / name
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(0o755)


def test_run_tool_says_status_and_the_last_stderr_line(bin_dir: Path) -> None:
    from vfs_agent.system.tools import ToolError, run_tool, tool_output

    fake_tool(bin_dir, "tool", 'echo out; echo "first" >&2; echo "the reason" >&2; exit 3')
    assert run_tool(["tool", "a b"], 10) == "tool 'a b' failed: exit status 3: the reason"
    fake_tool(bin_dir, "quiet", "exit 4")
    assert run_tool(["quiet"], 10) == "quiet failed: exit status 4"
    fake_tool(bin_dir, "ok", "echo fine; echo chatter >&2")
    assert run_tool(["ok"], 10) is None
    assert tool_output(["ok"], 10) == "fine\n"
    with pytest.raises(ToolError, match=r"^quiet failed: exit status 4$"):
        tool_output(["quiet"], 10)
    fake_tool(bin_dir, "killed", "kill -9 $$")
    assert run_tool(["killed"], 10) == "killed failed: killed by signal 9"
    fake_tool(bin_dir, "slow", "exec sleep 30")
    assert run_tool(["slow"], 0.3) == "slow failed: no answer within 0.3 s"
    assert run_tool(["no-such-tool-here"], 10) == (
        "no-such-tool-here failed: no-such-tool-here not found (is it installed?)"
    )


def test_systemctl_modprobe_and_cloud_init_fail_the_same_way(bin_dir: Path) -> None:
    from vfs_agent.execute.systemd import start_unit
    from vfs_agent.system import kernel_modules

    fake_tool(bin_dir, "systemctl", 'echo "Unit mnt-x.mount not found." >&2; exit 5')
    fake_tool(bin_dir, "modprobe", 'echo "modprobe: FATAL: Module virtiofs not found" >&2; exit 1')
    fake_tool(bin_dir, "cloud-init", 'echo "no instance data" >&2; exit 1')
    assert start_unit("mnt-x.mount") == (
        "systemctl start mnt-x.mount failed: exit status 5: Unit mnt-x.mount not found."
    )
    assert cloud_init.run_systemctl(["daemon-reload"]) == (
        "systemctl daemon-reload failed: exit status 5: Unit mnt-x.mount not found."
    )
    assert kernel_modules._modprobe("virtiofs") == (
        "modprobe -q virtiofs failed: exit status 1: modprobe: FATAL: Module virtiofs not found"
    )
    with pytest.raises(ToolError) as caught:
        cloud_init.run_query()
    assert str(caught.value) == "cloud-init query --all failed: exit status 1: no instance data"


# --- readers: absent is not unreadable ----------------------------------------------------------


def unreadable(monkeypatch: pytest.MonkeyPatch, path: Path, code: int = errno.EIO) -> None:
    """Opening `path` fails with `code`, as a sysfs attribute whose read fails does (root
    ignores chmod 000, so the tests simulate it)."""
    real = os.open

    def fake_open(name: object, flags: int, *args: object, **kwargs: object) -> int:
        if str(name) == str(path):
            raise OSError(code, os.strerror(code), str(name))
        return real(name, flags, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", fake_open)


def test_read_bytes_tells_absent_from_unreadable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tree = FakeTree(tmp_path)
    sysroot = SysRoot(tmp_path)
    tree.write("etc/file", "x")
    assert sysroot.read_bytes("/etc/missing") is None
    assert sysroot.read_text("/etc/file/below") is None  # ENOTDIR: absent too
    os.mkfifo(tmp_path / "etc/fifo")
    with pytest.raises(FileRefused, match="FIFO"):
        sysroot.read_bytes("/etc/fifo")
    unreadable(monkeypatch, tmp_path / "etc/file", errno.EACCES)
    with pytest.raises(PermissionError):
        sysroot.read_text("/etc/file")
    assert sysroot.read_optional("/etc/file") is None


def test_exists_tells_absent_from_unreadable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unreadable directory is never taken for an absent file (on every Python: pathlib's
    exists() stopped telling them apart in 3.13)."""
    tree = FakeTree(tmp_path)
    sysroot = SysRoot(tmp_path)
    tree.write("etc/file", "x")
    (tmp_path / "etc/loop").symlink_to("loop")
    assert sysroot.exists("/etc/file") and not sysroot.exists("/etc/missing")
    assert not sysroot.exists("/etc/file/below") and not sysroot.exists("/etc/loop")
    real = os.stat
    locked = str(tmp_path / "etc/locked/policy.yaml")

    def fake_stat(name: object, *args: object, **kwargs: object) -> os.stat_result:
        if str(name) == locked:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(name))
        return real(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "stat", fake_stat)
    with pytest.raises(PermissionError):
        sysroot.exists("/etc/locked/policy.yaml")


TAG_EACCES = (
    "cannot read the tag of virtio-fs device virtio0 (/sys/fs/virtiofs/1/tag: Permission "
    "denied); its share is not mounted, and no mount is taken for stale, until the tag can be read"
)


@pytest.mark.parametrize(
    ("locked", "problem"),
    [
        ("sys/fs/virtiofs/1/tag", TAG_EACCES),
        (
            "sys/fs/virtiofs",
            "cannot list /sys/fs/virtiofs (Permission denied): shares are not known to be "
            "complete, so no mount is taken for stale",
        ),
        (
            "sys/bus/virtio/devices",
            "cannot list /sys/bus/virtio/devices (Permission denied): shares are not known to be "
            "complete, so no mount is taken for stale",
        ),
    ],
)
def test_chmod_000_is_a_problem_for_an_unprivileged_reader(locked: str, problem: str) -> None:
    """The real EACCES: the reader runs as nobody (in a child when the tests run as root),
    in a tree every user may walk (pytest's own directory is root's alone)."""
    from vfs_agent.system.discovery import discover

    with tempfile.TemporaryDirectory() as top_name:
        top = Path(top_name)
        os.chmod(top, 0o755)
        tree = FakeTree(top)
        tree.virtiofs("media_tag")
        os.chmod(top / locked, 0)
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            try:
                os.close(read)
                if os.geteuid() == 0:
                    os.setgroups([])
                    os.setgid(65534)
                    os.setuid(65534)
                found = discover(SysRoot(top), pci=False)
                result = [found.complete, list(found.problems), [s.tag for s in found.shares]]
                os.write(write, json.dumps(result).encode())
            finally:
                os._exit(0)
        os.close(write)
        with os.fdopen(read, "rb") as pipe:
            data = pipe.read()
        os.waitpid(pid, 0)
    complete, problems, tags = json.loads(data)
    assert not complete
    assert problems == [problem]
    assert tags == ([] if locked != "sys/bus/virtio/devices" else ["media_tag"])


@pytest.fixture
def eio_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeTree:
    """media_tag readable, lost_tag's tag file fails with EIO; lost_tag is mounted."""
    tree = FakeTree(tmp_path)
    tree.virtiofs("media_tag")
    tree.virtiofs("lost_tag")
    tree.mounted(("virtiofs", "lost_tag", "/mnt/virtiofs/lost_tag"))
    unreadable(monkeypatch, tmp_path / "sys/fs/virtiofs/2/tag")
    return tree


EIO_PROBLEM = (
    "cannot read the tag of virtio-fs device virtio1 (/sys/fs/virtiofs/2/tag: Input/output "
    "error); its share is not mounted, and no mount is taken for stale, until the tag can be read"
)


def test_status_and_plan_show_an_unreadable_tag(eio_tree: FakeTree) -> None:
    def run(*args: str) -> str:
        result = cli_runner().invoke(main, ["--root", str(eio_tree.root), *args])
        assert result.exit_code == 0, result.output
        return result.stdout

    status = json.loads(run("status", "--json"))
    assert status["discovery_problems"] == [EIO_PROBLEM]
    assert status["discovery_complete"] is False
    assert [s["tag"] for s in status["shares"]] == ["media_tag"]
    planned = json.loads(run("plan", "--json"))
    assert planned["discovery_problems"] == [EIO_PROBLEM]
    # The mount of the share whose tag cannot be read is not taken for stale.
    assert [(a["action"], a["tag"]) for a in planned["actions"]] == [("mount", "media_tag")]
    assert f"* {EIO_PROBLEM}" in run("plan").splitlines()
    assert f"* {EIO_PROBLEM}" in run("status").splitlines()


def test_an_unreadable_9p_tag_keeps_its_mount(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from vfs_agent.core.plan import ActionKind, plan
    from vfs_agent.policy.types import empty_policy
    from vfs_agent.system.discovery import discover
    from vfs_agent.system.mount_table import read_mount_table

    tree = FakeTree(tmp_path)
    device = tree.ninep("nine")
    tree.mounted(("9p", "nine", "/mnt/virtiofs/nine"))
    sysroot = SysRoot(tmp_path)
    unreadable(monkeypatch, tmp_path / f"sys/bus/virtio/devices/{device}/mount_tag")
    found = discover(sysroot, pci=False)
    assert found.shares == () and not found.ninep_complete
    assert found.problems[0].startswith(f"cannot read the tag of 9p device {device} (")
    actions = plan(found, empty_policy(), read_mount_table(sysroot))
    assert not [a for a in actions if a.kind is ActionKind.UNMOUNT_STALE]


def test_the_udev_helper_gives_no_alias_for_an_unreadable_tag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vfs_agent.systemd.udev_tag import tag_for_device

    tree = FakeTree(tmp_path)
    tree.virtiofs("first")
    tree.virtiofs("second")
    devpath = "/devices/pci0000:00/0000:00:02.0/virtio1"
    assert tag_for_device(SysRoot(tmp_path), devpath) == "second"
    unreadable(monkeypatch, tmp_path / "sys/fs/virtiofs/2/tag")
    assert tag_for_device(SysRoot(tmp_path), devpath) is None
    assert tag_for_device(SysRoot(tmp_path), "/devices/pci0000:00/0000:00:01.0/virtio0") == "first"


def test_an_unreadable_mount_table_is_an_error_not_an_empty_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vfs_agent.system.mount_table import read_mount_table

    FakeTree(tmp_path)
    unreadable(monkeypatch, tmp_path / "proc/self/mountinfo")
    with pytest.raises(OSError, match="Input/output error"):
        read_mount_table(SysRoot(tmp_path))


# --- one control-character rule, keyword-built core types -----------------------------------


def test_one_control_character_rule() -> None:
    from vfs_agent.core.escape import has_control, is_control
    from vfs_agent.core.paths import path_problem
    from vfs_agent.core.render_systemd import comment_text

    assert [c for c in map(chr, range(0x100)) if is_control(c)] == [
        *map(chr, range(0x20)),
        "\x7f",
    ]
    assert has_control("a\tb") and not has_control("a b\u0085")
    assert path_problem("/mnt/a\x7fb") == "contains a control character"
    assert comment_text("a\nb\x7f") == "a\\nb\\x7f"
    # No module keeps its own copy of the rule.
    copies = [
        str(path.relative_to(PACKAGE))
        for path, _ in _sources()
        if "0x7F" in path.read_text() and path.name != "escape.py"
    ]
    assert copies == []


def test_action_and_share_status_are_built_by_keyword() -> None:
    from vfs_agent.core.plan import Action, ActionKind
    from vfs_agent.core.status import Health, ShareStatus
    from vfs_agent.core.transport import Transport

    with pytest.raises(TypeError):
        Action(ActionKind.MOUNT, "t", "why")  # type: ignore[misc]
    with pytest.raises(TypeError):
        ShareStatus("t", None, None, None, None, (), Health.ABSENT, "x")  # type: ignore[misc]
    action = Action(kind=ActionKind.MOUNT, tag="t", reason="why", transport=Transport.VIRTIOFS)
    assert action.to_dict()["tag"] == "t"


def test_a_fifo_in_place_of_the_credential_is_reported_not_waited_on(tmp_path: Path) -> None:
    import subprocess
    import sys

    tree = FakeTree(tmp_path)
    tree.virtiofs("media_tag")
    credential = tmp_path / "run/credentials/@system/vfs-agent.policy"
    credential.parent.mkdir(parents=True)
    os.mkfifo(credential)
    done = subprocess.run(
        [sys.executable, "-m", "vfs_agent", "--root", str(tmp_path), "plan", "--json"],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr
    warnings = json.loads(done.stdout)["policy_warnings"]
    assert "is a FIFO, not a regular file" in warnings[0]
    assert warnings[1].endswith("invalid, ignoring it; the other policy layers still apply.")
