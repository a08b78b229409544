"""The interface every executor offers."""

from __future__ import annotations

from typing import Protocol

from vfs_agent.core.observation import Mounted
from vfs_agent.execute.outcome import Outcome
from vfs_agent.execute.route import Step


class Executor(Protocol):
    """Carries out the steps routed to it (execute/route.py). A failed action is an Outcome with
    `ok` False, never an exception: one failure never stops the others."""

    def carry_out(self, step: Step) -> Outcome: ...


class UnmountError(Exception):
    """`vfs-agent umount` could not unmount a share; the message is for a person."""


class Unmounter(Protocol):
    """What `vfs-agent umount` unmounts with: the kernel, or a dry run that changes nothing."""

    def unmount(self, mount: Mounted, *, lazy: bool, abort: bool) -> None:
        """Unmount `mount` (first aborting its FUSE connection with `abort`); raises
        UnmountError."""
        ...
