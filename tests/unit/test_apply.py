import errno
import os
from pathlib import Path

from vfs_agent.core.mount_options import MS_NODEV, MS_NOSUID, MS_RDONLY
from vfs_agent.core.plan import Action, ActionKind
from vfs_agent.core.transport import Transport
from vfs_agent.execute.apply import Executors, apply_plan
from vfs_agent.execute.outcome import Outcome
from vfs_agent.execute.route import Step
from vfs_agent.system.sysroot import SysRoot


class RecordingKernel:
    """A fake of the kernel calls. Resolves the /proc/self/fd target at call time, as the kernel
    would; `fail` maps a tag to the errno its mount fails with, `missing` a transport to the
    problem loading its filesystem reports."""

    def __init__(
        self, fail: dict[str, int] | None = None, missing: dict[Transport, str] | None = None
    ) -> None:
        self.mounts: list[tuple[str, str, str, int, str]] = []
        self.unmounts: list[tuple[str, bool]] = []
        self.loaded: list[Transport] = []
        self.fail = fail or {}
        self.missing = missing or {}

    def mount(self, source: str, target: str, fstype: str, flags: int, data: str) -> None:
        if source in self.fail:
            raise OSError(self.fail[source], os.strerror(self.fail[source]))
        self.mounts.append((source, os.readlink(target), fstype, flags, data))

    def umount(self, target: str, *, lazy: bool = False) -> None:
        self.unmounts.append((target, lazy))

    def load_filesystem(self, transport: Transport) -> str | None:
        self.loaded.append(transport)
        return self.missing.get(transport)

    def load_driver(self, transport: Transport) -> str | None:
        return None


def apply(
    actions: list[Action], root: Path, kernel: RecordingKernel, *, dry_run: bool = False
) -> list[Outcome]:
    sysroot = SysRoot(root)
    run = Executors.pick(sysroot, dry_run=dry_run, kernel=kernel)
    return apply_plan([Step(a) for a in actions], run)


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
    kernel = RecordingKernel()
    action = mount_action(
        "weird tag#1", "/mnt/virtiofs/weird%20tag%231", ("nosuid", "nodev", "ro", "dax=never")
    )
    [outcome] = apply([action], tmp_path, kernel)
    assert outcome.ok and outcome.changed
    [(source, target, fstype, flags, data)] = kernel.mounts
    assert (source, fstype) == ("weird tag#1", "virtiofs")
    assert target == str(tmp_path / "mnt/virtiofs/weird%20tag%231")
    assert flags == MS_NOSUID | MS_NODEV | MS_RDONLY
    assert data == "dax=never"


def test_symlink_component_is_refused_and_nothing_is_created_through_it(tmp_path: Path):
    (tmp_path / "mnt").mkdir()
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", tmp_path / "mnt/link")
    kernel = RecordingKernel()
    [outcome] = apply([mount_action("t", "/mnt/link/t", required=True)], tmp_path, kernel)
    assert not outcome.ok and outcome.fatal
    assert "symlink" in outcome.message
    assert kernel.mounts == [] and list((tmp_path / "elsewhere").iterdir()) == []


def test_errno_becomes_an_actionable_message_and_optional_failures_are_not_fatal(tmp_path: Path):
    kernel = RecordingKernel(fail={"nosuch": errno.ENOENT, "nofs": errno.ENODEV})
    outcomes = apply(
        [mount_action("nosuch", "/mnt/a"), mount_action("nofs", "/mnt/b", required=True)],
        tmp_path,
        kernel,
    )
    assert "has no virtio-fs share with tag 'nosuch'" in outcomes[0].message
    assert not outcomes[0].fatal
    assert "vfs-agent kernel" in outcomes[1].message and outcomes[1].fatal


def test_dry_run_creates_and_mounts_nothing(tmp_path: Path):
    kernel = RecordingKernel()
    [outcome] = apply([mount_action("t", "/mnt/t")], tmp_path, kernel, dry_run=True)
    assert outcome.ok and not outcome.changed and "would mount" in outcome.message
    assert not (tmp_path / "mnt").exists() and kernel.mounts == []


def test_stale_mounts_are_unmounted_lazily_and_prepare_runs_once_per_type(tmp_path: Path):
    kernel = RecordingKernel()
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
    apply(actions, tmp_path, kernel)
    assert kernel.unmounts == [(str(tmp_path / "mnt/gone"), True)]
    assert kernel.loaded == [Transport.VIRTIOFS]


def test_absent_required_share_fails(tmp_path: Path):
    action = Action(
        kind=ActionKind.ABSENT,
        tag="gone",
        reason="why",
        path="/mnt/gone",
        transport=Transport.VIRTIOFS,
        required=True,
    )
    [outcome] = apply([action], tmp_path, RecordingKernel())
    assert outcome.fatal and "not attached" in outcome.message
