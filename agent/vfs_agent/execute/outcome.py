"""What carrying out one action came to, and its log line (journal fields TAG, MOUNT_PATH,
ACTION): the same for every executor."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from vfs_agent.core.plan import Action

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    action: Action
    ok: bool
    changed: bool
    message: str
    # False: systemd is not done with the share's unit yet (core/missed_plug.py), so the
    # daemon looks again after a pause; no event may come when it is done.
    settled: bool = True

    @property
    def fatal(self) -> bool:
        """A failure that makes the command fail (exit 1): only required shares."""
        return not self.ok and self.action.required

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.action.to_dict(),
            "ok": self.ok,
            "changed": self.changed,
            "message": self.message,
        }


def log_outcome(outcome: Outcome) -> None:
    """One log line per action: changes at INFO, what stayed as it was at DEBUG (-v), a failed
    optional share as a warning ("..., ignoring."), a failed required one as an error."""
    action = outcome.action
    fields = {"TAG": action.tag, "MOUNT_PATH": action.path or "", "ACTION": action.kind.value}
    if outcome.ok:
        level = logging.INFO if outcome.changed else logging.DEBUG
        log.log(level, outcome.message, extra=fields)
    elif outcome.fatal:
        log.error(outcome.message, extra=fields)
    else:
        log.warning("%s, ignoring.", outcome.message.rstrip("."), extra=fields)
