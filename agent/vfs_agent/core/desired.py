"""What the persistent outputs (mount units, fstab lines) say: a function of the policy and the
attached shares only (pure).

The boot-time generator and `vfs-agent generate systemd|fstab` both come here, so they cannot
disagree (but for one ordering: the generator's units hold for this boot only, see
`this_boot`). The plan is made against an EMPTY mount table: what is mounted right now (another
filesystem on a policy path, a share mounted elsewhere, a dead or unresponsive mount) is the
running system's state, not what the next boot should do. Planning against the live table
would make `generate systemd --output DIR` write no unit for a path that happens to be busy,
and its directory sync would then delete the unit that was there.

Every share that gets no unit or line is named, with why, in the returned `Skipped` list: a
share the policy ignores, a refused path or option, two tags for one path, and a share that no
unit or fstab line can express (core/persist.py).
"""

from __future__ import annotations

from vfs_agent.core.observation import Discovery
from vfs_agent.core.persist import share_problem
from vfs_agent.core.plan import WANTED, Action, ActionKind, plan
from vfs_agent.core.render_fstab import render_block
from vfs_agent.core.render_systemd import Skipped, UnitFile, render_units
from vfs_agent.policy.types import Policy

# Kinds whose share gets no unit or line (besides shares that cannot be expressed).
_UNWRITTEN = frozenset({ActionKind.IGNORE, ActionKind.REFUSE, ActionKind.CONFLICT})


def desired_actions(policy: Policy, discovery: Discovery) -> list[Action]:
    """The plan against an empty mount table: what a fresh boot would mount."""
    return plan(discovery, policy, [])


def origin_of(policy: Policy) -> str:
    """The "generated from" text of the unit headers."""
    return f"policy {', '.join(policy.files) or 'the built-in default policy'}"


def desired_units(
    policy: Policy,
    discovery: Discovery,
    *,
    bind_device: bool,
    mount_helper: bool,
    generator: str | None = None,
    this_boot: bool = False,
) -> tuple[list[UnitFile], list[Skipped]]:
    """One mount unit per share the policy wants, and every share that gets none, with why.
    `generator` names the program in the header ("... by vfs-agent-generator"). `this_boot`:
    the units are for this boot only (the generator's), so an attached share does not wait for
    its device unit. `mount_helper`: vfs-agent's mount helper is installed, so a share's wait
    for its host runs in its mount unit (core/render_systemd.py)."""
    actions = desired_actions(policy, discovery)
    origin = origin_of(policy) + (f" by {generator}" if generator else "")
    units, unexpressible = render_units(
        actions, origin, bind_device=bind_device, mount_helper=mount_helper, this_boot=this_boot
    )
    return units, unwritten(actions) + unexpressible


def desired_fstab(policy: Policy, discovery: Discovery) -> tuple[str, list[Skipped]]:
    """The fstab block (core/render_fstab.py), and every share that gets no line, with why."""
    actions = desired_actions(policy, discovery)
    return render_block(actions), unwritten(actions) + not_persistent(actions)


def unwritten(actions: list[Action]) -> list[Skipped]:
    """The shares (and rules) the plan decided against: ignored, refused, in conflict."""
    return [
        Skipped(a.tag, a.path, a.reason, ignored=a.kind is ActionKind.IGNORE)
        for a in actions
        if a.kind in _UNWRITTEN
    ]


def not_persistent(actions: list[Action]) -> list[Skipped]:
    """The wanted shares that neither an fstab line nor a unit can express (core/persist.py)."""
    return [
        Skipped(a.tag, a.path, why)
        for a in actions
        if a.kind in WANTED and a.path is not None and (why := share_problem(a.tag, a.path))
    ]
