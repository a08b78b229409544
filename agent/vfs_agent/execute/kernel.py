"""The kernel executor: mount(2)/umount2(2) here, through system/syscalls in a bounded child
(system/bounded.py), with each filesystem's module loaded once before its first mount."""

from __future__ import annotations

import errno
import functools
import logging
import os
from typing import Protocol

from vfs_agent.core.mount_options import to_mount_args
from vfs_agent.core.observation import Mounted
from vfs_agent.core.plan import Action, ActionKind
from vfs_agent.core.transport import Transport
from vfs_agent.execute.executor import UnmountError
from vfs_agent.execute.outcome import Outcome
from vfs_agent.execute.route import Step
from vfs_agent.system import bounded, syscalls
from vfs_agent.system.fuse_abort import abort_connection
from vfs_agent.system.kernel_modules import ensure_driver, ensure_filesystem
from vfs_agent.system.mount_errors import explain_mount_error
from vfs_agent.system.sysroot import SysRoot

log = logging.getLogger(__name__)

MOUNT_TIMEOUT = 30.0  # seconds; a virtio-fs mount(2) takes well under one even under emulation
UMOUNT_TIMEOUT = 10.0


class KernelCalls(Protocol):
    """The calls into the kernel the executor makes; unit tests fake these."""

    def mount(self, source: str, target: str, fstype: str, flags: int, data: str) -> None: ...
    def umount(self, target: str, *, lazy: bool = False) -> None: ...
    def load_filesystem(self, transport: Transport) -> str | None:
        """Make `transport`'s filesystem known to the kernel; None when ready, else why not."""
        ...

    def load_driver(self, transport: Transport) -> str | None:
        """Register the virtio driver of `transport`'s devices; None when ready, else why not."""
        ...


class LiveKernelCalls:
    """The real thing, each mount call in a child with a deadline (system/bounded.py): while the
    kernel is stuck removing a virtio-fs device, every virtio-fs mount(2) waits for it for good."""

    def __init__(self, sysroot: SysRoot) -> None:
        self.sysroot = sysroot

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

    def load_filesystem(self, transport: Transport) -> str | None:
        return ensure_filesystem(self.sysroot, transport)

    def load_driver(self, transport: Transport) -> str | None:
        return ensure_driver(self.sysroot, transport)


class KernelExecutor:
    """Mounts and unmounts inside `sysroot` with `calls`. Mountpoints are created and opened
    without following symlinks, and mounted through the opened directory (/proc/self/fd/N)."""

    def __init__(self, sysroot: SysRoot, calls: KernelCalls | None = None) -> None:
        self.sysroot = sysroot
        self.calls = calls or LiveKernelCalls(sysroot)
        self._loaded: dict[Transport, str | None] = {}  # each transport's load problem, once

    def begin_plan(self) -> None:
        """Forget which filesystems were loaded: each plan loads them again before its first
        mount (a daemon's later reconcile finds a module someone unloaded meanwhile)."""
        self._loaded.clear()

    def carry_out(self, step: Step) -> Outcome:
        action = step.action
        if action.kind is ActionKind.UNMOUNT_STALE:
            return self._unmount_stale(action)
        assert action.kind is ActionKind.MOUNT, action.kind
        return self._mount(action)

    def _mount(self, action: Action) -> Outcome:
        assert action.path is not None and action.transport is not None
        transport, where = action.transport, action.path
        if transport not in self._loaded:
            self._loaded[transport] = self.calls.load_filesystem(transport)
        args = to_mount_args(action.options, transport)
        try:
            with self.sysroot.open_dir_nofollow(where, create=True) as fd:
                self.calls.mount(
                    action.tag, f"/proc/self/fd/{fd}", transport.value, args.flags, args.data
                )
        except OSError as e:
            message = explain_mount_error(e, action.tag, transport)
            if e.errno == errno.ENODEV and self._loaded.get(transport):
                message += f" ({self._loaded[transport]})"
            return Outcome(
                action, False, False, f"Failed to mount share {action.tag!r} on {where}: {message}"
            )
        note = f" Warning: {action.warning}." if action.warning else ""
        return Outcome(action, True, True, f"Mounted share {action.tag!r} on {where}.{note}")

    def _unmount_stale(self, action: Action) -> Outcome:
        assert action.path is not None
        try:
            self.calls.umount(str(self.sysroot.path(action.path)), lazy=True)
        except OSError as e:
            if e.errno == errno.EINVAL:  # no longer a mount point: someone was faster
                return Outcome(action, True, False, f"{action.path} is no longer mounted")
            return Outcome(action, False, False, f"Failed to unmount {action.path}: {e.strerror}")
        return Outcome(action, True, True, f"Unmounted {action.path} ({action.reason}).")

    def unmount(self, mount: Mounted, *, lazy: bool, abort: bool) -> None:
        """`vfs-agent umount`: with `abort`, the FUSE connection is aborted first where the
        kernel allows it (system/fuse_abort.py), then the mount is detached."""
        if abort:
            self._abort(mount)
        try:
            self.calls.umount(str(self.sysroot.path(mount.target)), lazy=lazy or abort)
        except OSError as e:
            hint = "; retry with --lazy" if e.errno == errno.EBUSY and not lazy else ""
            raise UnmountError(f"Failed to unmount {mount.target}: {e.strerror}{hint}") from None

    def _abort(self, mount: Mounted) -> None:
        fields = {"TAG": mount.source, "MOUNT_PATH": mount.target}
        try:
            aborted = abort_connection(self.sysroot, mount.device)
        except (OSError, ValueError) as e:
            why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            raise UnmountError(
                f"Failed to abort the FUSE connection of {mount.target} (device {mount.device}): "
                f"{why}"
            ) from None
        if aborted:
            log.warning(
                "Aborted the FUSE connection of share %r on %s.",
                mount.source,
                mount.target,
                extra=fields,
            )
        else:
            log.warning(
                "The kernel offers no abort for the virtio-fs mount of %r on %s; detaching it so "
                "nothing new enters it. Requests already sent to its device wait until the host "
                "answers or removes the device.",
                mount.source,
                mount.target,
                extra=fields,
            )
