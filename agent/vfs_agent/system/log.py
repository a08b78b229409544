"""Logging: the journal with structured fields when running under systemd, stderr otherwise.

Callers pass journal fields as `extra={"TAG": ..., "MOUNT_PATH": ...}`; upper-case extras become
journal fields, and plain stderr shows just the message.
"""

from __future__ import annotations

import logging
import os
import sys


class _StderrFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        prefix = "" if record.levelno <= logging.INFO else f"{record.levelname.lower()}: "
        line = f"vfs-agent: {prefix}{record.getMessage()}"
        if record.exc_info:  # asked for (`-vv` on an unexpected error): the traceback follows
            return f"{line}\n{self.formatException(record.exc_info)}"
        return line


def setup_logging(verbose: int = 0) -> None:
    level = logging.DEBUG if verbose else logging.INFO
    root = logging.getLogger("vfs_agent")
    root.setLevel(level)
    root.handlers.clear()
    root.propagate = False
    handler: logging.Handler | None = None
    if os.environ.get("JOURNAL_STREAM") or os.environ.get("VFS_AGENT_JOURNAL") == "1":
        handler = _journal_handler()
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_StderrFormatter())
    root.addHandler(handler)


def _journal_handler() -> logging.Handler | None:
    try:
        from systemd.journal import JournalHandler
    except ImportError:
        return None
    handler: logging.Handler = JournalHandler(SYSLOG_IDENTIFIER="vfs-agent")
    return handler
