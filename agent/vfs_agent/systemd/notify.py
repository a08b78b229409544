"""sd_notify(3) for the daemon: READY, STATUS, WATCHDOG, RELOADING, STOPPING."""

from __future__ import annotations

import importlib
import os
import time
from collections.abc import Callable


class Notifier:
    """Talks to systemd when started by it (NOTIFY_SOCKET), does nothing otherwise."""

    def __init__(self) -> None:
        self._send: Callable[[str], object] | None = None
        if os.environ.get("NOTIFY_SOCKET"):
            try:
                self._send = importlib.import_module("systemd.daemon").notify
            except ImportError:
                self._send = None
        usec = os.environ.get("WATCHDOG_USEC", "")
        pid = os.environ.get("WATCHDOG_PID", "")
        owned = not pid or pid == str(os.getpid())
        self.watchdog_interval: float | None = (
            int(usec) / 2e6 if usec.isdigit() and owned and self._send else None
        )
        self._last_ping = 0.0

    def send(self, state: str) -> None:
        if self._send is not None:
            self._send(state)

    def ready(self, status: str) -> None:
        self.send(f"READY=1\nSTATUS={status}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def watchdog(self) -> None:
        """Ping at most once per half interval."""
        if self.watchdog_interval is None:
            return
        now = time.monotonic()
        if now - self._last_ping >= self.watchdog_interval:
            self.send("WATCHDOG=1")
            self._last_ping = now
