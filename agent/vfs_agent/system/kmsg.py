"""Messages for the kernel log, for code that runs before the journal (generator, udev helper)."""

from __future__ import annotations

import os
import sys

ERR = 3
WARNING = 4
INFO = 6


def kmsg(level: int, ident: str, message: str) -> None:
    line = f"<{level}>{ident}: {message}\n".encode("utf-8", "backslashreplace")
    try:
        with open(os.environ.get("VFS_AGENT_KMSG", "/dev/kmsg"), "ab", buffering=0) as handle:
            handle.write(line[:1000])
    except OSError:
        sys.stderr.write(f"{ident}: {message}\n")
