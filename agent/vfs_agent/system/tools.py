"""Running an external tool (systemctl, cloud-init, ...): the one place that starts a process
and turns its failure into one line for a person. Never through a shell; stdin is /dev/null,
so a tool that asks a question fails instead of waiting; a deadline bounds every run.

The answer names the command: "systemctl daemon-reload failed: <its stderr>" (or "exit N"
when it printed nothing, or why it could not start or ran out of time)."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence


class ToolError(Exception):
    """The tool could not run, timed out or exited non-zero; the message says which."""


def run_tool(argv: Sequence[str], timeout: float) -> str | None:
    """Run `argv`; None when it exited 0, else why not."""
    try:
        tool_output(argv, timeout)
    except ToolError as e:
        return str(e)
    return None


def tool_output(argv: Sequence[str], timeout: float) -> str:
    """What `argv` printed on stdout when it exited 0; ToolError otherwise."""
    shown = " ".join(argv)
    try:
        done = subprocess.run(
            list(argv),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="surrogateescape",
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise ToolError(f"{shown} failed: no answer within {timeout:g} s") from None
    except OSError as e:
        raise ToolError(f"{shown} failed: {e.strerror or e}") from None
    if done.returncode != 0:
        raise ToolError(f"{shown} failed: {done.stderr.strip() or f'exit {done.returncode}'}")
    return done.stdout
