"""The generator's replay (systemd/replay.py): the last full run's output written again when
none of its inputs changed, and the full run whenever one did.

The oracle is the full generator itself: a replay must write exactly the golden tree the full
run writes, and after any change to an input the output must be the full run's on the changed
system, never the memo's."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from faketree import FakeTree, run_generator, write_policy
from test_generator_golden import (
    CASES,
    CASES_DIR,
    CREDENTIALS,
    KMSG,
    NORMAL,
    describe_difference,
    listing,
    run_case,
)

import vfs_agent
from vfs_agent.system.safe_io import read_regular
from vfs_agent.systemd import generator, replay
from vfs_agent.systemd.installed import MOUNT_HELPER, RULE_NAME
from vfs_agent.systemd.replay import KEPT, MEMO_NAME, REPLAYED, SYSTEM_GENERATOR_DIR

POLICY = """\
version: 1
mounts:
  - {tag: media_tag, path: /mnt/media, required: true}
  - {tag: "data-*", path: "/srv/{tag}"}
"""


def keep(memo: Path, root: Path) -> Path:
    """Put a full run's memo where the daemon keeps it (keep_memo's modes)."""
    kept = root / KEPT.lstrip("/")
    kept.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(kept.parent, 0o755)
    shutil.copyfile(memo, kept)
    os.chmod(kept, 0o600)
    return kept


def generate(root: Path, out: Path, **env: str) -> tuple[dict[str, tuple[str, bytes]], str]:
    """The generator's entry point into a fresh `out`: the tree it wrote (the memo left out)
    and its kernel log."""
    out.mkdir(parents=True)
    kmsg = out.parent / f"{out.name}.kmsg"
    done = run_generator(root, out, env={"CREDENTIALS_DIRECTORY": CREDENTIALS, **env}, kmsg=kmsg)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    tree = {k: v for k, v in listing(out).items() if k != MEMO_NAME}
    return tree, kmsg.read_text() if kmsg.exists() else ""


@pytest.mark.parametrize("case", CASES)
def test_a_replay_writes_the_golden_tree_again(case: str, tmp_path: Path) -> None:
    tree, _ = run_case(CASES_DIR / case, tmp_path)
    expected = listing(CASES_DIR / case / "expected")
    memo = tmp_path / MEMO_NAME
    if not memo.exists():  # no units: an invalid policy is never remembered
        assert "no mount units generated" in expected[KMSG][1].decode()
        return
    keep(memo, tree.root)
    dirs = [tmp_path / "again" / NORMAL, tmp_path / "early2", tmp_path / "late2"]
    for directory in dirs:
        directory.mkdir(parents=True)
    done = run_generator(
        tree.root,
        *dirs,
        env={"CREDENTIALS_DIRECTORY": CREDENTIALS},
        kmsg=tmp_path / "again" / KMSG,
        importtime=True,
    )
    assert done.returncode == 0
    # The whole point: none of the policy, discovery or rendering is imported.
    loaded = {line.rsplit("|", 1)[1].strip() for line in done.stderr.splitlines() if "|" in line}
    assert not {"vfs_agent.core", "vfs_agent.policy", "dataclasses", "pathlib"} & loaded
    assert not (tmp_path / "again" / NORMAL / MEMO_NAME).exists()  # nothing new to remember
    lines = (tmp_path / "again" / KMSG).read_text().splitlines(keepends=True)
    assert REPLAYED in lines[0]
    (tmp_path / "again" / KMSG).write_text("".join(lines[1:]))
    actual = listing(tmp_path / "again")
    assert actual == expected, describe_difference(expected, actual)


@pytest.fixture
def tree(fake_tree: FakeTree, tmp_path: Path) -> FakeTree:
    """A system whose full run left a kept memo; a first replay proves it holds."""
    fake_tree.policy(POLICY)
    fake_tree.virtiofs("media_tag")
    fake_tree.virtiofs("data-1")
    fake_tree.write(f"usr/lib/udev/rules.d/{RULE_NAME}", "# installed\n")
    fake_tree.write("proc/cmdline", "root=/dev/vda ro quiet\n")
    _, log = generate(fake_tree.root, tmp_path / "full")
    assert REPLAYED not in log
    keep(tmp_path / "full" / MEMO_NAME, fake_tree.root)
    _, log = generate(fake_tree.root, tmp_path / "replayed")
    assert REPLAYED in log
    return fake_tree


def _touch_module(tree: FakeTree) -> None:
    module = Path(vfs_agent.__file__).parent / "core" / "plan.py"
    st = module.stat()
    os.utime(module, ns=(st.st_atime_ns, st.st_mtime_ns + 1))


CHANGES: dict[str, Callable[[FakeTree], object]] = {
    "policy file edited": lambda t: t.policy(POLICY.replace("/mnt/media", "/mnt/other")),
    "policy file group-writable": lambda t: write_policy(
        t.root / "etc/vfs-agent/policy.yaml", POLICY, mode=0o664
    ),
    "drop-in added": lambda t: t.policy("version: 1\nmounts: [{tag: x}]\n", "policy.d/a.yaml"),
    "credential added": lambda t: t.write(
        f"{CREDENTIALS.lstrip('/')}/vfs-agent.policy", "version: 1\nmounts: [{tag: y}]\n"
    ),
    "kernel command line argument": lambda t: t.write(
        "proc/cmdline", "root=/dev/vda ro vfs_agent.mount=z:/srv/z\n"
    ),
    "kernel command line, other words": lambda t: t.write("proc/cmdline", "root=/dev/vda ro\n"),
    "share attached": lambda t: t.virtiofs("data-2"),
    "share detached": lambda t: t.set_tags(["media_tag"]),
    "tag changed": lambda t: t.set_tags(["media_tag", "data-9"]),
    "9p share attached": lambda t: t.ninep("ninep_tag"),
    "udev rule removed": lambda t: (t.root / f"usr/lib/udev/rules.d/{RULE_NAME}").unlink(),
    "mount helper installed": lambda t: t.write(MOUNT_HELPER.lstrip("/"), "#!/bin/sh\n"),
    "a module of vfs-agent changed": _touch_module,
}


@pytest.mark.parametrize("change", CHANGES)
def test_any_changed_input_runs_the_generator_in_full(
    change: str, tree: FakeTree, tmp_path: Path
) -> None:
    CHANGES[change](tree)
    written, log = generate(tree.root, tmp_path / "after")
    assert REPLAYED not in log
    kept = tree.root / KEPT.lstrip("/")
    kept.unlink()  # the oracle: the full run on the changed system
    full, full_log = generate(tree.root, tmp_path / "oracle")
    assert written == full, describe_difference(full, written)
    assert log == full_log


def test_another_credentials_directory_runs_in_full(tree: FakeTree, tmp_path: Path) -> None:
    _, log = generate(tree.root, tmp_path / "after", CREDENTIALS_DIRECTORY="/run/other")
    assert REPLAYED not in log


@pytest.mark.parametrize(
    "spoil",
    [
        pytest.param(lambda kept: os.chmod(kept, 0o644), id="readable by others"),
        pytest.param(lambda kept: os.chmod(kept, 0o620), id="writable by group"),
        pytest.param(lambda kept: os.chmod(kept.parent, 0o777), id="directory writable by all"),
        pytest.param(lambda kept: kept.write_bytes(b"not a memo"), id="not a memo"),
        pytest.param(lambda kept: kept.write_bytes(kept.read_bytes()[:-40]), id="cut short"),
        pytest.param(
            lambda kept: kept.write_bytes(kept.read_bytes().replace(b"media_tag", b"media_taG")),
            id="edited",
        ),
    ],
)
def test_an_untrusted_or_damaged_memo_is_not_replayed(
    spoil: Callable[[Path], object], tree: FakeTree, tmp_path: Path
) -> None:
    kept = tree.root / KEPT.lstrip("/")
    spoil(kept)
    os.chmod(kept, os.stat(kept).st_mode & 0o777)
    written, log = generate(tree.root, tmp_path / "after")
    assert REPLAYED not in log
    assert "mnt-media.mount" in written


def test_a_unit_already_there_is_left_to_the_full_run(tree: FakeTree, tmp_path: Path) -> None:
    """Another generator's file of the same name: the full run's rules decide (it refuses)."""
    out = tmp_path / "after"
    out.mkdir()
    (out / "mnt-media.mount").write_text("[Mount]\nWhat=other\n")
    kmsg = tmp_path / "after.kmsg"
    run_generator(tree.root, out, env={"CREDENTIALS_DIRECTORY": CREDENTIALS}, kmsg=kmsg)
    log = kmsg.read_text()
    assert REPLAYED not in log and "was not generated by vfs-agent" in log
    assert (out / "mnt-media.mount").read_text() == "[Mount]\nWhat=other\n"


def test_no_memo_when_an_input_changes_during_the_run(
    fake_tree: FakeTree, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A share plugged while the generator runs must not pair the old reads with the output."""
    fake_tree.policy(POLICY)
    fake_tree.virtiofs("media_tag")
    monkeypatch.setenv("VFS_AGENT_ROOT", str(fake_tree.root))
    monkeypatch.setenv("VFS_AGENT_KMSG", str(tmp_path / "kmsg"))
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", CREDENTIALS)
    assert generator.main([str(tmp_path / "calm")]) == 0
    assert (tmp_path / "calm" / MEMO_NAME).exists()

    discover = generator.discover

    def discover_then_plug(*args: object, **kwargs: object) -> object:
        found = discover(*args, **kwargs)  # type: ignore[arg-type]
        fake_tree.virtiofs("data-1")
        return found

    monkeypatch.setattr(generator, "discover", discover_then_plug)
    assert generator.main([str(tmp_path / "busy")]) == 0
    assert (tmp_path / "busy" / "mnt-media.mount").exists()
    assert not (tmp_path / "busy" / MEMO_NAME).exists()


def test_the_memo_is_readable_by_root_alone(tree: FakeTree, tmp_path: Path) -> None:
    """It holds the host's credential and command line."""
    assert os.stat(tmp_path / "full" / MEMO_NAME).st_mode & 0o777 == 0o600


def test_keep_memo_copies_this_boots_memo_once(tree: FakeTree, tmp_path: Path) -> None:
    root = tree.root
    kept = root / KEPT.lstrip("/")
    kept.unlink()
    assert replay.keep_memo(str(root)) is False  # the generator left none
    run_dir = root / SYSTEM_GENERATOR_DIR.lstrip("/")
    run_dir.parent.mkdir(parents=True)
    shutil.copytree(tmp_path / "full", run_dir)
    assert replay.keep_memo(str(root)) is True
    assert read_regular(kept) == (run_dir / MEMO_NAME).read_bytes()
    assert os.stat(kept).st_mode & 0o777 == 0o600
    assert replay.keep_memo(str(root)) is False  # it holds that one already
    os.chmod(run_dir / MEMO_NAME, 0o644)  # not one the generator left: never kept
    kept.unlink()
    assert replay.keep_memo(str(root)) is False and not kept.exists()


def test_a_memo_that_cannot_be_written_costs_only_the_next_boots_speed(
    fake_tree: FakeTree, tmp_path: Path
) -> None:
    fake_tree.policy(POLICY)
    fake_tree.virtiofs("media_tag")
    out = tmp_path / "out"
    (out / MEMO_NAME).mkdir(parents=True)  # in the way: the memo is refused
    kmsg = tmp_path / "kmsg"
    done = run_generator(fake_tree.root, out, kmsg=kmsg)
    assert done.returncode == 0 and done.stderr == ""
    assert (out / "mnt-media.mount").exists()
    assert f"cannot write {MEMO_NAME}" in kmsg.read_text()
    assert "the next boot runs in full" in kmsg.read_text()


def test_the_memo_checks_each_read_once(tree: FakeTree, tmp_path: Path) -> None:
    """A full run reads the policy's layers twice; the replay at boot repeats neither."""
    memo = replay.load(str(tree.root / KEPT.lstrip("/")))
    assert memo is not None
    reads = [(reader, args) for reader, args, _ in memo[1]]
    assert len(reads) == len(set(reads))
    assert any(reader == "owner_and_mode" for reader, _ in reads)  # the layers are in it
