"""Every user-facing command against broken and hostile inputs: a short error on stderr (never
a traceback), the documented exit code, and files left untouched; outputs through a symlink
update its target and keep the link; nothing ever blocks on a FIFO or floods from a device.

Commands run as real processes where the process matters (closed stdout, SIGPIPE, FIFOs with
a timeout); the rest through click's runner.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import Result
from clirunner import cli_runner
from faketree import FakeTree, run_generator, snapshot

from vfs_agent.commands.cli import main
from vfs_agent.core.render_fstab import BLOCK_BEGIN, BLOCK_END
from vfs_agent.policy import compiled as policy_cache
from vfs_agent.policy.load import read_policy
from vfs_agent.system.sysroot import SysRoot
from vfs_agent.systemd.generator import generate

POLICY = "version: 1\nmounts:\n  - {tag: media_tag, path: /mnt/media, required: true}\n"
TIMEOUT = 20  # seconds; a command blocked on a FIFO would hit it

# Every command that reads the policy, as it can run on a fake root without changing anything.
POLICY_COMMANDS = [
    ["status"],
    ["plan"],
    ["plan", "--json"],
    ["mount-all", "--dry-run"],
    ["mount", "media_tag", "--dry-run"],
    ["generate", "systemd"],
    ["generate", "fstab"],
    ["policy", "check"],
]
ALL_COMMANDS = [
    *POLICY_COMMANDS,
    ["kernel"],
    ["umount", "/mnt/media", "--dry-run"],
    ["policy", "schema"],
    ["install-system-files", "--dry-run"],
]


@pytest.fixture
def tree(fake_tree: FakeTree) -> FakeTree:
    root = fake_tree
    root.virtiofs("media_tag")
    root.policy(POLICY)
    return root


def run(tree: FakeTree, *args: str) -> Result:
    return cli_runner().invoke(main, ["--root", str(tree.root), *args])


def run_process(
    root: Path, *args: str, stdout: int = subprocess.PIPE
) -> subprocess.CompletedProcess[bytes]:
    command = [sys.executable, "-m", "vfs_agent", "--root", str(root), *args]
    return subprocess.run(
        command, stdout=stdout, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, timeout=TIMEOUT
    )


def assert_error(stderr: str, code: int, returncode: int, *wanted: str) -> None:
    """Exit `code`; stderr is short, every line a vfs-agent message, a policy problem
    (`/file:...`, as `policy check` prints them) or click's usage error, no traceback; it says
    each of `wanted`."""
    assert returncode == code, stderr
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert 1 <= len(lines) <= 4, stderr
    for line in lines:
        assert line.startswith(("vfs-agent:", "/", "Usage:", "Try ", "Error:")), stderr
    for text in wanted:
        assert text in stderr, stderr


# --- outputs: fstab -----------------------------------------------------------------------------


def test_fstab_begin_without_end_is_one_line_and_untouched(tree: FakeTree, tmp_path: Path):
    fstab = tmp_path / "fstab"
    original = f"/dev/vda / ext4 defaults 0 1\n{BLOCK_BEGIN}\nold line\n".encode()
    fstab.write_bytes(original)
    result = run(tree, "generate", "fstab", "--output", str(fstab))
    assert_error(result.stderr, 1, result.exit_code, "line 2 begins vfs-agent's block")
    assert fstab.read_bytes() == original


def test_fstab_with_crlf_lines_keeps_them_and_never_duplicates_the_block(
    tree: FakeTree, tmp_path: Path
):
    fstab = tmp_path / "fstab"
    fstab.write_bytes(b"/dev/vda / ext4 defaults 0 1\r\n# keep\x0cme\r\n")
    for _ in range(2):
        result = run(tree, "generate", "fstab", "--output", str(fstab))
        assert result.exit_code == 0, result.output
    text = fstab.read_bytes()
    assert text.startswith(b"/dev/vda / ext4 defaults 0 1\r\n# keep\x0cme\r\n")
    assert text.count(BLOCK_BEGIN.encode()) == 1
    # A block whose marker lines were converted to CRLF is still found and replaced.
    fstab.write_bytes(text.replace(b"\n", b"\r\n").replace(b"\r\r\n", b"\r\n"))
    result = run(tree, "generate", "fstab", "--output", str(fstab))
    assert result.exit_code == 0, result.output
    assert fstab.read_bytes().count(BLOCK_BEGIN.encode()) == 1


def test_fstab_through_a_symlink_updates_the_target_and_keeps_the_link(
    tree: FakeTree, tmp_path: Path
):
    (tmp_path / "real").mkdir()
    target = tmp_path / "real/fstab"
    target.write_text("/dev/vda / ext4 defaults 0 1\n")
    link = tmp_path / "fstab"
    link.symlink_to("real/fstab")
    chain = tmp_path / "fstab2"
    chain.symlink_to(link)
    result = run(tree, "generate", "fstab", "--output", str(chain))
    assert result.exit_code == 0, result.output
    assert chain.is_symlink() and link.is_symlink()
    assert os.readlink(link) == "real/fstab"
    assert "media_tag /mnt/media virtiofs" in target.read_text()
    assert target.read_text().startswith("/dev/vda / ext4 defaults 0 1\n")


def test_fstab_through_a_dangling_symlink_creates_its_target(tree: FakeTree, tmp_path: Path):
    link = tmp_path / "fstab"
    link.symlink_to("new-fstab")
    result = run(tree, "generate", "fstab", "--output", str(link))
    assert result.exit_code == 0, result.output
    assert link.is_symlink() and BLOCK_END in (tmp_path / "new-fstab").read_text()


def null_device(directory: Path) -> Path:
    """A character device like /dev/null (1:3), made here: a regression that replaced it must
    never touch the machine's own /dev/null."""
    node = directory / "null"
    try:
        os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("needs CAP_MKNOD to make a device node")
    return node


@pytest.mark.parametrize(
    "kind", ["directory", "fifo", "device", "device-link", "proc-fd-link", "loop"]
)
def test_fstab_output_that_is_not_a_regular_file_is_refused(
    tree: FakeTree, tmp_path: Path, kind: str
):
    out = tmp_path / "out"
    if kind == "directory":
        out.mkdir()
        (out / "keep").write_text("x")
        wanted = "is a directory"
    elif kind == "fifo":
        os.mkfifo(out)
        wanted = "is a FIFO"
    elif kind == "device":
        out = null_device(tmp_path)
        wanted = f"{out} is a character device"
    elif kind == "device-link":
        out.symlink_to(null_device(tmp_path))
        wanted = "is a character device"
    elif kind == "proc-fd-link":
        out.symlink_to("/proc/self/fd/1")
        wanted = "links into /proc"
    else:
        out.symlink_to("out")
        wanted = "too many levels of symbolic links"
    before = snapshot(tmp_path)
    result = run(tree, "generate", "fstab", "--output", str(out))
    assert_error(result.stderr, 1, result.exit_code, wanted, str(out))
    assert snapshot(tmp_path) == before
    if kind.startswith("device"):
        st = os.stat(tmp_path / "null")
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)


# --- outputs: unit directory --------------------------------------------------------------------


def test_unit_output_that_is_a_file_is_refused(tree: FakeTree, tmp_path: Path):
    out = tmp_path / "units"
    out.write_text("not a directory\n")
    result = run(tree, "generate", "systemd", "--output", str(out))
    assert_error(result.stderr, 1, result.exit_code, "is a regular file, not a directory")
    assert out.read_text() == "not a directory\n"


def test_unit_output_dir_with_a_fifo_in_place_of_a_unit_never_blocks(tree: FakeTree, tmp_path):
    out = tmp_path / "units"
    out.mkdir()
    os.mkfifo(out / "mnt-media.mount")
    done = run_process(tree.root, "generate", "systemd", "--output", str(out))
    assert_error(done.stderr.decode(), 1, done.returncode, "not generated by vfs-agent")
    assert not (out / "local-fs.target.wants").exists()


def test_unit_output_through_a_symlinked_directory_keeps_the_link(tree: FakeTree, tmp_path):
    (tmp_path / "real").mkdir()
    link = tmp_path / "units"
    link.symlink_to("real")
    result = run(tree, "generate", "systemd", "--output", str(link))
    assert result.exit_code == 0, result.output
    assert link.is_symlink() and (tmp_path / "real/mnt-media.mount").is_file()


# --- inputs -------------------------------------------------------------------------------------


@pytest.mark.parametrize("args", POLICY_COMMANDS, ids=" ".join)
def test_a_fifo_in_policy_d_never_blocks_any_command(tree: FakeTree, args: list[str]):
    dropins = tree.root / "etc/vfs-agent/policy.d"
    dropins.mkdir(mode=0o755)
    os.mkfifo(dropins / "50-fifo.yaml", 0o644)
    before = snapshot(tree.root)
    done = run_process(tree.root, *args)
    assert_error(done.stderr.decode(), 2, done.returncode, "50-fifo.yaml: cannot read", "FIFO")
    assert snapshot(tree.root) == before


@pytest.mark.parametrize("target", ["/dev/zero", "/dev/urandom"])
def test_a_policy_linked_to_a_device_is_refused_unread(tree: FakeTree, target: str):
    policy = tree.root / "etc/vfs-agent/policy.yaml"
    policy.unlink()
    policy.symlink_to(target)
    done = run_process(tree.root, "plan")
    assert_error(done.stderr.decode(), 2, done.returncode, "is a character device")


def test_a_huge_policy_is_refused_at_once(tree: FakeTree):
    tree.policy("version: 1\n" + "# padding\n" * 2_500_000)  # 25 MB
    done = run_process(tree.root, "policy", "check")
    assert_error(done.stderr.decode(), 2, done.returncode, "is larger than 1048576 bytes")


def test_generator_skips_a_fifo_policy_and_writes_nothing(tree: FakeTree, tmp_path: Path):
    dropins = tree.root / "etc/vfs-agent/policy.d"
    dropins.mkdir(mode=0o755)
    os.mkfifo(dropins / "50-fifo.yaml", 0o644)
    out = tmp_path / "gen"
    out.mkdir()
    done = run_generator(tree.root, out)
    assert done.returncode == 0
    assert list(out.iterdir()) == []


def test_policy_d_file_name_with_a_newline_is_refused_and_never_reaches_a_unit(tree: FakeTree):
    name = "50-x.yaml\nSuccessAction=poweroff\n#.yaml"
    tree.policy(POLICY.replace("/mnt/media", "/mnt/other"), name=f"policy.d/{name}")
    result = run(tree, "generate", "systemd")
    assert_error(result.stderr, 2, result.exit_code, "the file name contains a control character")
    assert "SuccessAction" not in result.stdout
    assert "\\nSuccessAction=poweroff\\n" in result.stderr  # shown escaped, on one line


def test_root_that_is_a_file_is_a_usage_error(tmp_path: Path):
    root = tmp_path / "file"
    root.write_text("x")
    for args in ALL_COMMANDS:
        result = cli_runner().invoke(main, ["--root", str(root), *args])
        assert_error(result.stderr, 2, result.exit_code, "is a file")
    assert root.read_text() == "x"


@pytest.mark.parametrize("args", ALL_COMMANDS, ids=" ".join)
def test_closed_stdout_is_an_error_not_lost_output(tree: FakeTree, args: list[str]):
    before = snapshot(tree.root)
    done = run_process(tree.root, *args, stdout=subprocess.DEVNULL)
    assert done.returncode in (0, 1)  # with stdout open (to /dev/null), the plain result
    # As `vfs-agent ... >&-` in a shell: the process starts with fd 1 closed.
    command = [sys.executable, "-m", "vfs_agent", "--root", str(tree.root), *args]
    closed = subprocess.run(
        ["sh", "-c", 'exec "$@" >&-', "sh", *command], stderr=subprocess.PIPE, timeout=TIMEOUT
    )
    assert_error(closed.stderr.decode(), 1, closed.returncode, "standard output is closed")
    assert snapshot(tree.root) == before


@pytest.mark.parametrize("args", [["policy", "schema"], ["plan", "--json"], ["generate", "fstab"]])
def test_a_reader_that_goes_away_gives_one_line(tree: FakeTree, args: list[str]):
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = run_process(tree.root, *args, stdout=write_end)
    finally:
        os.close(write_end)
    assert_error(done.stderr.decode(), 1, done.returncode, "Broken pipe")


@pytest.mark.parametrize(
    "text, wanted",
    [
        ("version: 1\nmounts:\n" + "  " + "[" * 5000 + "]" * 5000 + "\n", ":3:"),
        ("version: 1\nmounts:\n  - tag: a\x07b\n", "character '\\x07' is not allowed"),
        ("version: 1\nmounts:\n  - tag: a\x85\n", ""),
        ("version: 1\n\x00\n", "character '\\x00' is not allowed"),
        ("\ufeffversion: 1\n", ""),
    ],
    ids=["deep", "bell", "nel", "nul", "bom"],
)
def test_broken_yaml_is_a_positioned_error_never_a_traceback(tree: FakeTree, text: str, wanted):
    tree.policy(text)
    result = run(tree, "policy", "check")
    assert ("Traceback" not in result.output and result.exception is None) or isinstance(
        result.exception, SystemExit
    )
    if result.exit_code:
        assert_error(result.stderr, 2, result.exit_code, wanted)


# --- the compiled policy ------------------------------------------------------------------------


def _compile(tree: FakeTree) -> Path:
    sysroot = SysRoot(tree.root)
    policy_cache.compile_policy(sysroot, read_policy(sysroot))  # as mount-all and the daemon do
    cache = tree.root / policy_cache.CACHE.lstrip("/")
    assert cache.is_file()
    return cache


def _units(tree: FakeTree, out: Path) -> str:
    generate(SysRoot(tree.root), out)
    return "".join(p.read_text() for p in sorted(out.glob("*.mount")))


def test_generator_distrusts_a_writable_compiled_policy(tree: FakeTree, tmp_path: Path):
    cache = _compile(tree)
    data = json.loads(cache.read_text())
    data["rules"][0]["options"] = ["suid", "dev"]
    cache.write_text(json.dumps(data))
    os.chmod(cache, 0o666)
    text = _units(tree, tmp_path / "a")
    assert "Options=nosuid,nodev" in text and "suid,dev" not in text.replace("nosuid,nodev", "")


def test_generator_revalidates_the_compiled_policy(tree: FakeTree, tmp_path: Path):
    cache = _compile(tree)
    data = json.loads(cache.read_text())
    data["rules"][0]["options"] = ["ro\nExecStartPre=/bin/sh"]
    cache.write_text(json.dumps(data))
    os.chmod(cache, 0o644)
    text = _units(tree, tmp_path / "b")
    assert "ExecStartPre" not in text and "Options=nosuid,nodev\n" in text
    # A valid cache is used as is (so the checks above are what rejected the others).
    data["rules"][0]["options"] = ["noexec"]
    cache.write_text(json.dumps(data))
    assert "Options=nosuid,nodev,noexec\n" in _units(tree, tmp_path / "c")


# --- --policy with --root -----------------------------------------------------------------------


def test_absolute_policy_is_read_inside_root_and_the_error_names_the_file_tried(tree: FakeTree):
    result = run(tree, "--policy", "/etc/other.yaml", "plan")  # no such file in the root
    tried = tree.root / "etc/other.yaml"
    assert_error(result.stderr, 2, result.exit_code, f"/etc/other.yaml: no such file ({tried})")
    tree.policy(POLICY.replace("/mnt/media", "/mnt/inside"), name="../other.yaml")
    assert "/mnt/inside" in run(tree, "--policy", "/etc/other.yaml", "plan").stdout


def test_relative_policy_is_read_from_the_current_directory(
    tree: FakeTree, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    work = tmp_path / "work"
    work.mkdir(mode=0o755)
    (work / "p.yaml").write_text(POLICY.replace("/mnt/media", "/mnt/from-cwd"))
    monkeypatch.chdir(work)
    result = cli_runner().invoke(main, ["--root", str(tree.root), "--policy", "p.yaml", "plan"])
    assert result.exit_code == 0, result.output
    assert "/mnt/from-cwd" in result.stdout
    missing = cli_runner().invoke(main, ["--root", str(tree.root), "--policy", "no.yaml", "plan"])
    assert_error(missing.stderr, 2, missing.exit_code, f"{work}/no.yaml: no such file")


def test_help_states_the_policy_and_root_rule():
    out = cli_runner().invoke(main, ["--help"]).output
    assert "absolute PATH is read inside --root" in " ".join(out.split())


# --- --root never reaches the running system's services -----------------------------------------


def test_root_never_starts_a_unit_with_the_hosts_systemctl(
    tree: FakeTree, monkeypatch: pytest.MonkeyPatch
):
    """The image has systemd "running" and a vfs-agent unit for the share: mount-all and mount
    under --root leave it to that root's systemd; neither systemctl nor mount(2) runs."""
    from test_apply import RecordingKernel

    from vfs_agent.commands import operations as ops
    from vfs_agent.core.render_systemd import GENERATED_MARK
    from vfs_agent.execute import systemd as execute_systemd
    from vfs_agent.execute.apply import Executors

    tree.write("run/systemd/system/.keep", "")
    tree.write("etc/systemd/system/mnt-media.mount", f"{GENERATED_MARK} from a test\n")
    started: list[str] = []
    monkeypatch.setattr(execute_systemd, "start_unit", lambda name, **_: started.append(name))
    real_run = subprocess.run

    def no_systemctl(args: list[str], *rest: object, **kwargs: object) -> object:
        assert "systemctl" not in str(args[0]), args
        return real_run(args, *rest, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(subprocess, "run", no_systemctl)
    ctx = ops.Context(SysRoot(tree.root))
    kernel = RecordingKernel()
    run = Executors.pick(ctx.sysroot, dry_run=False, kernel=kernel)
    for outcomes in (ops.mount_all(ctx, run), ops.mount_one(ctx, "media_tag", None, run)):
        (outcome,) = [o for o in outcomes if o.action.tag == "media_tag"]
        assert outcome.ok and not outcome.changed
        assert "--root starts no unit" in outcome.message
    assert started == [] and kernel.mounts == []


def test_the_compiled_policy_is_trusted_under_a_loose_umask(tree: FakeTree, tmp_path: Path):
    old = os.umask(0o002)
    try:
        cache = _compile(tree)
    finally:
        os.umask(old)
    assert policy_cache.load(SysRoot(tree.root)) is not None, oct(cache.parent.stat().st_mode)


def test_a_unit_name_of_255_bytes_is_written(tmp_path: Path):
    """The temporary file beside it must fit NAME_MAX too."""
    from vfs_agent.system.sysroot import write_atomic

    target = tmp_path / ("x" * 249 + ".mount")
    write_atomic(target, "[Mount]\n")
    assert target.read_text() == "[Mount]\n" and len(target.name) == 255
