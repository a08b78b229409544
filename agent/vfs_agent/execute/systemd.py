"""The systemd executors: a share whose path has a vfs-agent generated .mount unit is mounted by
systemd through that unit, never behind its back (systemd would not know the unit is active)."""

from __future__ import annotations

from pathlib import Path

from vfs_agent.execute.outcome import Outcome
from vfs_agent.execute.route import Step
from vfs_agent.system.tools import run_tool


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
