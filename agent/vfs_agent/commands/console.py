"""The `vfs-agent` console script. `vfs-agent --version` answers here, before click (which
alone costs several times the interpreter's own start-up) is imported; everything else goes
to the click command in commands/cli.py, which prints the same version line."""

from __future__ import annotations

import sys

from vfs_agent import __version__

PROG = "vfs-agent"


def version_line() -> str:
    """What click's version_option prints (its default message)."""
    return f"{PROG}, version {__version__}"


def main() -> None:
    if sys.argv[1:] == ["--version"]:
        sys.stdout.write(version_line() + "\n")
        sys.exit(0)
    from vfs_agent.commands.cli import main as cli

    cli()
