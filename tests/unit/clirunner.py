"""A click test runner that keeps stderr apart on every click the project supports: click 8.1
(Debian 12, Ubuntu 24.04) needs mix_stderr=False, click 8.2 dropped the argument and always
keeps stderr apart (result.stderr)."""

from __future__ import annotations

from click.testing import CliRunner


def cli_runner() -> CliRunner:
    try:
        return CliRunner(mix_stderr=False)  # type: ignore[call-arg]
    except TypeError:
        return CliRunner()
