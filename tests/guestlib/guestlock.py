"""A bounded number of guests at once on this machine, across processes: one by default.

A TCG guest keeps one core busy (QEMU runs both vCPUs in one thread), and its boots must stay
within the timeouts the tests assume. Every VM holds an exclusive flock on one of the slot
files $VFS_AGENT_CACHE/guest/.guest.lock, .guest.lock.1, ... from start to kill; there are
$VFS_AGENT_GUEST_SLOTS of them (default 1), and a harness process that finds every slot taken
(another test run, the demo, the bench) waits its turn. `make test` runs its guest tests in
two streams with two slots.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

from tests.guestlib.common import HarnessError, cache_dir, progress
from tests.guestlib.processes import wait_until

_HELD: dict[str, IO[str]] = {}


def _try_lock(handle: IO[str]) -> bool:
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def slots() -> int:
    """How many guests may run at once on this machine ($VFS_AGENT_GUEST_SLOTS, default 1)."""
    value = os.environ.get("VFS_AGENT_GUEST_SLOTS", "1")
    if not value.isdigit() or int(value) < 1:
        raise HarnessError(f"VFS_AGENT_GUEST_SLOTS={value!r}: expected a whole number >= 1")
    return int(value)


def _slot_paths(count: int) -> list[Path]:
    return [cache_dir() / (".guest.lock" + (f".{i}" if i else "")) for i in range(count)]


def _take_a_slot(count: int) -> IO[str] | None:
    """The handle of the first free slot, locked; None when every slot is taken."""
    for path in _slot_paths(count):
        handle = path.open("a+")
        if _try_lock(handle):
            return handle
        handle.close()
    return None


def _holders(count: int) -> str:
    names = [(p.read_text().strip() if p.exists() else "") for p in _slot_paths(count)]
    return ", ".join(name or "another process" for name in names)


def acquire(owner: str, timeout: float) -> None:
    """Take a slot for `owner` (a VM name), waiting up to `timeout` seconds."""
    if _HELD:
        raise HarnessError(
            f"cannot start {owner}: {next(iter(_HELD))} is still running in this process "
            "(one guest per process; pass VMConfig(exclusive=False) to override)"
        )
    count = slots()
    taken: list[IO[str]] = []

    def take() -> bool:
        handle = _take_a_slot(count)
        if handle is not None:
            taken.append(handle)
        return handle is not None

    if not take():
        progress(f"{owner}: waiting for {_holders(count)} to finish ({count} guest(s) at once)")
        if not wait_until(take, timeout, interval=1.0):
            raise HarnessError(f"{owner}: other guests kept running for {timeout:.0f}s")
    handle = taken[0]
    handle.seek(0)
    handle.truncate()
    handle.write(f"guest {owner} of pid {os.getpid()}\n")
    handle.flush()
    _HELD[owner] = handle


def release(owner: str) -> None:
    handle = _HELD.pop(owner, None)
    if handle is not None:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()
