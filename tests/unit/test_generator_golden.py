"""Golden trees for the systemd generator, as systemd's test-fstab-generator keeps them.

Each directory under tests/generator/ is one case (its README says what a case holds): the
inputs are built into a fake root, the generator's real entry point runs on it as systemd runs
it (a process with three output directories), and what it wrote (every file, its name, its
content, every .wants/ symlink and its target) plus what it logged to the kernel log is diffed
WHOLE against the case's expected/ tree. Any file too many, too few or different fails. The memo
it leaves of its run (no unit) is set aside first; test_generator_replay.py replays it.

    VFS_AGENT_REGENERATE_GOLDEN=1 .venv/bin/pytest tests/unit/test_generator_golden.py
    make golden

rewrite expected/ from what the generator writes now; review the diff before committing it.

Every expected tree also passes `systemd-analyze verify`, and `vfs-agent generate systemd
--output DIR` on the same root writes the same tree (but for the header naming the generator,
and the order after its device that every share keeps in units that outlive the boot): the
command and the generator compute their units in one place (core/desired.py).
"""

from __future__ import annotations

import difflib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from clirunner import cli_runner
from faketree import FakeTree, run_generator

from vfs_agent.commands.cli import main
from vfs_agent.core.render_systemd import PROBER_DROPIN, exec_word
from vfs_agent.systemd.installed import MOUNT_HELPER, RULE_NAME
from vfs_agent.systemd.replay import MEMO_NAME

CASES_DIR = Path(__file__).resolve().parent.parent / "generator"
CASES = sorted(p.name for p in CASES_DIR.iterdir() if (p / "case.json").is_file())
REGENERATE = os.environ.get("VFS_AGENT_REGENERATE_GOLDEN") == "1"
CREDENTIALS = "/run/credentials/@system"  # what systemd passes as $CREDENTIALS_DIRECTORY
KMSG = "kmsg"  # expected/kmsg: the generator's kernel log lines
NORMAL = "normal"  # expected/normal/: the generator's normal directory
# The interpreter that runs the generator is the one its answer waits fall back to without the
# mount helper (the last word of their ExecStart=); expected/ names it @PYTHON@, so the trees
# hold for every environment.
PYTHON = exec_word(sys.executable, argument=True).encode()
PYTHON_MARK = b"@PYTHON@"


def build_root(case: Path, root: Path) -> FakeTree:
    """The fake root a case describes (see tests/generator/README.md)."""
    spec = json.loads((case / "case.json").read_text(encoding="utf-8"))
    unknown = set(spec) - {"description", "virtiofs", "9p", "udev_rule", "mount_helper"}
    assert not unknown, f"{case.name}/case.json: unknown keys {sorted(unknown)}"
    tree = FakeTree(root)
    for tag in spec.get("virtiofs", []):
        tree.virtiofs(tag)
    for tag in spec.get("9p", []):
        tree.ninep(tag)
    if spec.get("udev_rule", True):
        tree.write(f"usr/lib/udev/rules.d/{RULE_NAME}", "# installed\n")
    if spec.get("mount_helper", True):
        tree.write(MOUNT_HELPER.lstrip("/"), "#!/bin/sh\n", mode=0o755)
    if (case / "policy.yaml").is_file():
        tree.policy((case / "policy.yaml").read_text(encoding="utf-8"))
    for dropin in sorted((case / "policy.d").glob("*")):
        tree.policy(dropin.read_text(encoding="utf-8"), f"policy.d/{dropin.name}")
    if (case / "credential.yaml").is_file():
        text = (case / "credential.yaml").read_bytes()
        tree.write(f"{CREDENTIALS.lstrip('/')}/vfs-agent.policy", text, mode=0o400)
    if (case / "cmdline").is_file():
        tree.write("proc/cmdline", (case / "cmdline").read_bytes())
    if (case / "mountinfo").is_file():
        tree.write("proc/self/mountinfo", (case / "mountinfo").read_bytes())
    return tree


def listing(top: Path) -> dict[str, tuple[str, bytes]]:
    """Every file and symlink below `top`: relative path -> ("file", bytes) | ("link", target).
    Directories count through what they hold (git keeps no empty one)."""
    out: dict[str, tuple[str, bytes]] = {}
    if not top.exists():
        return out
    for dirpath, dirnames, filenames in os.walk(top):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            rel = str(path.relative_to(top))
            if path.is_symlink():
                out[rel] = ("link", os.readlink(path).encode())
            elif path.is_file():
                out[rel] = ("file", path.read_bytes().replace(PYTHON, PYTHON_MARK))
    return out


def with_python(top: Path, old: bytes, new: bytes) -> None:
    """Replace `old` by `new` in every regular file below `top` (see PYTHON_MARK)."""
    for path in top.rglob("*"):
        if path.is_file() and not path.is_symlink():
            path.write_bytes(path.read_bytes().replace(old, new))


def describe_difference(
    expected: dict[str, tuple[str, bytes]], actual: dict[str, tuple[str, bytes]]
) -> str:
    lines = []
    for rel in sorted(set(expected) | set(actual)):
        want, got = expected.get(rel), actual.get(rel)
        if want == got:
            continue
        if want is None or got is None:
            lines.append(f"{'unexpected' if want is None else 'missing'}: {rel}")
            continue
        if want[0] != got[0] or want[0] == "link":
            lines.append(f"{rel}: expected {want!r}, got {got!r}")
            continue
        diff = difflib.unified_diff(
            want[1].decode("utf-8", "replace").splitlines(),
            got[1].decode("utf-8", "replace").splitlines(),
            f"expected/{rel}",
            f"generated/{rel}",
            lineterm="",
        )
        lines.extend(diff)
    return "\n".join(lines)


def run_case(case: Path, tmp_path: Path) -> tuple[FakeTree, Path]:
    """Run the generator on the case's root; returns the tree and the directory holding
    normal/ and kmsg, shaped like expected/."""
    tree = build_root(case, tmp_path / "root")
    out = tmp_path / "out"
    dirs = [out / NORMAL, tmp_path / "early", tmp_path / "late"]
    for directory in dirs:
        directory.mkdir(parents=True)  # systemd creates them before it runs a generator
    done = run_generator(
        tree.root, *dirs, env={"CREDENTIALS_DIRECTORY": CREDENTIALS}, kmsg=out / KMSG
    )
    assert done.returncode == 0, done.stderr  # a generator never fails the boot
    assert done.stderr == "", done.stderr
    for directory in dirs[1:]:
        assert not any(directory.iterdir()), f"wrote into {directory.name}"
    # The memo of the full run (systemd/replay.py) is no unit; test_generator_replay.py
    # replays it. Kept beside the tree, as the daemon keeps it outside the generator's dir.
    memo = out / NORMAL / MEMO_NAME
    if memo.exists():
        memo.rename(tmp_path / MEMO_NAME)
    return tree, out


@pytest.mark.parametrize("case", CASES)
def test_generator_writes_the_golden_tree(case: str, tmp_path: Path) -> None:
    _tree, out = run_case(CASES_DIR / case, tmp_path)
    expected_dir = CASES_DIR / case / "expected"
    if REGENERATE:
        shutil.rmtree(expected_dir, ignore_errors=True)
        shutil.copytree(out, expected_dir, symlinks=True)
        with_python(expected_dir, PYTHON, PYTHON_MARK)
    expected, actual = listing(expected_dir), listing(out)
    assert expected, f"{case}: expected/ is empty; regenerate it (see this module's docstring)"
    assert actual == expected, describe_difference(expected, actual)


def ordered_after_device(unit: bytes) -> bytes:
    """A generator unit as `generate systemd` writes it: those units outlive the boot, so
    every share's unit waits for its device (BindsTo= and After=) where the generator's,
    written for this boot, only stop with the device of a share attached now
    (StopPropagatedFrom=; core/render_systemd.py)."""
    lines = []
    for line in unit.split(b"\n"):
        if line.startswith(b"StopPropagatedFrom="):
            device = line.removeprefix(b"StopPropagatedFrom=")
            lines += [b"BindsTo=" + device, b"After=" + device]
        else:
            lines.append(line)
    return b"\n".join(lines)


@pytest.mark.parametrize("case", CASES)
def test_generate_systemd_writes_the_same_tree(case: str, tmp_path: Path) -> None:
    tree = build_root(CASES_DIR / case, tmp_path / "root")
    expected = listing(CASES_DIR / case / "expected" / NORMAL)
    out = tmp_path / "units"
    result = cli_runner().invoke(
        main, ["--root", str(tree.root), "generate", "systemd", "--output", str(out)]
    )
    if result.exit_code == 2:  # an invalid policy: refused; the generator wrote nothing
        assert expected == {} and listing(out) == {}, result.output
        assert "invalid policy" in (CASES_DIR / case / "expected" / KMSG).read_text()
        return
    assert result.exit_code == 0, result.output
    header = b" by vfs-agent-generator;"
    # The prober's list of the shares attached at boot is for this boot only.
    generator_view = {
        rel: (kind, ordered_after_device(data.replace(header, b";", 1)) if kind == "file" else data)
        for rel, (kind, data) in expected.items()
        if rel != PROBER_DROPIN
    }
    actual = listing(out)
    assert actual == generator_view, describe_difference(generator_view, actual)


def test_every_case_directory_is_a_case() -> None:
    """A case without case.json would silently never run."""
    dirs = sorted(p.name for p in CASES_DIR.iterdir() if p.is_dir())
    assert dirs == CASES
    assert len(CASES) >= 8


WITH_UNITS = [c for c in CASES if any((CASES_DIR / c / "expected" / NORMAL).glob("*.mount"))]


@pytest.mark.parametrize("case", WITH_UNITS)
def test_systemd_analyze_verify_accepts_the_golden_tree(case: str, tmp_path: Path) -> None:
    normal = CASES_DIR / case / "expected" / NORMAL
    units = sorted(normal.glob("*.mount"))
    # A copy: systemd-analyze reads the drop-in directories next to the units as well.
    copy = tmp_path / NORMAL
    shutil.copytree(normal, copy, symlinks=True)
    with_python(copy, PYTHON_MARK, PYTHON)
    env = {**os.environ, "SYSTEMD_UNIT_PATH": str(copy)}
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *(str(copy / u.name) for u in units)],
        capture_output=True,
        env=env,
    )
    output = (done.stdout + done.stderr).decode("utf-8", "replace")
    assert done.returncode == 0, output
    assert [u.name for u in units if u.name in output] == [], output
