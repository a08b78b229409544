"""What every command works on: the system root and the policy, and the error a command
reports when it cannot do what was asked. Kept apart from ops (which imports the planner and
the mount code) so that commands such as `kernel` start without them."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass

from vfs_agent.policy import compiled as policy_cache
from vfs_agent.policy.types import Policy
from vfs_agent.system.lock import mount_lock
from vfs_agent.system.sysroot import SysRoot

log = logging.getLogger(__name__)


class OperationError(Exception):
    """A command could not do what was asked (exit 1), with a message for a person."""


@dataclass(frozen=True)
class Context:
    sysroot: SysRoot
    policy_path: str | None = None  # None: the default files

    def policy(self) -> Policy:
        """The policy: the compiled one while it matches the files exactly (no YAML or pydantic
        to import: the compiled policy is what the loader returned for these very files), else
        read and validated in full."""
        return self._policy(save_compiled=False)

    def policy_to_apply(self) -> Policy:
        """The policy for a command that acts on it; also compiled for the generator."""
        return self._policy(save_compiled=True)

    def _policy(self, *, save_compiled: bool) -> Policy:
        compiled = policy_cache.load(self.sysroot) if self.policy_path is None else None
        if compiled is None:
            from vfs_agent.policy.load import load_policy

            compiled = load_policy(self.sysroot, self.policy_path, save_compiled=save_compiled)
        for warning in compiled.warnings:  # host layers left out: the journal or stderr
            log.warning("%s", warning)
        return compiled

    @contextlib.contextmanager
    def locked(self, dry_run: bool) -> Iterator[None]:
        if dry_run:
            yield
        else:
            with mount_lock(self.sysroot):
                yield
