"""The one way vfs-agent runs an external tool (systemctl, modprobe, cloud-init, ...).

Every run is bounded by a timeout, reads no standard input, and a failure becomes one line an
operator can act on: the command, then the exit status and the last line the tool wrote to
stderr, or that the tool is not installed, or that it did not finish in time.
"""

from __future__ import annotations

import shlex
import subprocess


class ToolError(Exception):
    """A tool could not be run or failed; str() is the one-line message."""


def run_tool(argv: list[str], timeout: float) -> str | None:
    """Run `argv`; None when it exits 0, else the one-line reason (see ToolError)."""
    try:
        tool_output(argv, timeout)
    except ToolError as e:
        return str(e)
    return None


def tool_output(argv: list[str], timeout: float) -> str:
    """Run `argv` and return its standard output; raises ToolError unless it exits 0."""
    command = shlex.join(argv)
    try:
        done = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
        )
    except FileNotFoundError:
        raise ToolError(f"{command} failed: {argv[0]} not found (is it installed?)") from None
    except subprocess.TimeoutExpired:
        raise ToolError(f"{command} failed: no answer within {timeout:g} s") from None
    except OSError as e:
        raise ToolError(f"{command} failed: {e.strerror or e}") from None
    if done.returncode != 0:
        raise ToolError(f"{command} failed: {_status(done.returncode)}{_last_line(done.stderr)}")
    return done.stdout


def _status(code: int) -> str:
    return f"killed by signal {-code}" if code < 0 else f"exit status {code}"


def _last_line(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    return f": {lines[-1]}" if lines else ""
