"""A small synchronous QMP client: JSON over a unix socket, capabilities, commands, events."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.guestlib.common import HarnessError, connect_unix


class QMPError(HarnessError):
    """QEMU answered a command with an error, or the monitor went away."""


class QMPClient:
    """One QMP session. Events that arrive while waiting for a reply are kept for wait_event()."""

    def __init__(self, path: Path, connect_timeout: float = 15.0) -> None:
        self.path = path
        self.events: list[dict[str, Any]] = []
        self._next_id = 0
        self._buffer = b""
        self.sock = connect_unix(path, connect_timeout, QMPError, "QMP socket")
        greeting = self._read(time.monotonic() + connect_timeout)
        if "QMP" not in greeting:
            raise QMPError(f"unexpected QMP greeting: {greeting}")
        self.execute("qmp_capabilities")

    def close(self) -> None:
        self.sock.close()

    def _read(self, deadline: float) -> dict[str, Any]:
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise QMPError("timed out waiting for QMP")
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError as exc:
                raise QMPError(f"QMP connection failed: {exc}") from exc
            if not chunk:
                raise QMPError("QMP connection closed (QEMU exited?)")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        message: dict[str, Any] = json.loads(line)
        return message

    def execute(
        self, command: str, arguments: dict[str, Any] | None = None, timeout: float = 30.0
    ) -> Any:
        """Run a command and return its "return" value; raise QMPError on "error"."""
        self._next_id += 1
        ident = f"harness-{self._next_id}"
        request: dict[str, Any] = {"execute": command, "id": ident}
        if arguments:
            request["arguments"] = arguments
        self.sock.sendall(json.dumps(request).encode() + b"\n")
        deadline = time.monotonic() + timeout
        while True:
            message = self._read(deadline)
            if "event" in message:
                self.events.append(message)
            elif message.get("id") == ident:
                if "error" in message:
                    error = message["error"]
                    raise QMPError(f"{command} failed: {error.get('class')}: {error.get('desc')}")
                return message.get("return")

    def wait_event(
        self,
        name: str,
        timeout: float,
        match: Callable[[dict[str, Any]], bool] | None = None,
    ) -> dict[str, Any]:
        """Return (and consume) the first event called `name` for which `match` holds."""
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events:
                if event["event"] == name and (match is None or match(event.get("data", {}))):
                    self.events.remove(event)
                    return event
            try:
                message = self._read(deadline)
            except QMPError as exc:
                raise QMPError(f"no {name} event within {timeout:.0f}s: {exc}") from exc
            if "event" in message:
                self.events.append(message)
