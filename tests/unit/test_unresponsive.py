"""A share whose host daemon died: the probe never hangs the agent, the planner leaves the mount
alone, status says `unresponsive`, and `umount --abort` aborts its FUSE connection where the
kernel lists it (never for virtio-fs) and detaches the mount.

A real hung FUSE mount needs a guest (tests/guest/test_host_faults.py); here a statfs that blocks
stands in for it inside the forked probe, which exercises the same deadline, memory and reaping."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from bounded_children import kill_and_reap
from click.testing import CliRunner
from clirunner import cli_runner
from faketree import FakeTree
from test_apply import RecordingKernel

from vfs_agent.commands import operations as ops
from vfs_agent.commands.cli import main
from vfs_agent.core.observation import Discovery, Mounted, Share
from vfs_agent.core.plan import ActionKind, plan
from vfs_agent.core.transport import Transport
from vfs_agent.execute.apply import Executors
from vfs_agent.policy.document import parse_text
from vfs_agent.policy.schema import to_section
from vfs_agent.policy.types import merge
from vfs_agent.system import bounded, liveness
from vfs_agent.system.discovery import discover
from vfs_agent.system.fuse_abort import connection_id
from vfs_agent.system.liveness import Liveness, probe
from vfs_agent.system.sysroot import SysRoot

V = Transport.VIRTIOFS
POLICY = """\
version: 1
mounts:
  - {tag: media_tag, path: /mnt/media}
  - {tag: inner, path: /mnt/media/inner}
  - {tag: other, path: /mnt/other}
"""


@pytest.fixture
def hanging_stat(monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """Paths whose statfs(2) blocks (as on a FUSE mount whose daemon died) or fails ENOTCONN."""
    hang: set[str] = set()
    real_statvfs = os.statvfs

    def fake_statvfs(path: str) -> os.statvfs_result:
        if str(path).endswith("/dead"):
            raise OSError(errno.ENOTCONN, os.strerror(errno.ENOTCONN))
        if str(path) in hang:
            time.sleep(3600)
        return real_statvfs(path)

    monkeypatch.setattr(liveness.os, "statvfs", fake_statvfs)
    return hang


def test_probe_sorts_alive_dead_and_unresponsive_within_the_deadline(
    tmp_path: Path, hanging_stat: set[str]
) -> None:
    for name in ("ok", "dead", "hung"):
        (tmp_path / name).mkdir()
    hanging_stat.add(str(tmp_path / "hung"))
    started = time.monotonic()
    mounts = [("/ok", "0:1"), ("/dead", "0:2"), ("/hung", "0:3")]
    result = probe(SysRoot(tmp_path), mounts, "virtio1=61", timeout=0.5)
    assert time.monotonic() - started < 2.0
    assert result == {
        "/ok": Liveness.ALIVE,
        "/dead": Liveness.DEAD,
        "/hung": Liveness.UNRESPONSIVE,
    }
    # The stuck child is remembered: the next look at the same devices sends no second probe.
    [stuck] = bounded.unreaped()
    assert (tmp_path / "run/vfs-agent/probes/0_3").read_text().startswith(f"{stuck}\n")
    again = probe(SysRoot(tmp_path), [("/hung", "0:3")], "virtio1=61", timeout=0.5)
    assert again == {"/hung": Liveness.UNRESPONSIVE}
    assert bounded.unreaped() == {stuck}
    # Once the devices change (the host removed the dead one), the mount is probed afresh.
    probe(SysRoot(tmp_path), [("/hung", "0:3")], "virtio2=61", timeout=0.2)
    assert len(bounded.unreaped()) == 2
    assert not kill_and_reap(), "probe children must be reaped once they end"


def test_a_hung_probe_does_not_hold_the_callers_output_open(tmp_path: Path) -> None:
    """`vfs-agent status | ...` must end when vfs-agent ends, even if a probe child hangs."""
    script = (
        "import os, sys, time\n"
        "from vfs_agent.system import liveness\n"
        "from pathlib import Path\nfrom vfs_agent.system.sysroot import SysRoot\n"
        "os.statvfs = lambda p: time.sleep(3600)\n"
        f"root = SysRoot(Path({str(tmp_path)!r}))\n"
        "print(liveness.probe(root, [('/x', '0:9')], '', timeout=0.2))\n"
        "for pid in liveness.bounded.unreaped():\n"
        "    print('child', pid, flush=True)\n"
    )
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=20
    )
    assert done.returncode == 0, done.stderr
    assert "UNRESPONSIVE" in done.stdout
    assert time.monotonic() - started < 10
    [child] = [
        int(line.split()[1]) for line in done.stdout.splitlines() if line.startswith("child")
    ]
    os.kill(child, signal.SIGKILL)


def shares(*tags: str) -> Discovery:
    return Discovery(tuple(Share(t, V, f"virtio{i}") for i, t in enumerate(tags)), True)


def pol() -> object:
    return merge([to_section("/etc/vfs-agent/policy.yaml", parse_text(POLICY, "p.yaml"))])


def test_plan_leaves_an_unresponsive_mount_and_everything_below_it_alone() -> None:
    table = [Mounted(100, 1, "/mnt/media", "virtiofs", "media_tag", device="0:100")]
    actions = plan(
        shares("media_tag", "inner", "other"),
        pol(),  # type: ignore[arg-type]
        table,
        unresponsive=frozenset({"/mnt/media"}),
    )
    kinds = {a.tag: a.kind for a in actions}
    assert kinds == {
        "media_tag": ActionKind.UNRESPONSIVE,
        "inner": ActionKind.UNRESPONSIVE,
        "other": ActionKind.MOUNT,
    }
    inner = next(a for a in actions if a.tag == "inner")
    assert "umount --abort /mnt/media" in inner.reason


def test_an_unresponsive_mount_whose_share_is_gone_is_detached() -> None:
    table = [Mounted(100, 1, "/mnt/media", "virtiofs", "media_tag", device="0:100")]
    actions = plan(
        shares("other"),
        pol(),  # type: ignore[arg-type]
        table,
        unresponsive=frozenset({"/mnt/media"}),
    )
    stale = [a for a in actions if a.kind is ActionKind.UNMOUNT_STALE]
    assert [a.path for a in stale] == ["/mnt/media"]


@pytest.fixture
def tree(fake_tree: FakeTree) -> FakeTree:
    root = fake_tree
    for tag in ("media_tag", "other"):
        root.virtiofs(tag)
    root.policy(POLICY)
    root.mounted(("virtiofs", "media_tag", "/mnt/media"), ("virtiofs", "other", "/mnt/other"))
    return root


def test_status_reports_unresponsive_and_keeps_the_others(
    tree: FakeTree, hanging_stat: set[str]
) -> None:
    hanging_stat.add(str(tree.root / "mnt/media"))
    (tree.root / "mnt/other").mkdir(parents=True)
    result = CliRunner().invoke(main, ["--root", str(tree.root), "status", "--json"])
    assert result.exit_code == 0, result.output
    health = {s["tag"]: s["health"] for s in json.loads(result.stdout)["shares"]}
    assert health == {"media_tag": "unresponsive", "other": "mounted", "inner": "absent"}


def test_connection_id_is_the_kernels_dev_t_encoding() -> None:
    assert connection_id("0:53") == 53
    assert connection_id("259:3") == (259 << 20) | 3


def umount_abort(tree: FakeTree, target: str) -> tuple[list[str], RecordingKernel]:
    kernel = RecordingKernel()
    context = ops.Context(SysRoot(tree.root))
    run = Executors.pick(context.sysroot, dry_run=False, kernel=kernel)
    paths = ops.umount(context, target, run, lazy=False, abort=True)
    return paths, kernel


def test_umount_abort_writes_the_connection_abort_then_detaches(tree: FakeTree) -> None:
    abort = tree.write("sys/fs/fuse/connections/100/abort", "")
    paths, mounter = umount_abort(tree, "media_tag")
    assert paths == ["/mnt/media"]
    assert abort.read_text() == "1\n"
    assert mounter.unmounts == [(str(tree.root / "mnt/media"), True)]


def test_umount_abort_of_virtiofs_detaches_and_says_the_kernel_cannot_abort(
    tree: FakeTree, caplog: pytest.LogCaptureFixture
) -> None:
    """virtio-fs connections are not in fusectl (the kernel marks them no_control)."""
    with caplog.at_level("WARNING"):
        paths, mounter = umount_abort(tree, "/mnt/media")
    assert paths == ["/mnt/media"]
    assert mounter.unmounts == [(str(tree.root / "mnt/media"), True)]
    assert "The kernel offers no abort for the virtio-fs mount of 'media_tag'" in caplog.text


def test_umount_abort_refuses_9p(tmp_path: Path) -> None:
    root = FakeTree(tmp_path / "root")
    root.ninep("p9")
    root.policy("version: 1\n")
    root.mounted(("9p", "p9", "/mnt/p9"))
    result = cli_runner().invoke(main, ["--root", str(root.root), "umount", "--abort", "p9"])
    assert result.exit_code == 1
    assert "--abort applies to virtio-fs mounts only" in result.stderr


def test_bounded_run_returns_the_errno_or_times_out_without_waiting_for_the_child() -> None:
    def fails() -> int:
        raise OSError(errno.EBUSY, "busy")

    assert bounded.run(lambda: 0, 5) == 0
    assert bounded.run(fails, 5) == errno.EBUSY
    started = time.monotonic()
    assert bounded.run(lambda: time.sleep(3600) or 0, 0.3) == bounded.TIMED_OUT
    assert time.monotonic() - started < 2


def test_bounded_calls_of_one_child_answer_each_as_it_returns() -> None:
    """spawn_each(): one fork for several calls; a call that hangs holds back no other, and the
    child with it is left running (and later reaped), as a late spawn() child is."""

    def fails() -> int:
        raise OSError(errno.ENOTCONN, "gone")

    def breaks() -> int:
        raise ValueError("no errno")  # its thread dies without an answer

    child = bounded.spawn_each([lambda: 0, fails, lambda: 0])
    assert bounded.wait_each(child, 3, 5) == {0: 0, 1: errno.ENOTCONN, 2: 0}
    assert child.pid not in bounded.unreaped()

    started = time.monotonic()
    hung = bounded.spawn_each([lambda: time.sleep(3600) or 0, lambda: 0, breaks])
    answers = bounded.wait_each(hung, 3, 0.5)
    assert answers == {0: bounded.TIMED_OUT, 1: 0, 2: bounded.TIMED_OUT}
    assert time.monotonic() - started < 2
    assert bounded.unreaped() == {hung.pid}
    assert not kill_and_reap()


def test_probe_forks_once_for_all_the_mounts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each fork of the agent costs tens of milliseconds of CPU under emulation, at every look."""
    real_fork = os.fork
    forks: list[int] = []

    def counting_fork() -> int:
        pid = real_fork()
        if pid:
            forks.append(pid)
        return pid

    monkeypatch.setattr(bounded.os, "fork", counting_fork)
    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
    mounts = [("/a", "0:1"), ("/b", "0:2"), ("/c", "0:3")]
    result = probe(SysRoot(tmp_path), mounts, "virtio1=61", timeout=5)
    assert result == dict.fromkeys(["/a", "/b", "/c"], Liveness.ALIVE)
    assert len(forks) == 1
    assert not bounded.unreaped()


def test_bounded_child_keeps_only_the_descriptors_it_is_given(tmp_path: Path) -> None:
    kept = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    dropped = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    try:

        def check() -> int:
            os.fstat(kept)
            try:
                os.fstat(dropped)
            except OSError:
                return 0
            return errno.EEXIST  # the child still had it

        assert bounded.run(check, 5, keep=[kept]) == 0
    finally:
        os.close(kept)
        os.close(dropped)


def test_a_device_stuck_in_removal_is_reported(tmp_path: Path) -> None:
    """The PCI function has let go of its driver, its virtio device is still below it and
    already gone from /sys/bus/virtio and /sys/fs/virtiofs: the kernel is removing it."""
    root = FakeTree(tmp_path / "root")
    root.virtiofs("alive")
    pci = root.root / "sys/devices/pci0000:00/0000:00:09.0"
    (pci / "virtio7").mkdir(parents=True)
    (pci / "vendor").write_text("0x1af4\n")
    (pci / "device").write_text("0x105a\n")
    (root.root / "sys/bus/pci/devices").mkdir(parents=True, exist_ok=True)
    (root.root / "sys/bus/pci/devices/0000:00:09.0").symlink_to(pci)
    found = discover(SysRoot(root.root))
    assert [s.tag for s in found.shares] == ["alive"]
    assert found.complete
    [problem] = found.problems
    assert problem.startswith("virtio-fs device 0000:00:09.0 (virtio7) is being removed;")
    # Bound again (or never in removal): nothing to report.
    (pci / "driver").symlink_to(root.root / "sys/bus/pci/drivers/virtio-pci")
    (root.root / "sys/bus/pci/drivers/virtio-pci").mkdir(parents=True)
    assert discover(SysRoot(root.root)).problems == ()


NONEMPTY = """\
version: 1
mounts:
  - {tag: media_tag, path: /mnt/media}
  - {tag: other, path: /mnt/other, on_nonempty: refuse}
"""


def test_a_mountpoint_holding_files_warns_or_is_refused(tmp_path: Path) -> None:
    root = FakeTree(tmp_path / "root")
    for tag in ("media_tag", "other"):
        root.virtiofs(tag)
    root.policy(NONEMPTY)
    root.write("mnt/media/old-file", "hidden by the mount\n")
    root.write("mnt/other/old-file", "hidden by the mount\n")
    result = CliRunner().invoke(main, ["--root", str(root.root), "plan", "--json"])
    assert result.exit_code == 0, result.output
    actions = {a["tag"]: a for a in json.loads(result.stdout)["actions"]}
    assert actions["media_tag"]["action"] == "mount"
    assert actions["media_tag"]["warning"] == (
        "/mnt/media is not empty: its files are hidden while the share is mounted"
    )
    assert actions["other"]["action"] == "refuse"
    assert "not empty (on_nonempty: refuse)" in actions["other"]["reason"]
    status = CliRunner().invoke(main, ["--root", str(root.root), "status", "--json"])
    health = {s["tag"]: s for s in json.loads(status.stdout)["shares"]}
    assert "warning: /mnt/media is not empty" in health["media_tag"]["detail"]
    assert health["other"]["health"] == "blocked"
    # An empty directory, or none at all, is no reason to warn.
    (root.root / "mnt/media/old-file").unlink()
    result = CliRunner().invoke(main, ["--root", str(root.root), "plan", "--json"])
    assert {a["tag"]: a["warning"] for a in json.loads(result.stdout)["actions"]} == {
        "media_tag": None,
        "other": None,
    }
