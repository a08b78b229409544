"""Child processes the harness starts (qemu, virtiofsd) and the guarantee that they all stop.

Every child runs in its own session (so its whole process group can be signalled), gets
PR_SET_PDEATHSIG=SIGKILL (so it dies with the harness even on SIGKILL of pytest), and is tracked
in a registry that an atexit hook empties. stop() sends SIGTERM to the group, then SIGKILL.

PR_SET_PDEATHSIG fires when the *thread* that forked the child exits: start children from the
main thread (pytest fixtures do).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from tests.guestlib.common import progress

_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True)  # loaded before fork: the child only calls into it
_LIVE: dict[int, ManagedProcess] = {}


def _child_setup() -> None:
    """Runs in the child between fork and exec."""
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class ManagedProcess:
    """A started child with its log file; stop() is idempotent."""

    def __init__(self, name: str, argv: Sequence[str], log: Path) -> None:
        self.name = name
        self.argv = [str(a) for a in argv]
        self.log = log
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_child_setup,
            )
        self.pid = self.popen.pid
        _LIVE[self.pid] = self

    def alive(self) -> bool:
        return self.popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def wait(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for a voluntary exit; True when it exited."""
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return False
        self._reap_group()
        return True

    def _signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, sig)

    def _reap_group(self) -> None:
        # Helpers forked by the child (virtiofsd's sandbox) share its process group.
        self._signal_group(signal.SIGKILL)
        _LIVE.pop(self.pid, None)

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM the process group, SIGKILL it after `grace` seconds."""
        if self.popen.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                progress(f"{self.name} (pid {self.pid}) ignored SIGTERM; sending SIGKILL")
                self._signal_group(signal.SIGKILL)
                self.popen.wait(timeout=10)
        self._reap_group()

    def log_tail(self, limit: int = 3000) -> str:
        try:
            return self.log.read_bytes()[-limit:].decode(errors="replace")
        except OSError:
            return ""


def live_processes() -> list[ManagedProcess]:
    """Children started and not yet stopped."""
    return list(_LIVE.values())


def stop_all() -> None:
    """Stop every child still registered (atexit hook, fixture finalizers)."""
    for proc in list(_LIVE.values()):
        proc.stop(grace=3.0)


def wait_until(predicate: Callable[[], object], timeout: float, interval: float = 0.1) -> bool:
    """Poll a zero-argument callable until it returns true or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


atexit.register(stop_all)
