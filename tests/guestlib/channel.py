"""Host end of the command channel: JSON lines over QEMU's virtio-serial chardev socket.

The guest end is guest/guest_server.py (its docstring documents the protocol). Requests written
before the guest opened its port wait in the socket, so the host may start talking at once;
replies are matched by id, and stale replies (a ping resent during boot) are dropped.
"""

from __future__ import annotations

import base64
import json
import select
import time
from pathlib import Path
from typing import Any

from tests.guestlib.common import HarnessError, connect_unix


class ChannelError(HarnessError):
    """The channel is closed, or the guest did not answer in time."""


class Channel:
    def __init__(self, path: Path, connect_timeout: float = 15.0) -> None:
        self.path = path
        self._next_id = 0
        self._buffer = b""
        self.sock = connect_unix(path, connect_timeout, ChannelError, "channel socket")

    def close(self) -> None:
        self.sock.close()

    def send(self, op: str, **fields: Any) -> int:
        """Send a request without waiting; returns its id."""
        self._next_id += 1
        request = {"id": self._next_id, "op": op, **fields}
        try:
            self.sock.sendall(json.dumps(request).encode() + b"\n")
        except OSError as exc:
            raise ChannelError(f"channel send failed: {exc}") from exc
        return self._next_id

    def receive(self, ident: int, timeout: float) -> dict[str, Any]:
        """Wait for the reply with id `ident`."""
        deadline = time.monotonic() + timeout
        while True:
            while b"\n" in self._buffer:
                line, _, self._buffer = self._buffer.partition(b"\n")
                try:
                    reply = json.loads(line)
                except ValueError:
                    continue
                if isinstance(reply, dict) and reply.get("id") == ident:
                    return reply
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ChannelError(f"no reply from the guest within {timeout:.0f}s")
            ready, _, _ = select.select([self.sock], [], [], min(remaining, 1.0))
            if not ready:
                continue
            try:
                chunk = self.sock.recv(1 << 20)
            except OSError as exc:
                raise ChannelError(f"channel receive failed: {exc}") from exc
            if not chunk:
                raise ChannelError("channel closed (QEMU exited?)")
            self._buffer += chunk

    def request(self, op: str, wait: float, **fields: Any) -> dict[str, Any]:
        """Send a request, wait up to `wait` s for its reply; raise ChannelError on "error"."""
        reply = self.receive(self.send(op, **fields), wait)
        if "error" in reply:
            raise ChannelError(f"guest could not {op}: {reply['error']}")
        return reply


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str | None) -> bytes:
    return base64.b64decode(text or "")
