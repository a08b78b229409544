import errno
import os
from pathlib import Path

from vfs_agent.core.model import Transport
from vfs_agent.core.mount_options import MS_NODEV, MS_NOSUID, MS_RDONLY
from vfs_agent.core.plan import Action, ActionKind
from vfs_agent.execute.apply import apply_plan
from vfs_agent.system.sysroot import SysRoot


class RecordingMounter:
    """Resolves the /proc/self/fd target at call time, as the kernel would."""

    def __init__(self, fail: dict[str, int] | None = None) -> None:
        self.mounts: list[tuple[str, str, str, int, str]] = []
        self.unmounts: list[tuple[str, bool]] = []
        self.fail = fail or {}

    def mount(self, source: str, target: str, fstype: str, flags: int, data: str) -> None:
        if source in self.fail:
            raise OSError(self.fail[source], os.strerror(self.fail[source]))
        self.mounts.append((source, os.readlink(target), fstype, flags, data))

    def umount(self, target: str, *, lazy: bool = False) -> None:
        self.unmounts.append((target, lazy))


def mount_action(tag: str, path: str, options=("nosuid", "nodev"), required=False) -> Action:
    return Action(
        kind=ActionKind.MOUNT,
        tag=tag,
        reason="test",
        path=path,
        transport=Transport.VIRTIOFS,
        options=tuple(options),
        required=required,
    )


def test_mount_creates_the_mountpoint_and_passes_flags(tmp_path: Path):
    mounter = RecordingMounter()
    action = mount_action(
        "weird tag#1", "/mnt/virtiofs/weird%20tag%231", ("nosuid", "nodev", "ro", "dax=never")
    )
    [outcome] = apply_plan([action], SysRoot(tmp_path), mounter)
    assert outcome.ok and outcome.changed
    [(source, target, fstype, flags, data)] = mounter.mounts
    assert (source, fstype) == ("weird tag#1", "virtiofs")
    assert target == str(tmp_path / "mnt/virtiofs/weird%20tag%231")
    assert flags == MS_NOSUID | MS_NODEV | MS_RDONLY
    assert data == "dax=never"


def test_symlink_component_is_refused_and_nothing_is_created_through_it(tmp_path: Path):
    (tmp_path / "mnt").mkdir()
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", tmp_path / "mnt/link")
    mounter = RecordingMounter()
    [outcome] = apply_plan(
        [mount_action("t", "/mnt/link/t", required=True)], SysRoot(tmp_path), mounter
    )
    assert not outcome.ok and outcome.fatal
    assert "symlink" in outcome.message
    assert mounter.mounts == [] and list((tmp_path / "elsewhere").iterdir()) == []


def test_errno_becomes_an_actionable_message_and_optional_failures_are_not_fatal(tmp_path: Path):
    mounter = RecordingMounter(fail={"nosuch": errno.ENOENT, "nofs": errno.ENODEV})
    outcomes = apply_plan(
        [mount_action("nosuch", "/mnt/a"), mount_action("nofs", "/mnt/b", required=True)],
        SysRoot(tmp_path),
        mounter,
    )
    assert "has no virtio-fs share with tag 'nosuch'" in outcomes[0].message
    assert not outcomes[0].fatal
    assert "vfs-agent kernel" in outcomes[1].message and outcomes[1].fatal


def test_dry_run_creates_and_mounts_nothing(tmp_path: Path):
    mounter = RecordingMounter()
    [outcome] = apply_plan([mount_action("t", "/mnt/t")], SysRoot(tmp_path), mounter, dry_run=True)
    assert outcome.ok and not outcome.changed and "would mount" in outcome.message
    assert not (tmp_path / "mnt").exists() and mounter.mounts == []


def test_stale_mounts_are_unmounted_lazily_and_prepare_runs_once_per_type(tmp_path: Path):
    mounter = RecordingMounter()
    prepared: list[Transport] = []
    actions = [
        Action(
            kind=ActionKind.UNMOUNT_STALE,
            tag="gone",
            reason="gone",
            path="/mnt/gone",
            transport=Transport.VIRTIOFS,
        ),
        mount_action("a", "/mnt/a"),
        mount_action("b", "/mnt/b"),
    ]
    apply_plan(actions, SysRoot(tmp_path), mounter, prepare=lambda t: prepared.append(t) or None)
    assert mounter.unmounts == [(str(tmp_path / "mnt/gone"), True)]
    assert prepared == [Transport.VIRTIOFS]


def test_absent_required_share_fails(tmp_path: Path):
    action = Action(
        kind=ActionKind.ABSENT,
        tag="gone",
        reason="why",
        path="/mnt/gone",
        transport=Transport.VIRTIOFS,
        required=True,
    )
    [outcome] = apply_plan([action], SysRoot(tmp_path), RecordingMounter())
    assert outcome.fatal and "not attached" in outcome.message
