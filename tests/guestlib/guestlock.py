"""One guest at a time on this machine, across processes.

A TCG guest keeps both cores busy; two at once make each boot slower than the timeouts
assume. Every VM holds an exclusive flock on $VFS_AGENT_CACHE/guest/.guest.lock from start to
kill; a second harness process (another test run, the demo, the bench) waits its turn.
"""

from __future__ import annotations

import fcntl
import os
import time
from typing import IO

from tests.guestlib.common import HarnessError, cache_dir, progress

_HELD: dict[str, IO[str]] = {}


def _try_lock(handle: IO[str]) -> bool:
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def acquire(owner: str, timeout: float) -> None:
    """Take the lock for `owner` (a VM name), waiting up to `timeout` seconds."""
    if _HELD:
        raise HarnessError(
            f"cannot start {owner}: {next(iter(_HELD))} is still running in this process "
            "(one guest at a time; pass VMConfig(exclusive=False) to override)"
        )
    handle = (cache_dir() / ".guest.lock").open("a+")
    deadline = time.monotonic() + timeout
    announced = False
    while not _try_lock(handle):
        if not announced:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            progress(f"{owner}: waiting for {holder} to finish (one guest at a time)")
            announced = True
        if time.monotonic() > deadline:
            handle.close()
            raise HarnessError(f"{owner}: another guest kept running for {timeout:.0f}s")
        time.sleep(1.0)
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
