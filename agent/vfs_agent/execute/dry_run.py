"""The dry-run executor: says what would be done and changes nothing (no directory is created,
no unit started, no module loaded)."""

from __future__ import annotations

from vfs_agent.core.observation import Mounted
from vfs_agent.core.plan import ActionKind
from vfs_agent.execute.outcome import Outcome
from vfs_agent.execute.route import Step


class DryRun:
    def carry_out(self, step: Step) -> Outcome:
        action = step.action
        if action.kind is ActionKind.UNMOUNT_STALE:
            if step.unit is not None and action.share_gone:
                message = f"would stop {step.unit} ({action.reason})"
            else:
                message = f"would unmount {action.path} lazily ({action.reason})"
        elif step.unit is not None:
            message = f"would start {step.unit}"
        else:
            message = f"would mount {action.tag!r} on {action.path}"
        return Outcome(action, True, False, message)

    def unmount(self, mount: Mounted, *, lazy: bool, abort: bool) -> None:
        """Nothing: `vfs-agent umount --dry-run` only lists what it would unmount."""
