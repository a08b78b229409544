"""What every command works on: the system root and the policy, and the error a command
reports when it cannot do what was asked. Kept apart from ops (which imports the planner and
the mount code), and importing the policy's code only when a command asks for the policy, so
that commands such as `kernel` start without any of that."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass

from vfs_agent.system.lock import mount_lock
from vfs_agent.system.sysroot import SysRoot

TYPE_CHECKING = False
if TYPE_CHECKING:
    from vfs_agent.policy.types import Policy

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
        read and validated in full. Writes nothing: reports call this."""
        return self._policy(compile_it=False)

    def policy_to_apply(self) -> Policy:
        """The policy for a command that acts on it. Read in full, it is also compiled for the
        generator (best effort: a read-only /var or a non-root user just means no cache)."""
        return self._policy(compile_it=True)

    def _policy(self, *, compile_it: bool) -> Policy:
        from vfs_agent.policy import compiled as policy_cache

        policy = policy_cache.load(self.sysroot) if self.policy_path is None else None
        if policy is None:
            from vfs_agent.policy.load import read_policy

            loaded = read_policy(self.sysroot, self.policy_path)
            if compile_it and loaded.default_files:
                with contextlib.suppress(OSError):
                    policy_cache.compile_policy(self.sysroot, loaded)
            policy = loaded.policy
        for warning in policy.warnings:  # host layers left out: the journal or stderr
            log.warning("%s", warning)
        return policy

    @contextlib.contextmanager
    def locked(self, dry_run: bool) -> Iterator[None]:
        if dry_run:
            yield
        else:
            with mount_lock(self.sysroot):
                yield
