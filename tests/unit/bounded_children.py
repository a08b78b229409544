"""Kill and reap the children of system/bounded.py that are still running (a stuck probe or
mount child a test left), so no test sees another's."""

from __future__ import annotations

import os
import signal
import time

from vfs_agent.system import bounded


def kill_and_reap(seconds: float = 5.0) -> set[int]:
    """SIGKILL every unreaped child and reap them; the pids still unreaped after `seconds`."""
    for pid in bounded.unreaped():
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + seconds
    while bounded.unreaped() and time.monotonic() < deadline:
        bounded.reap()
        time.sleep(0.02)
    return bounded.unreaped()
