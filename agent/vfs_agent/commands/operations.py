"""The operations behind the commands: each wires the edges (policy files, observation,
mount syscalls) around the pure core to change what is mounted now. The CLI and the daemon call
these; the plan they carry out is commands/planned.py's, which the reports use without them,
and the units and fstab lines for the next boot are commands/persistent.py's."""

from __future__ import annotations

import logging
from dataclasses import replace

from vfs_agent.commands.context import Context as Context  # re-exported: ops.Context
from vfs_agent.commands.context import OperationError as OperationError
from vfs_agent.commands.planned import current_plan
from vfs_agent.core.mountinfo import top_mounts
from vfs_agent.core.observation import SHARE_FSTYPES
from vfs_agent.core.plan import Action, ActionKind
from vfs_agent.core.transport import Transport
from vfs_agent.execute.apply import Executors, apply_plan
from vfs_agent.execute.executor import UnmountError
from vfs_agent.execute.outcome import Outcome
from vfs_agent.execute.route import CHANGING, Step
from vfs_agent.policy.types import Policy, Rule, RuleRef, TransportChoice
from vfs_agent.system.kernel_modules import bind_unbound
from vfs_agent.system.mount_table import read_mount_table
from vfs_agent.systemd.units import managed_unit

log = logging.getLogger(__name__)


def executors(ctx: Context, *, dry_run: bool) -> Executors:
    """The executors of a command run by hand, picked once from its `--dry-run`."""
    return Executors.pick(ctx.sysroot, dry_run=dry_run)


def mount_all(ctx: Context, run: Executors) -> list[Outcome]:
    # An invalid policy stops here, before anything changes.
    policy = ctx.policy() if run.dry_run else ctx.policy_to_apply()
    return reconcile(ctx, policy, run)


def reconcile(ctx: Context, policy: Policy, run: Executors) -> list[Outcome]:
    """Discover, plan and apply under the mount lock: mount-all, and every daemon event."""
    with ctx.locked(run.dry_run):
        if not run.dry_run:
            _bind_unbound(ctx)
        planned = current_plan(ctx, policy)
        return _apply(ctx, planned.actions, run)


def mount_one(ctx: Context, tag: str, path: str | None, run: Executors) -> list[Outcome]:
    """Mount one tag where the policy says, or at `path`. An explicit request mounts the tag
    even when the policy would ignore it or names no rule for it."""
    policy = ctx.policy()
    matched = policy.match(tag)
    base = matched.rule if matched and not matched.rule.ignore else None
    rule = Rule(
        tag=tag,
        path=path or (base.path if base else None),
        options=base.options if base else (),
        required=True,
        transport=base.transport if base else TransportChoice.AUTO,
        device_timeout=base.device_timeout if base else None,
        mount_timeout=base.mount_timeout if base else None,
    )
    override = replace(policy, rules=(RuleRef(rule, "the command line", 0), *policy.rules))
    with ctx.locked(run.dry_run):
        planned = current_plan(ctx, override)
        skip = (ActionKind.UNMOUNT_STALE, ActionKind.IGNORE)
        mine = [a for a in planned.actions if a.tag == tag and a.kind not in skip]
        if not mine:
            raise OperationError(f"no share with tag {tag!r} is attached (see 'vfs-agent status')")
        return _apply(ctx, mine, run)


def umount(
    ctx: Context, target: str, run: Executors, *, lazy: bool, abort: bool = False
) -> list[str]:
    """Unmount a share by mount path or by tag (every mount of it). Returns the paths.

    With `abort`, the FUSE connection of each mount is aborted first where the kernel allows it
    (system/fuse_abort.py), then the mount is detached: the way out of a mount whose virtiofsd died.
    The mount table is read, never the mounts themselves, so a hung mount cannot hang this.
    """
    with ctx.locked(run.dry_run):
        table = read_mount_table(ctx.sysroot)
        shares = [e for e in top_mounts(table).values() if e.fstype in SHARE_FSTYPES]
        if target.startswith("/"):
            chosen = [e for e in shares if e.target == target.rstrip("/") or e.target == target]
            if not chosen:
                raise OperationError(f"{target} is not a virtio-fs or 9p mount")
        else:
            chosen = [e for e in shares if e.source == target]
            if not chosen:
                raise OperationError(f"share {target!r} is not mounted")
        if abort:
            not_fuse = [e.target for e in chosen if e.fstype != Transport.VIRTIOFS.value]
            if not_fuse:
                raise OperationError(
                    f"{', '.join(not_fuse)}: --abort applies to virtio-fs mounts only "
                    "(9p has no FUSE connection); use --lazy"
                )
        chosen.sort(key=lambda e: -e.target.count("/"))
        for entry in chosen:
            try:
                run.unmounter.unmount(entry, lazy=lazy, abort=abort)
            except UnmountError as e:
                raise OperationError(str(e)) from None
        return [e.target for e in chosen]


def _bind_unbound(ctx: Context) -> None:
    """Share devices the driver refused while an older device with their tag was going away
    (a quick re-plug) can bind once it is gone; nothing else retries them."""
    bound = [name for t in Transport for name in bind_unbound(ctx.sysroot, t)]
    if bound:
        log.info(
            "Bound %s, refused while a device with the same tag was going away.", ", ".join(bound)
        )


def _apply(ctx: Context, actions: list[Action], run: Executors) -> list[Outcome]:
    return apply_plan(gather_steps(ctx, actions), run)


def gather_steps(ctx: Context, actions: list[Action]) -> list[Step]:
    """Each action with the fact its routing needs, read once here at the edge: the vfs-agent
    generated unit systemd has for its path (only a mount or an unmount can go to systemd)."""
    return [
        Step(a, managed_unit(ctx.sysroot, a.path) if a.kind in CHANGING and a.path else None)
        for a in actions
    ]
