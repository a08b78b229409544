"""The plan for what is attached and mounted now: what `status` and `plan` report, and what the
operations (commands/operations.py) carry out. Kept apart from those so that a report imports
no executor, mount code or unit renderer."""

from __future__ import annotations

from dataclasses import dataclass

from vfs_agent.commands.context import Context
from vfs_agent.core.observation import Observed
from vfs_agent.core.plan import Action, ActionKind, plan
from vfs_agent.policy.types import Policy
from vfs_agent.system.observe import nonempty_dirs, observe


@dataclass(frozen=True)
class Planned:
    policy: Policy
    observed: Observed
    actions: list[Action]


def current_plan(
    ctx: Context, policy: Policy | None = None, *, mountpoints: bool = True
) -> Planned:
    """The plan for what is attached and mounted now. With `mountpoints`, the directories the
    plan would mount on are looked at too (a non-empty one warns or is refused); generated
    units and fstab lines leave that to the mount itself (systemd warns the same way)."""
    policy = policy or ctx.policy()
    observed = observe(ctx.sysroot)
    args = (observed.discovery, policy, observed.table, observed.dead, observed.unresponsive)
    actions = plan(*args)
    if mountpoints:
        paths = [a.path for a in actions if a.kind is ActionKind.MOUNT and a.path]
        nonempty = nonempty_dirs(ctx.sysroot, paths)
        if nonempty:
            actions = plan(*args, nonempty)
    return Planned(policy, observed, actions)
