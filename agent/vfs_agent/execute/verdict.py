"""The executor for actions that change nothing: the plan's verdict is the outcome."""

from __future__ import annotations

from vfs_agent.core.plan import ActionKind
from vfs_agent.execute.outcome import Outcome
from vfs_agent.execute.route import Step


class Verdict:
    """keep, ignore, absent, conflict, refuse, unresponsive: reported, never carried out."""

    def carry_out(self, step: Step) -> Outcome:
        action = step.action
        kind = action.kind
        if kind is ActionKind.KEEP:
            return Outcome(action, True, False, f"{action.path}: already mounted")
        if kind is ActionKind.IGNORE:
            return Outcome(action, True, False, action.reason)
        if kind is ActionKind.ABSENT:
            message = f"share {action.tag!r} is not attached"
            return Outcome(action, not action.required, False, message)
        return Outcome(action, False, False, action.reason)  # CONFLICT, REFUSE, UNRESPONSIVE
