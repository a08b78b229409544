"""Carry out a plan with mount(2)/umount2(2)."""

from __future__ import annotations

import errno
import functools
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from vfs_agent.core.model import Transport
from vfs_agent.core.mount_options import to_mount_args
from vfs_agent.core.plan import Action, ActionKind
from vfs_agent.system import bounded, syscalls
from vfs_agent.system.sysroot import SysRoot

log = logging.getLogger(__name__)


class Mounter(Protocol):
    def mount(self, source: str, target: str, fstype: str, flags: int, data: str) -> None: ...
    def umount(self, target: str, *, lazy: bool = False) -> None: ...


MOUNT_TIMEOUT = 30.0  # seconds; a virtio-fs mount(2) takes well under one even under emulation
UMOUNT_TIMEOUT = 10.0


class KernelMounter:
    """The real thing, each call in a child with a deadline (system/bounded.py): while the kernel is
    stuck removing a virtio-fs device, every virtio-fs mount(2) waits for it for good."""

    def mount(self, source: str, target: str, fstype: str, flags: int, data: str) -> None:
        keep = [int(target.rsplit("/", 1)[1])] if target.startswith("/proc/self/fd/") else []
        call = functools.partial(syscalls.mount, source, target, fstype, flags, data)
        code = bounded.run(lambda: call() or 0, MOUNT_TIMEOUT, keep=keep, name=b"vfs-agent-mount")
        if code == bounded.TIMED_OUT:
            raise OSError(errno.ETIMEDOUT, f"mount(2) did not return within {MOUNT_TIMEOUT:.0f}s")
        if code:
            raise OSError(code, os.strerror(code))

    def umount(self, target: str, *, lazy: bool = False) -> None:
        """umount2(2) in a child too: when the last user of a virtio-fs mount lets go, the
        kernel says goodbye to the host's daemon (FUSE_DESTROY) and waits for its answer, in
        the task that let go. With MNT_DETACH the mount is gone from the tree before that."""
        call = functools.partial(syscalls.umount, target, lazy=lazy)
        code = bounded.run(lambda: call() or 0, UMOUNT_TIMEOUT, name=b"vfs-agent-umount")
        if code == bounded.TIMED_OUT:
            if lazy:
                log.warning(
                    "Detached %s; the kernel's clean-up of it waits for its host daemon.", target
                )
                return
            raise OSError(errno.ETIMEDOUT, f"umount(2) did not return within {UMOUNT_TIMEOUT:.0f}s")
        if code:
            raise OSError(code, os.strerror(code))


@dataclass(frozen=True)
class Outcome:
    action: Action
    ok: bool
    changed: bool
    message: str

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


def apply_plan(
    actions: list[Action],
    sysroot: SysRoot,
    mounter: Mounter,
    *,
    dry_run: bool = False,
    prepare: Callable[[Transport], str | None] | None = None,
    delegate: Callable[[Action], Outcome | None] | None = None,
) -> list[Outcome]:
    """Apply every action in order; one failure never stops the others.

    `prepare(transport)` makes the kernel ready for a filesystem type (loads its module) and
    returns a problem or None; it is called once per type, before the first mount of that type.
    `delegate(action)` may carry out a mount another way (systemd's own unit) and return its
    outcome, or None to mount here.
    """
    prepared: dict[Transport, str | None] = {}
    outcomes = []
    for action in actions:
        transport = action.transport
        wanted = action.kind is ActionKind.MOUNT and not dry_run
        if prepare is not None and wanted and transport and transport not in prepared:
            prepared[transport] = prepare(transport)
        delegated = delegate(action) if delegate and action.kind is ActionKind.MOUNT else None
        outcome = delegated or _apply_one(action, sysroot, mounter, dry_run, prepared)
        _log(outcome)
        outcomes.append(outcome)
    return outcomes


def _apply_one(
    action: Action,
    sysroot: SysRoot,
    mounter: Mounter,
    dry_run: bool,
    prepared: dict[Transport, str | None],
) -> Outcome:
    kind = action.kind
    if kind is ActionKind.MOUNT:
        return _mount(action, sysroot, mounter, dry_run, prepared)
    if kind is ActionKind.UNMOUNT_STALE:
        return _unmount_stale(action, sysroot, mounter, dry_run)
    if kind is ActionKind.KEEP:
        return Outcome(action, True, False, f"{action.path}: already mounted")
    if kind is ActionKind.IGNORE:
        return Outcome(action, True, False, action.reason)
    if kind is ActionKind.ABSENT:
        return Outcome(action, not action.required, False, f"share {action.tag!r} is not attached")
    return Outcome(action, False, False, action.reason)  # CONFLICT, REFUSE


def _mount(
    action: Action,
    sysroot: SysRoot,
    mounter: Mounter,
    dry_run: bool,
    prepared: dict[Transport, str | None],
) -> Outcome:
    assert action.path is not None and action.transport is not None
    where = action.path
    if dry_run:
        return Outcome(action, True, False, f"would mount {action.tag!r} on {where}")
    args = to_mount_args(action.options, action.transport)
    try:
        with sysroot.open_dir_nofollow(where, create=True) as fd:
            mounter.mount(
                action.tag, f"/proc/self/fd/{fd}", action.transport.value, args.flags, args.data
            )
    except OSError as e:
        message = syscalls.explain_mount_error(e, action.tag, action.transport)
        if e.errno == errno.ENODEV and prepared.get(action.transport):
            message += f" ({prepared[action.transport]})"
        return Outcome(
            action, False, False, f"Failed to mount share {action.tag!r} on {where}: {message}"
        )
    note = f" Warning: {action.warning}." if action.warning else ""
    return Outcome(action, True, True, f"Mounted share {action.tag!r} on {where}.{note}")


def _unmount_stale(action: Action, sysroot: SysRoot, mounter: Mounter, dry_run: bool) -> Outcome:
    assert action.path is not None
    if dry_run:
        return Outcome(action, True, False, f"would unmount {action.path} lazily ({action.reason})")
    try:
        mounter.umount(str(sysroot.path(action.path)), lazy=True)
    except OSError as e:
        if e.errno == errno.EINVAL:  # no longer a mount point: someone was faster
            return Outcome(action, True, False, f"{action.path} is no longer mounted")
        return Outcome(action, False, False, f"Failed to unmount {action.path}: {e.strerror}")
    return Outcome(action, True, True, f"Unmounted {action.path} ({action.reason}).")


def _log(outcome: Outcome) -> None:
    action = outcome.action
    fields = {"TAG": action.tag, "MOUNT_PATH": action.path or "", "ACTION": action.kind.value}
    if outcome.ok:
        level = logging.INFO if outcome.changed else logging.DEBUG
        log.log(level, outcome.message, extra=fields)
    elif outcome.fatal:
        log.error(outcome.message, extra=fields)
    else:
        log.warning("%s, ignoring.", outcome.message.rstrip("."), extra=fields)
