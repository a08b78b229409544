"""The systemd executors: a share whose path has a vfs-agent generated .mount unit is mounted by
systemd through that unit, never behind its back (systemd would not know the unit is active),
and the mount of such a share no longer attached is unmounted by stopping that unit."""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from vfs_agent.core.missed_plug import PROPERTIES, NextStep, UnitState, next_step, parse_show
from vfs_agent.core.plan import Action
from vfs_agent.core.render_systemd import device_unit_name
from vfs_agent.execute.executor import Executor
from vfs_agent.execute.kernel import UMOUNT_TIMEOUT
from vfs_agent.execute.outcome import Outcome
from vfs_agent.execute.route import Step
from vfs_agent.system.tools import ToolError, run_tool, tool_output

STOP_TIMEOUT = UMOUNT_TIMEOUT  # as long as the kernel executor waits for umount2(2)
ASK_TIMEOUT = 10.0  # for a question to systemd, or a job queued without waiting for it
GRACE = 1.0  # seconds a share left to systemd stays unmounted before systemd is asked about it


def start_unit(name: str, *, timeout: float = 120) -> str | None:
    """`systemctl start NAME`; None on success, else why it failed (system/tools.py)."""
    return run_tool(["systemctl", "start", name], timeout)


class SystemdStart:
    """`systemctl start UNIT` on the running system (commands run by hand)."""

    def carry_out(self, step: Step) -> Outcome:
        action, unit = step.action, step.unit
        assert unit is not None
        problem = start_unit(unit)
        if problem:
            message = f"Failed to mount share {action.tag!r} on {action.path} via {unit}: {problem}"
            return Outcome(action, False, False, message)
        return Outcome(
            action, True, True, f"Mounted share {action.tag!r} on {action.path} ({unit})."
        )


class SystemdStop:
    """`systemctl stop UNIT` for the stale mount of a share no longer attached (execute/route.py
    says why), merged by systemd with the stop job the share's device unit started, if any.

    The plan was made a moment ago, and the host may have attached the share again since:
    systemd then starts the unit by itself as the device comes back, and a stop now would
    unmount the new share, or cancel its start, for good (the daemon leaves that unit to
    systemd). So a share the kernel lists again (`attached`) is left alone, and the stop runs
    with `--job-mode=fail`: systemd refuses it if it would cancel a start job already queued.
    Should the stop fail, or not finish in time, while the share is still gone, `fallback` (the
    kernel) unmounts it, so no mount of a gone share is left behind."""

    def __init__(
        self,
        fallback: Executor,
        attached: Callable[[Action], bool],
        *,
        timeout: float = STOP_TIMEOUT,
    ) -> None:
        self.fallback = fallback
        self.attached = attached
        self.timeout = timeout

    def carry_out(self, step: Step) -> Outcome:
        action, unit = step.action, step.unit
        assert unit is not None
        if self.attached(action):
            return self._back(action, unit)
        problem = run_tool(["systemctl", "stop", "--job-mode=fail", unit], self.timeout)
        if problem is None:
            return Outcome(
                action, True, True, f"Unmounted {action.path} ({action.reason}) by stopping {unit}."
            )
        if self.attached(action):
            return self._back(action, unit)
        done = self.fallback.carry_out(step)
        return replace(done, message=f"{problem}; {done.message}")

    @staticmethod
    def _back(action: Action, unit: str) -> Outcome:
        why = f"share {action.tag!r} is attached again: left to systemd ({unit})"
        return Outcome(action, True, False, why)


class LeftToSystemd:
    """The daemon: the unit follows its share's device unit by itself, except for a plug that
    came while the unit's previous mount was still being stopped, which systemd does not follow
    (core/missed_plug.py says how that is told apart): then the daemon starts the unit, without
    waiting for the mount (`--no-block`). While systemd is not done with the unit, the outcome
    is not settled, and the daemon looks again.

    systemd is asked only once a share has been found unmounted for `GRACE` seconds, look
    after look: right after a plug systemd is most likely mounting it, and asking then (at each
    of the plug's two or three uevents), under emulation, took about 200 ms from that mount
    job (bench/hotplug_systemd.py).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        # unit -> since when it has been left to systemd, plan after plan
        self._last_plan: dict[str, float] = {}
        self._this_plan: dict[str, float] = {}

    def begin_plan(self) -> None:
        self._last_plan, self._this_plan = self._this_plan, {}

    def carry_out(self, step: Step) -> Outcome:
        action, unit = step.action, step.unit
        assert unit is not None
        left = f"left to systemd ({unit})"
        now = self.clock()
        since = self._this_plan[unit] = self._last_plan.get(unit, now)
        if now - since < GRACE:
            return Outcome(action, True, False, left, settled=False)
        try:
            mount, device = _shown(unit, device_unit_name(action.tag))
        except ToolError as e:
            return Outcome(
                action, True, False, f"{left}; cannot tell whether it missed a plug: {e}"
            )
        match next_step(mount, device):
            case NextStep.LEAVE:
                return Outcome(action, True, False, left)
            case NextStep.WAIT:
                why = f"{left}, which is not done with it"
                return Outcome(action, True, False, why, settled=False)
            case NextStep.START:
                missed = (
                    f"share {action.tag!r} was plugged while {unit} was still being stopped, "
                    "which systemd does not follow"
                )
                problem = run_tool(["systemctl", "start", "--no-block", unit], ASK_TIMEOUT)
                if problem:
                    why = f"Failed to start {unit} ({missed}): {problem}"
                    return Outcome(action, False, False, why)
                return Outcome(action, True, True, f"Started {unit}: {missed}.")


def _shown(unit: str, device: str) -> tuple[UnitState, UnitState]:
    """What systemd says about a mount unit and the device unit it follows; raises ToolError."""
    argv = ["systemctl", "show", f"--property={','.join(PROPERTIES)}", "--", unit, device]
    units = parse_show(tool_output(argv, ASK_TIMEOUT))
    if len(units) != 2:
        raise ToolError(f"{shlex.join(argv)} described {len(units)} unit(s), not 2")
    return units[0], units[1]


class OtherRootSystemd:
    """A unit inside another root (--root): like `systemctl --root`, the running system's manager
    is never asked; that root's systemd mounts the share when it runs."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def carry_out(self, step: Step) -> Outcome:
        why = f"left to systemd inside {self.root} ({step.unit}); --root starts no unit"
        return Outcome(step.action, True, False, why)
