"""Fixtures for every unit test.

- `fake_tree`: the one fake system root builder (tests/unit/faketree.py): sysfs shares,
  mountinfo, kernel files, policy files, host layers. Tests that need two roots call
  `FakeTree(path)` themselves.
- Logging is reset around every test: an in-process CLI run (`setup_logging`) leaves a handler
  bound to that run's captured stderr and `propagate = False` on the `vfs_agent` logger, so a
  later test's `caplog` would see nothing, depending on the order the tests ran in.
- Children of system/bounded.py that a test left hanging (a stuck probe or mount child) are
  killed and reaped after it, so the next test never sees them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from bounded_children import kill_and_reap
from faketree import FakeTree

# The loggers vfs-agent configures: its own, and the root logger (pytest's caplog hangs there).
_LOGGERS = ("vfs_agent", "")


@pytest.fixture
def fake_tree(tmp_path: Path) -> FakeTree:
    """An empty fake root at tmp_path/root: no share, an empty mount table, /etc/vfs-agent."""
    return FakeTree(tmp_path / "root")


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    saved = {}
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        saved[name] = (list(logger.handlers), logger.level, logger.propagate, logger.disabled)
    yield
    for name, (handlers, level, propagate, disabled) in saved.items():
        logger = logging.getLogger(name)
        for handler in logger.handlers:
            if handler not in handlers:
                handler.close()
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate = propagate
        logger.disabled = disabled


@pytest.fixture(autouse=True)
def _no_bounded_child_left_behind() -> Iterator[None]:
    yield
    kill_and_reap()
