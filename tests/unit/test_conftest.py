"""The unit tests' own fixtures (tests/unit/conftest.py) do what the tests rely on: a later
test sees the logging a fresh interpreter has, whatever an earlier one configured."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

INNER_TESTS = """
import logging

from vfs_agent.system.log import setup_logging


def test_1_an_in_process_cli_run_configures_logging():
    setup_logging(verbose=1)  # what `vfs-agent -v ...` run through CliRunner does
    assert logging.getLogger("vfs_agent").propagate is False


def test_2_the_next_test_starts_from_the_defaults(caplog):
    logger = logging.getLogger("vfs_agent")
    assert logger.handlers == [] and logger.level == logging.NOTSET and logger.propagate
    logging.getLogger("vfs_agent.x").debug("not shown: the root logger's WARNING applies")
    logging.getLogger("vfs_agent.x").warning("seen by caplog")
    assert [r.getMessage() for r in caplog.records] == ["seen by caplog"]
"""


def test_logging_is_reset_between_tests(pytester: pytest.Pytester) -> None:
    conftest = Path(__file__).with_name("conftest.py").read_text(encoding="utf-8")
    pytester.makeconftest(conftest)
    for helper in ("faketree.py", "bounded_children.py"):  # what conftest.py imports
        (pytester.path / helper).write_text(
            Path(__file__).with_name(helper).read_text(encoding="utf-8")
        )
    pytester.makepyfile(test_inner=INNER_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:randomly", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
