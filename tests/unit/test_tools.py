"""system/tools.py: external tools run with a deadline, no shell, stdin closed, and their
failures in one message that names the command. Real processes (sh, sleep), no fakes."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from vfs_agent.system.tools import ToolError, run_tool, tool_output


def test_success_is_none_and_output_is_stdout() -> None:
    assert run_tool(["true"], 10) is None
    assert tool_output(["sh", "-c", "echo out; echo err >&2"], 10) == "out\n"


def test_a_failure_names_the_command_and_says_why() -> None:
    assert run_tool(["false"], 10) == "false failed: exit 1"
    message = run_tool(["sh", "-c", "echo 'Unit x.service not found.' >&2; exit 5"], 10)
    assert (
        message
        == "sh -c echo 'Unit x.service not found.' >&2; exit 5 failed: Unit x.service not found."
    )
    with pytest.raises(ToolError, match=r"^sh -c exit 3 failed: exit 3$"):
        tool_output(["sh", "-c", "exit 3"], 10)


def test_a_missing_tool_is_a_message_not_an_exception(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-tool")
    assert run_tool([missing, "x"], 10) == f"{missing} x failed: No such file or directory"


def test_a_hanging_tool_is_stopped_at_the_deadline(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    start = time.monotonic()
    message = run_tool(["sh", "-c", f"echo $$ > {pidfile}; exec sleep 60"], 0.5)
    assert time.monotonic() - start < 10
    assert message is not None and message.endswith("failed: no answer within 0.5 s")
    pid = int(pidfile.read_text())
    with pytest.raises(ProcessLookupError):  # killed and reaped, not left behind
        os.kill(pid, 0)


def test_a_tool_that_reads_stdin_gets_end_of_file_at_once() -> None:
    assert tool_output(["sh", "-c", 'read line; echo "[$?]"'], 10) == "[1]\n"


def test_output_that_is_not_utf8_does_not_fail() -> None:
    out = tool_output(["printf", "caf\\351"], 10)
    assert out.encode("utf-8", "surrogateescape") == b"caf\xe9"
