"""Settings for every test run, and the summary of its guests.

Property tests measure no speed: on this project's 2-core machine a guest boot or a package
build may run beside them, and hypothesis's default 200 ms deadline per example then fails
tests whose logic is fine. Speed is measured by the scripts in bench/.

The summary of the guests (images, log directories, every boot) is printed here, not by
tests/guest/conftest.py: under pytest-xdist (`make test` runs the guest tests in two streams)
the controller, which prints it, never loads that file; each worker hands over its part.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import settings

from tests.guestlib import vm as vmlib
from tests.guestlib.processes import live_processes

settings.register_profile("vfs-agent", deadline=None)
settings.load_profile("vfs-agent")


def pytest_sessionfinish(session: pytest.Session) -> None:
    """After the guests' fixtures are torn down: note any child still running; in a
    pytest-xdist worker, hand this stream's notes and boots to the controller."""
    leftovers = live_processes()
    if leftovers:
        vmlib.NOTES.append(f"processes still running: {[p.name for p in leftovers]}")
    output = getattr(session.config, "workeroutput", None)
    if output is not None:
        output["vfs_agent_notes"] = list(vmlib.NOTES)
        output["vfs_agent_boots"] = [list(boot) for boot in vmlib.BOOTS]


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """pytest-xdist's controller: a stream ended; keep what it handed over."""
    output = getattr(node, "workeroutput", {})
    vmlib.NOTES.extend(output.get("vfs_agent_notes", []))
    vmlib.BOOTS.extend(tuple(boot) for boot in output.get("vfs_agent_boots", []))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not (vmlib.BOOTS or vmlib.NOTES):
        return
    terminalreporter.section("guest boots")
    for line in vmlib.NOTES:
        terminalreporter.write_line(line)
    for name, mode, attempts, seconds, ok in vmlib.BOOTS:
        state = f"channel ready in {seconds:.1f}s" if ok else "FAILED"
        retry = f" (after {attempts - 1} retry)" if attempts > 1 else ""
        terminalreporter.write_line(f"{name:28} {mode:8} {state}{retry}")
