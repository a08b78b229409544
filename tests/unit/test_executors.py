"""Each executor on its own, and the executors a command picks: a fake tree, a fake of the kernel
calls, and a fake `systemctl` on PATH (the real `start_unit` runs it)."""

from __future__ import annotations

import dataclasses
import errno
import os
from pathlib import Path

import pytest
from faketree import FakeTree
from test_apply import RecordingKernel, mount_action

from vfs_agent.commands import operations as ops
from vfs_agent.core.observation import Mounted
from vfs_agent.core.plan import Action, ActionKind
from vfs_agent.core.render_systemd import GENERATED_MARK
from vfs_agent.core.transport import Transport
from vfs_agent.execute.apply import Executors, apply_plan
from vfs_agent.execute.dry_run import DryRun
from vfs_agent.execute.executor import UnmountError
from vfs_agent.execute.kernel import KernelExecutor, LiveKernelCalls
from vfs_agent.execute.outcome import Outcome
from vfs_agent.execute.route import Situation, Step, SystemdMode
from vfs_agent.execute.systemd import (
    GRACE,
    LeftToSystemd,
    OtherRootSystemd,
    SystemdStart,
    SystemdStop,
)
from vfs_agent.execute.verdict import Verdict
from vfs_agent.system.sysroot import SysRoot

SYSTEMCTL = """\
#!/bin/sh
echo "$@" >> "{log}"
if [ "$1" = show ]; then cat "{log}.show"; exit; fi
for unit; do :; done
case "$unit" in
  fail-*) echo "Job for $unit failed because the control process exited with error code." >&2
          exit 1;;
esac
"""


@pytest.fixture
def systemctl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A `systemctl` first on PATH that logs its arguments; units named fail-* fail; `show`
    prints what the test wrote to `<log>.show`."""
    bindir, log = tmp_path / "bin", tmp_path / "systemctl.log"
    bindir.mkdir()
    script = bindir / "systemctl"
    script.write_text(SYSTEMCTL.format(log=log))
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    return log


@pytest.fixture
def tree(tmp_path: Path) -> FakeTree:
    return FakeTree(tmp_path / "root")


def stale(path: str = "/mnt/gone", *, share_gone: bool = True) -> Action:
    return Action(
        kind=ActionKind.UNMOUNT_STALE,
        tag="gone",
        reason="its share is gone" if share_gone else "it is dead (ENOTCONN)",
        path=path,
        transport=Transport.VIRTIOFS,
        share_gone=share_gone,
    )


# --- dry run ---------------------------------------------------------------------------------


def test_dry_run_says_what_it_would_do_for_each_kind_of_change():
    dry = DryRun()
    mount = mount_action("t", "/mnt/t")
    outcomes = [
        dry.carry_out(Step(mount)),
        dry.carry_out(Step(mount, "mnt-t.mount")),
        dry.carry_out(Step(stale())),
        dry.carry_out(Step(stale(), "mnt-gone.mount")),
        dry.carry_out(Step(stale(share_gone=False), "mnt-gone.mount")),
    ]
    assert [o.message for o in outcomes] == [
        "would mount 't' on /mnt/t",
        "would start mnt-t.mount",
        "would unmount /mnt/gone lazily (its share is gone)",
        "would stop mnt-gone.mount (its share is gone)",
        "would unmount /mnt/gone lazily (it is dead (ENOTCONN))",
    ]
    assert all(o.ok and not o.changed for o in outcomes)


def test_a_dry_run_umount_unmounts_nothing(tmp_path: Path):
    kernel = RecordingKernel()
    run = Executors.pick(SysRoot(tmp_path), dry_run=True, kernel=kernel)
    run.unmounter.unmount(Mounted(30, 1, "/mnt/t", "virtiofs", "t"), lazy=False, abort=True)
    assert kernel.unmounts == [] and isinstance(run.unmounter, DryRun)


def test_a_dry_run_plan_loads_mounts_and_starts_nothing(tmp_path: Path, systemctl: Path):
    kernel = RecordingKernel()
    run = Executors.pick(SysRoot(tmp_path), dry_run=True, kernel=kernel)
    run = dataclasses.replace(run, situation=Situation(live=True, dry_run=True))
    steps = [Step(mount_action("a", "/mnt/a"), "mnt-a.mount"), Step(mount_action("b", "/mnt/b"))]
    steps.append(Step(stale()))
    outcomes = apply_plan(steps, run)
    assert [o.message.split()[1] for o in outcomes] == ["start", "mount", "unmount"]
    assert (kernel.loaded, kernel.mounts, kernel.unmounts) == ([], [], [])
    assert not systemctl.exists() and not (tmp_path / "mnt").exists()


# --- verdicts --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "required", "ok", "message"),
    [
        (ActionKind.KEEP, True, True, "/mnt/t: already mounted"),
        (ActionKind.IGNORE, False, True, "the reason"),
        (ActionKind.ABSENT, False, True, "share 't' is not attached"),
        (ActionKind.ABSENT, True, False, "share 't' is not attached"),
        (ActionKind.CONFLICT, False, False, "the reason"),
        (ActionKind.REFUSE, True, False, "the reason"),
        (ActionKind.UNRESPONSIVE, False, False, "the reason"),
    ],
)
def test_verdicts_change_nothing(kind: ActionKind, required: bool, ok: bool, message: str):
    action = Action(
        kind=kind,
        tag="t",
        reason="the reason",
        path="/mnt/t",
        transport=Transport.VIRTIOFS,
        required=required,
    )
    outcome = Verdict().carry_out(Step(action))
    assert (outcome.ok, outcome.changed, outcome.message) == (ok, False, message)


# --- systemd ---------------------------------------------------------------------------------


def test_systemd_start_runs_systemctl_start_for_the_unit(systemctl: Path):
    outcome = SystemdStart().carry_out(Step(mount_action("t", "/mnt/t"), "mnt-t.mount"))
    assert systemctl.read_text() == "start mnt-t.mount\n"
    assert (outcome.ok, outcome.changed) == (True, True)
    assert outcome.message == "Mounted share 't' on /mnt/t (mnt-t.mount)."


def test_a_unit_that_fails_to_start_says_why_in_systemctls_words(systemctl: Path):
    action = mount_action("t", "/mnt/t", required=True)
    outcome = SystemdStart().carry_out(Step(action, "fail-t.mount"))
    assert not outcome.ok and outcome.fatal and not outcome.changed
    assert outcome.message == (
        "Failed to mount share 't' on /mnt/t via fail-t.mount: systemctl start fail-t.mount "
        "failed: exit status 1: Job for fail-t.mount failed because the control process exited "
        "with error code."
    )


@pytest.mark.parametrize(
    ("unit", "detached", "message"),
    [
        (
            "mnt-gone.mount",
            False,
            "Unmounted /mnt/gone (its share is gone) by stopping mnt-gone.mount.",
        ),
        # No mount of a gone share is left behind: the kernel detaches it, and the message says
        # what systemctl answered.
        (
            "fail-gone.mount",
            True,
            "systemctl stop --job-mode=fail fail-gone.mount failed: exit status 1: Job for "
            "fail-gone.mount failed "
            "because the control process exited with error code.; "
            "Unmounted /mnt/gone (its share is gone).",
        ),
    ],
)
def test_systemd_stop_stops_the_unit_of_a_gone_share_or_else_the_kernel_unmounts_it(
    tmp_path: Path, systemctl: Path, unit: str, detached: bool, message: str
):
    kernel = RecordingKernel()
    stop = SystemdStop(KernelExecutor(SysRoot(tmp_path), kernel), attached=lambda a: False)
    outcome = stop.carry_out(Step(stale("/mnt/gone"), unit))
    # --job-mode=fail: systemd refuses a stop that would cancel a start job queued meanwhile
    assert systemctl.read_text() == f"stop --job-mode=fail {unit}\n"
    assert (outcome.ok, outcome.changed, outcome.message) == (True, True, message)
    # Stopped, the unit unmounted the share: nothing is unmounted behind systemd's back.
    assert kernel.unmounts == ([(str(tmp_path / "mnt/gone"), True)] if detached else [])


@pytest.mark.parametrize("back", ["before", "after the stop failed"])
def test_the_unit_of_a_share_attached_again_is_left_to_systemd(
    tmp_path: Path, systemctl: Path, back: str
):
    # Plugged again since the plan: systemd starts the unit as the device comes back, and a
    # stop (or the kernel's unmount) would take the new share away for good.
    kernel = RecordingKernel()
    asked = []

    def attached(action: Action) -> bool:
        asked.append(action.tag)
        return back == "before" or len(asked) > 1

    stop = SystemdStop(KernelExecutor(SysRoot(tmp_path), kernel), attached)
    outcome = stop.carry_out(Step(stale("/mnt/gone"), "fail-gone.mount"))
    assert (outcome.ok, outcome.changed) == (True, False)
    assert outcome.message == "share 'gone' is attached again: left to systemd (fail-gone.mount)"
    assert kernel.unmounts == []
    stopped = "stop --job-mode=fail fail-gone.mount\n"
    assert (systemctl.exists() and systemctl.read_text()) == (back != "before" and stopped)


def test_another_roots_systemd_starts_nothing(systemctl: Path):
    step = Step(mount_action("t", "/mnt/t"), "mnt-t.mount")
    other = OtherRootSystemd(Path("/img")).carry_out(step)
    assert (other.ok, other.changed) == (True, False)
    assert other.message == "left to systemd inside /img (mnt-t.mount); --root starts no unit"
    assert not systemctl.exists()


def shown(mount: str, device: str) -> str:
    """`systemctl show` of a mount unit and its device: "STATE EXIT ENTER ACTIVE [job]"."""

    def block(spec: str) -> str:
        state, exit_, enter, active, *job = spec.split()
        return (
            f"ActiveState={state}\nJob={job[0] if job else ''}\n"
            f"InactiveExitTimestampMonotonic={exit_}\nInactiveEnterTimestampMonotonic={enter}\n"
            f"ActiveEnterTimestampMonotonic={active}\n"
        )

    return f"{block(mount)}\n{block(device)}"


def asked(tag: str, unit: str | None = None) -> str:
    """The `systemctl show` LeftToSystemd runs for the mount unit of `tag` and its device."""
    return (
        "show --property=ActiveState,Job,InactiveExitTimestampMonotonic,"
        "InactiveEnterTimestampMonotonic,ActiveEnterTimestampMonotonic -- "
        f"{unit or f'mnt-{tag}.mount'} dev-virtiofs-by\\x2dtag-{tag}.device\n"
    )


def second_look(step: Step) -> Outcome:
    """LeftToSystemd's outcome at a look `GRACE` seconds after the first found `step` unmounted."""
    times = iter([10.0, 10.0 + GRACE])
    left = LeftToSystemd(clock=lambda: next(times))
    for _ in range(2):
        left.begin_plan()
        outcome = left.carry_out(step)
    return outcome


def test_systemd_is_asked_only_once_a_share_stayed_unmounted_for_a_while(systemctl: Path):
    now = [100.0]
    left = LeftToSystemd(clock=lambda: now[0])
    t, u = (Step(mount_action(n, f"/mnt/{n}"), f"mnt-{n}.mount") for n in "tu")
    systemctl.with_suffix(".log.show").write_text(shown("active 1 0 2", "active 1 0 1"))
    looks = []
    for at, steps in ((0, [t]), (0.5, [t, u]), (GRACE, [t, u]), (GRACE + 0.2, [u]), (5, [t])):
        now[0] = 100.0 + at
        left.begin_plan()
        looks.append([(o.action.tag, o.settled) for o in map(left.carry_out, steps)])
        looks[-1].append(systemctl.exists() and systemctl.read_text().count("show"))
    assert looks == [
        [("t", False), False],  # right after the plug: systemd is most likely mounting it
        [("t", False), ("u", False), False],  # the plug's next uevent
        [("t", True), ("u", False), 1],  # t unmounted for GRACE s: asked (and left: active)
        [("u", False), 1],  # u for 0.7 s only
        [("t", False), 1],  # t mounted in between: its next plug starts afresh
    ]


MISSED = shown("inactive 100 400 150", "active 300 200 300")  # unplugged at 200, back at 300
STARTED = (
    "Started mnt-t.mount: share 't' was plugged while mnt-t.mount was still being stopped,"
    " which systemd does not follow."
)


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        (MISSED, (True, True, True, STARTED)),
        (
            shown("failed 310 400 0", "active 300 200 300"),  # started since, and failed
            (True, False, True, "left to systemd (mnt-t.mount)"),
        ),
        (
            shown("active 100 0 150 183", "active 300 200 300"),  # its stop job still waits
            (True, False, False, "left to systemd (mnt-t.mount), which is not done with it"),
        ),
    ],
)
def test_the_daemon_starts_a_unit_only_for_a_plug_systemd_missed(
    systemctl: Path, state: str, expected: tuple[bool, bool, bool, str]
):
    systemctl.with_suffix(".log.show").write_text(state)
    outcome = second_look(Step(mount_action("t", "/mnt/t"), "mnt-t.mount"))
    assert (outcome.ok, outcome.changed, outcome.settled, outcome.message) == expected
    started = "start --no-block mnt-t.mount\n" if outcome.changed else ""
    assert systemctl.read_text() == asked("t") + started


def test_a_missed_plug_whose_start_fails_says_so(systemctl: Path):
    systemctl.with_suffix(".log.show").write_text(MISSED)
    outcome = second_look(Step(mount_action("t", "/mnt/t"), "fail-t.mount"))
    assert (outcome.ok, outcome.changed) == (False, False)
    assert outcome.message == (
        "Failed to start fail-t.mount (share 't' was plugged while fail-t.mount was still being"
        " stopped, which systemd does not follow): systemctl start --no-block fail-t.mount"
        " failed: exit status 1: Job for fail-t.mount failed because the control process"
        " exited with error code."
    )
    assert systemctl.read_text() == asked("t", "fail-t.mount") + "start --no-block fail-t.mount\n"


def test_without_an_answer_from_systemd_the_unit_is_left_to_it(systemctl: Path):
    systemctl.with_suffix(".log.show").write_text("")  # one unit described, not two
    outcome = second_look(Step(mount_action("t", "/mnt/t"), "mnt-t.mount"))
    assert (outcome.ok, outcome.changed, outcome.settled) == (True, False, True)
    device = "dev-virtiofs-by\\x2dtag-t.device"
    command = asked("t").strip().replace(device, f"'{device}'")  # quoted, as a shell would need
    assert outcome.message == (
        "left to systemd (mnt-t.mount); cannot tell whether it missed a plug: "
        f"systemctl {command} described 1 unit(s), not 2"
    )


# --- the kernel ------------------------------------------------------------------------------


def test_each_filesystem_is_loaded_once_before_its_first_mount(tmp_path: Path):
    kernel = RecordingKernel()
    here = KernelExecutor(SysRoot(tmp_path), kernel)
    nine = Action(
        kind=ActionKind.MOUNT, tag="n", reason="r", path="/mnt/n", transport=Transport.NINEP
    )
    for action in (stale(), mount_action("a", "/mnt/a"), nine, mount_action("b", "/mnt/b")):
        here.carry_out(Step(action))
    assert kernel.loaded == [Transport.VIRTIOFS, Transport.NINEP]
    assert [m[0] for m in kernel.mounts] == ["a", "n", "b"]


def test_each_plan_loads_again_with_the_same_executors(tmp_path: Path):
    """The daemon picks its executors once and applies one plan per reconcile."""
    kernel = RecordingKernel()
    run = Executors.pick(SysRoot(tmp_path), dry_run=False, kernel=kernel)
    apply_plan([Step(mount_action("a", "/mnt/a")), Step(mount_action("b", "/mnt/b"))], run)
    apply_plan([Step(mount_action("c", "/mnt/c"))], run)
    assert kernel.loaded == [Transport.VIRTIOFS, Transport.VIRTIOFS]


def test_enodev_names_the_problem_loading_the_filesystem(tmp_path: Path):
    kernel = RecordingKernel(fail={"t": errno.ENODEV}, missing={Transport.VIRTIOFS: "no module"})
    outcome = KernelExecutor(SysRoot(tmp_path), kernel).carry_out(Step(mount_action("t", "/m")))
    assert not outcome.ok and outcome.message.endswith(" (no module)"), outcome.message


class FailingUmount(RecordingKernel):
    def __init__(self, code: int) -> None:
        super().__init__()
        self.code = code

    def umount(self, target: str, *, lazy: bool = False) -> None:
        super().umount(target, lazy=lazy)
        raise OSError(self.code, os.strerror(self.code))


def test_a_stale_mount_someone_else_unmounted_is_fine_other_errors_fail(tmp_path: Path):
    gone = KernelExecutor(SysRoot(tmp_path), FailingUmount(errno.EINVAL)).carry_out(Step(stale()))
    assert (gone.ok, gone.changed, gone.message) == (True, False, "/mnt/gone is no longer mounted")
    busy = KernelExecutor(SysRoot(tmp_path), FailingUmount(errno.EPERM)).carry_out(Step(stale()))
    assert not busy.ok and busy.message == "Failed to unmount /mnt/gone: Operation not permitted"


def test_umount_of_a_busy_share_hints_at_lazy(tmp_path: Path):
    entry = Mounted(30, 1, "/mnt/t", "virtiofs", "t")
    here = KernelExecutor(SysRoot(tmp_path), FailingUmount(errno.EBUSY))
    with pytest.raises(
        UnmountError, match=r"^Failed to unmount /mnt/t: .*busy; retry with --lazy$"
    ):
        here.unmount(entry, lazy=False, abort=False)
    with pytest.raises(UnmountError, match=r"busy$"):
        here.unmount(entry, lazy=True, abort=False)


def test_a_failed_abort_is_an_unmount_error_and_nothing_is_unmounted(tree: FakeTree):
    tree.write("sys/fs/fuse/connections/100/abort/x", "")  # a directory: the write fails
    kernel = RecordingKernel()
    entry = Mounted(30, 1, "/mnt/t", "fuse", "t", device="0:100")
    with pytest.raises(UnmountError, match="Failed to abort the FUSE connection of /mnt/t"):
        KernelExecutor(SysRoot(tree.root), kernel).unmount(entry, lazy=False, abort=True)
    assert kernel.unmounts == []


def test_the_real_kernel_calls_load_nothing_outside_the_running_system(tmp_path: Path):
    assert LiveKernelCalls(SysRoot(tmp_path)).load_filesystem(Transport.VIRTIOFS) is None


# --- picking and routing ---------------------------------------------------------------------


def test_only_the_running_systems_root_is_live(tmp_path: Path):
    assert Executors.pick(SysRoot(Path("/")), dry_run=True).situation.live
    assert not Executors.pick(SysRoot(tmp_path), dry_run=False).situation.live


def test_the_managed_unit_of_each_mount_is_gathered(tree: FakeTree):
    actions = [
        mount_action("m", "/mnt/media"),
        mount_action("o", "/mnt/other"),
        stale("/mnt/media"),
    ]
    ctx = ops.Context(SysRoot(tree.root))
    tree.write("etc/systemd/system/mnt-media.mount", f"{GENERATED_MARK} from a test\n")
    assert [s.unit for s in ops.gather_steps(ctx, actions)] == [None, None, None]  # no systemd
    tree.write("run/systemd/system/.keep", "")
    units = [s.unit for s in ops.gather_steps(ctx, actions)]
    assert units == ["mnt-media.mount", None, "mnt-media.mount"]
    tree.write("etc/systemd/system/mnt-other.mount", "[Mount]\n")  # not vfs-agent's
    assert ops.gather_steps(ctx, actions)[1].unit is None


@pytest.mark.parametrize(
    ("mode", "started"), [(SystemdMode.START, True), (SystemdMode.LEAVE, False)]
)
def test_on_the_live_system_a_managed_share_goes_to_systemd_the_rest_to_the_kernel(
    tmp_path: Path, systemctl: Path, mode: SystemdMode, started: bool
):
    kernel = RecordingKernel()
    run = Executors.pick(SysRoot(tmp_path), dry_run=False, systemd=mode, kernel=kernel)
    run = dataclasses.replace(run, situation=Situation(live=True, dry_run=False, systemd=mode))
    steps = [Step(mount_action("a", "/mnt/a"), "mnt-a.mount"), Step(mount_action("b", "/mnt/b"))]
    outcomes = apply_plan(steps, run)
    assert [o.changed for o in outcomes] == [started, True]
    # LEAVE: the first look asks systemd nothing (it is most likely mounting the share)
    assert (systemctl.exists() and systemctl.read_text()) == (
        "start mnt-a.mount\n" if started else False
    )
    assert [m[0] for m in kernel.mounts] == ["b"]
    assert kernel.loaded == [Transport.VIRTIOFS]  # for b; systemd's mount(8) loads its own


@pytest.mark.parametrize("mode", list(SystemdMode))
def test_on_the_live_system_a_gone_shares_unit_is_stopped_a_dead_mount_unmounted_here(
    tmp_path: Path, systemctl: Path, mode: SystemdMode
):
    # systemd stops the unit of a share whose device went, and unmounts it: the daemon asks it
    # to, so there is one stop job and one unmount. A dead mount of a share still attached is
    # detached here, bounded, whatever its unit (systemd stops nothing: its device is there).
    kernel = RecordingKernel()
    run = Executors.pick(SysRoot(tmp_path), dry_run=False, systemd=mode, kernel=kernel)
    run = dataclasses.replace(run, situation=Situation(live=True, dry_run=False, systemd=mode))
    steps = [
        Step(stale("/mnt/a"), "mnt-a.mount"),
        Step(stale("/mnt/b", share_gone=False), "mnt-b.mount"),
        Step(stale("/mnt/c")),
    ]
    outcomes = apply_plan(steps, run)
    assert all(o.ok and o.changed for o in outcomes)
    assert systemctl.read_text() == "stop --job-mode=fail mnt-a.mount\n"
    assert kernel.unmounts == [(str(tmp_path / "mnt/b"), True), (str(tmp_path / "mnt/c"), True)]
    # Under --root the running system's manager is never asked.
    kernel.unmounts.clear()
    root = Executors.pick(SysRoot(tmp_path), dry_run=False, systemd=mode, kernel=kernel)
    apply_plan(steps[:1], root)
    assert systemctl.read_text() == "stop --job-mode=fail mnt-a.mount\n"
    assert kernel.unmounts == [(str(tmp_path / "mnt/a"), True)]
    # Plugged again since the plan (the kernel lists its tag): left to systemd, which starts
    # the unit as the device comes back.
    FakeTree(tmp_path).virtiofs("gone")
    again = apply_plan(steps[:1], run)
    assert (again[0].changed, again[0].message) == (
        False,
        "share 'gone' is attached again: left to systemd (mnt-a.mount)",
    )
    assert systemctl.read_text() == "stop --job-mode=fail mnt-a.mount\n"
    assert kernel.unmounts == [(str(tmp_path / "mnt/a"), True)]  # from --root above, no more
