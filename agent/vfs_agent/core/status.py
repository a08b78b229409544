"""Status of every share: where the policy wants it, where it is mounted, and its health."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from vfs_agent.core.observation import SHARE_FSTYPES, Observed
from vfs_agent.core.plan import Action, ActionKind
from vfs_agent.core.transport import Transport


class Health(StrEnum):
    MOUNTED = "mounted"  # mounted where the policy says
    NOT_MOUNTED = "not-mounted"  # the policy wants it, it is not mounted
    ELSEWHERE = "mounted-elsewhere"  # mounted, but not (only) where the policy says
    DEAD = "dead"  # mounted, but its share is gone or the mount answers ENOTCONN
    UNRESPONSIVE = "unresponsive"  # mounted, but the mount does not answer (host daemon gone)
    IGNORED = "ignored"  # the policy leaves it alone
    ABSENT = "absent"  # the policy names it, no such share is attached
    BLOCKED = "blocked"  # the policy wants it but the path is refused or in conflict


@dataclass(frozen=True, kw_only=True)
class ShareStatus:
    """One row of `status`; built by keyword only (several fields of one type)."""

    tag: str
    transport: Transport | None
    device: str | None
    source: str | None
    planned_path: str | None
    mounted_at: tuple[str, ...]
    health: Health
    detail: str
    layer: str | None = None  # the policy layer that decided (file, credential, command line)

    def to_dict(self) -> dict[str, Any]:
        return {
            "tag": self.tag,
            "transport": self.transport.value if self.transport else None,
            "device": self.device,
            "source": self.source,
            "planned_path": self.planned_path,
            "mounted_at": list(self.mounted_at),
            "health": self.health.value,
            "detail": self.detail,
            "layer": self.layer,
        }


def share_status(observed: Observed, actions: list[Action]) -> list[ShareStatus]:
    """Pure: combine what was observed with the plan for it."""
    mounts: dict[tuple[str, str], list[str]] = {}
    for entry in observed.table:
        if entry.fstype in SHARE_FSTYPES:
            mounts.setdefault((entry.fstype, entry.source), []).append(entry.target)
    decided = {(a.tag, a.transport): a for a in actions if a.kind is not ActionKind.UNMOUNT_STALE}
    out = []
    seen: set[tuple[str, Transport | None]] = set()
    for share in observed.discovery.shares:
        action = decided.get((share.tag, share.transport))
        where = tuple(dict.fromkeys(mounts.get((share.transport.value, share.tag), [])))
        health, detail = _health(action, where, observed.dead, observed.unresponsive)
        waited = dict(observed.unanswered).get(share.tag)
        if health is Health.NOT_MOUNTED and waited and share.transport is Transport.VIRTIOFS:
            health, detail = Health.UNRESPONSIVE, _unanswered(waited, action)
        out.append(
            ShareStatus(
                tag=share.tag,
                transport=share.transport,
                device=share.device,
                source=share.source.value,
                planned_path=action.path if action else None,
                mounted_at=where,
                health=health,
                detail=detail,
                layer=action.source_file if action else None,
            )
        )
        seen.add((share.tag, share.transport))
    for action in actions:
        key = (action.tag, action.transport)
        if key in seen or action.kind is ActionKind.UNMOUNT_STALE:
            continue
        seen.add(key)
        health = Health.ABSENT if action.kind is ActionKind.ABSENT else Health.BLOCKED
        out.append(
            ShareStatus(
                tag=action.tag,
                transport=action.transport,
                device=None,
                source=None,
                planned_path=action.path,
                mounted_at=(),
                health=health,
                detail=action.reason,
                layer=action.source_file,
            )
        )
    for action in actions:
        if action.kind is ActionKind.UNMOUNT_STALE:
            out.append(
                ShareStatus(
                    tag=action.tag,
                    transport=action.transport,
                    device=None,
                    source=None,
                    planned_path=None,
                    mounted_at=(action.path or "",),
                    health=(
                        Health.UNRESPONSIVE if action.path in observed.unresponsive else Health.DEAD
                    ),
                    detail=action.reason,
                )
            )
    return out


def _unanswered(seconds: int, action: Action | None) -> str:
    where = f" on {action.path}" if action and action.path else ""
    return (
        f"its host did not answer within {seconds} s when it was to be mounted{where} (has "
        "the host's virtio-fs daemon died?); its mount unit and what requires it failed; "
        "once the host serves it again, 'vfs-agent mount-all' mounts it"
    )


def _health(
    action: Action | None,
    where: tuple[str, ...],
    dead: frozenset[str],
    unresponsive: frozenset[str],
) -> tuple[Health, str]:
    hung = [path for path in where if path in unresponsive]
    if hung:
        return Health.UNRESPONSIVE, (
            f"the mount does not answer (has the host's virtio-fs daemon died?); "
            f"'vfs-agent umount --abort {hung[0]}' recovers it"
        )
    if any(path in dead for path in where):
        return Health.DEAD, "the mount answers ENOTCONN; run 'vfs-agent mount-all' to clean up"
    if action is None or action.kind is ActionKind.IGNORE:
        if where:
            return Health.ELSEWHERE, "mounted by hand; the policy ignores it"
        return Health.IGNORED, action.reason if action else "not in the plan"
    if action.kind is ActionKind.UNRESPONSIVE:
        return Health.UNRESPONSIVE, action.reason
    if action.kind is ActionKind.HELD and not where:
        return Health.NOT_MOUNTED, action.reason
    if action.kind in (ActionKind.CONFLICT, ActionKind.REFUSE):
        return Health.BLOCKED, action.reason
    if action.path in where:
        return Health.MOUNTED, "mounted as planned"
    if where:
        return Health.ELSEWHERE, f"the policy wants it at {action.path}"
    detail = f"the policy wants it at {action.path}; run 'vfs-agent mount-all'"
    if action.warning:
        detail += f" (warning: {action.warning})"
    return Health.NOT_MOUNTED, detail
