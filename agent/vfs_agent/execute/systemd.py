"""The systemd executors: a share whose path has a vfs-agent generated .mount unit is mounted by
systemd through that unit, never behind its back (systemd would not know the unit is active),
and the mount of such a share no longer attached is unmounted by stopping that unit."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from vfs_agent.core.plan import Action
from vfs_agent.execute.executor import Executor
from vfs_agent.execute.kernel import UMOUNT_TIMEOUT
from vfs_agent.execute.outcome import Outcome
from vfs_agent.execute.route import Step
from vfs_agent.system.tools import run_tool

STOP_TIMEOUT = UMOUNT_TIMEOUT  # as long as the kernel executor waits for umount2(2)


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
    """The daemon: the unit follows its share's device unit by itself."""

    def carry_out(self, step: Step) -> Outcome:
        return Outcome(step.action, True, False, f"left to systemd ({step.unit})")


class OtherRootSystemd:
    """A unit inside another root (--root): like `systemctl --root`, the running system's manager
    is never asked; that root's systemd mounts the share when it runs."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def carry_out(self, step: Step) -> Outcome:
        why = f"left to systemd inside {self.root} ({step.unit}); --root starts no unit"
        return Outcome(step.action, True, False, why)
