"""The operations behind the commands: each wires the edges (policy files, observation,
mount syscalls, output files) around the pure core. The CLI and the daemon call these."""

from __future__ import annotations

import errno
import logging
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path

from vfs_agent.commands.context import Context as Context  # re-exported: ops.Context
from vfs_agent.commands.context import OperationError as OperationError
from vfs_agent.core import desired
from vfs_agent.core.desired import desired_fstab, desired_units
from vfs_agent.core.model import SHARE_FSTYPES, Mounted, Observed, Transport
from vfs_agent.core.mountinfo import top_mounts
from vfs_agent.core.plan import Action, ActionKind, plan
from vfs_agent.core.render_systemd import Skipped, UnitFile
from vfs_agent.execute.apply import KernelMounter, Mounter, Outcome, apply_plan
from vfs_agent.policy.types import Policy, Rule, RuleRef, TransportChoice
from vfs_agent.system.discovery import discover
from vfs_agent.system.fuse_abort import abort_connection
from vfs_agent.system.generated_files import sync_unit_dir, write_fstab_block
from vfs_agent.system.kernel_modules import bind_unbound, ensure_filesystem
from vfs_agent.system.mount_table import read_mount_table
from vfs_agent.system.observe import nonempty_dirs, observe
from vfs_agent.systemd.installed import udev_rule_installed
from vfs_agent.systemd.units import managed_unit, start_unit

log = logging.getLogger(__name__)


class SystemdMode(StrEnum):
    """What to do with a share whose path has a generated .mount unit (systemd manages it)."""

    START = "start"  # systemctl start the unit (commands run by hand)
    LEAVE = "leave"  # leave it to systemd (the daemon: the unit follows its device itself)


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


def mount_all(ctx: Context, *, dry_run: bool, mounter: Mounter | None = None) -> list[Outcome]:
    # An invalid policy stops here, before anything changes.
    policy = ctx.policy() if dry_run else ctx.policy_to_apply()
    return reconcile(ctx, policy, dry_run=dry_run, mounter=mounter)


def reconcile(
    ctx: Context,
    policy: Policy,
    *,
    dry_run: bool = False,
    mounter: Mounter | None = None,
    systemd: SystemdMode = SystemdMode.START,
) -> list[Outcome]:
    """Discover, plan and apply under the mount lock: mount-all, and every daemon event."""
    with ctx.locked(dry_run):
        if not dry_run:
            _bind_unbound(ctx)
        planned = current_plan(ctx, policy)
        return _apply(ctx, planned.actions, dry_run, mounter, systemd)


def mount_one(
    ctx: Context, tag: str, path: str | None, *, dry_run: bool, mounter: Mounter | None = None
) -> list[Outcome]:
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
    with ctx.locked(dry_run):
        planned = current_plan(ctx, override)
        skip = (ActionKind.UNMOUNT_STALE, ActionKind.IGNORE)
        mine = [a for a in planned.actions if a.tag == tag and a.kind not in skip]
        if not mine:
            raise OperationError(f"no share with tag {tag!r} is attached (see 'vfs-agent status')")
        return _apply(ctx, mine, dry_run, mounter)


def umount(
    ctx: Context,
    target: str,
    *,
    lazy: bool,
    dry_run: bool,
    abort: bool = False,
    mounter: Mounter | None = None,
) -> list[str]:
    """Unmount a share by mount path or by tag (every mount of it). Returns the paths.

    With `abort`, the FUSE connection of each mount is aborted first where the kernel allows it
    (system/fuse_abort.py), then the mount is detached: the way out of a mount whose virtiofsd died.
    The mount table is read, never the mounts themselves, so a hung mount cannot hang this.
    """
    mounter = mounter or KernelMounter()
    with ctx.locked(dry_run):
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
            if dry_run:
                continue
            if abort:
                _abort(ctx, entry)
            try:
                mounter.umount(str(ctx.sysroot.path(entry.target)), lazy=lazy or abort)
            except OSError as e:
                hint = "; retry with --lazy" if e.errno == errno.EBUSY and not lazy else ""
                raise OperationError(
                    f"Failed to unmount {entry.target}: {e.strerror}{hint}"
                ) from None
        return [e.target for e in chosen]


def _bind_unbound(ctx: Context) -> None:
    """Share devices the driver refused while an older device with their tag was going away
    (a quick re-plug) can bind once it is gone; nothing else retries them."""
    bound = [name for t in Transport for name in bind_unbound(ctx.sysroot, t)]
    if bound:
        log.info(
            "Bound %s, refused while a device with the same tag was going away.", ", ".join(bound)
        )


def _abort(ctx: Context, entry: Mounted) -> None:
    fields = {"TAG": entry.source, "MOUNT_PATH": entry.target}
    try:
        aborted = abort_connection(ctx.sysroot, entry.device)
    except (OSError, ValueError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise OperationError(
            f"Failed to abort the FUSE connection of {entry.target} (device {entry.device}): {why}"
        ) from None
    if aborted:
        log.warning(
            "Aborted the FUSE connection of share %r on %s.",
            entry.source,
            entry.target,
            extra=fields,
        )
    else:
        log.warning(
            "The kernel offers no abort for the virtio-fs mount of %r on %s; detaching it so "
            "nothing new enters it. Requests already sent to its device wait until the host "
            "answers or removes the device.",
            entry.source,
            entry.target,
            extra=fields,
        )


def _apply(
    ctx: Context,
    actions: list[Action],
    dry_run: bool,
    mounter: Mounter | None,
    systemd: SystemdMode = SystemdMode.START,
) -> list[Outcome]:
    def prepare(transport: Transport) -> str | None:
        return ensure_filesystem(ctx.sysroot, transport)

    def delegate(action: Action) -> Outcome | None:
        unit = managed_unit(ctx.sysroot, action.path) if action.path else None
        if unit is None:
            return None
        if dry_run:
            return Outcome(action, True, False, f"would start {unit}")
        if ctx.sysroot.root != Path("/"):
            # Like systemctl --root: a unit inside another root is never started by the
            # running system's manager.
            why = f"left to systemd inside {ctx.sysroot.root} ({unit}); --root starts no unit"
            return Outcome(action, True, False, why)
        if systemd is SystemdMode.LEAVE:
            return Outcome(action, True, False, f"left to systemd ({unit})")
        problem = start_unit(unit)
        if problem:
            message = f"Failed to mount share {action.tag!r} on {action.path} via {unit}: {problem}"
            return Outcome(action, False, False, message)
        return Outcome(
            action, True, True, f"Mounted share {action.tag!r} on {action.path} ({unit})."
        )

    return apply_plan(
        actions,
        ctx.sysroot,
        mounter or KernelMounter(),
        dry_run=dry_run,
        prepare=prepare,
        delegate=delegate,
    )


def generated_units(
    ctx: Context, bind_device: bool | None = None
) -> tuple[list[UnitFile], list[Skipped]]:
    """The units for the policy and the attached shares, exactly as the boot-time generator
    computes them (core/desired.py): the mount table plays no part. `bind_device` None: bind
    to the share's device unit when vfs-agent's udev rule is installed (without it those
    device units never appear)."""
    if bind_device is None:
        bind_device = udev_rule_installed(ctx.sysroot)
    return desired_units(ctx.policy(), discover(ctx.sysroot), bind_device=bind_device)


def write_units(
    ctx: Context, directory: Path, bind_device: bool | None = None
) -> tuple[list[str], list[str], list[Skipped]]:
    units, skipped = generated_units(ctx, bind_device)
    written, removed = sync_unit_dir(directory, units)
    return written, removed, skipped


def not_persistent(actions: list[Action]) -> list[Skipped]:
    """The wanted shares that neither an fstab line nor a unit can express (core/persist.py)."""
    return desired.not_persistent(actions)


def fstab_block(ctx: Context) -> tuple[str, list[Skipped]]:
    """The fstab block for the policy and the attached shares (core/desired.py, as for units),
    and every share that gets no line, with why."""
    return desired_fstab(ctx.policy(), discover(ctx.sysroot))


def write_fstab(ctx: Context, fstab: Path) -> list[Skipped]:
    block, skipped = fstab_block(ctx)
    write_fstab_block(fstab, block)
    return skipped
