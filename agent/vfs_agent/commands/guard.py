"""The last line of defence of the `vfs-agent` command: whatever happens, one line on stderr
and a documented exit code, never a traceback.

- standard output closed (`vfs-agent plan >&-`): refused before anything runs (exit 1), as
  coreutils report a write error instead of losing the output silently;
- its reader gone (`vfs-agent plan | head -0`): "Broken pipe" (exit 1);
- any other unexpected error: its one-line description (exit 1); `-vv` adds the traceback.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import click

EXIT_FAILED = 1


def _fail(message: str) -> None:
    if sys.stderr is not None:
        try:
            sys.stderr.write(f"vfs-agent: error: {message}\n")
            sys.stderr.flush()
        except OSError:
            pass
    sys.exit(EXIT_FAILED)


def _stdout_closed() -> bool:
    """fd 1 closed: Python then has no sys.stdout, or (closed later) one that fails EBADF."""
    if sys.stdout is None:
        return True
    try:
        fd = sys.stdout.fileno()
    except (OSError, ValueError):  # not a real file (click's test runner): nothing to check
        return False
    try:
        os.fstat(fd)
    except OSError:
        return True
    return False


def _stdout_gone() -> None:
    # Point fd 1 at /dev/null so the interpreter's final flush has nowhere to fail.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)
    _fail("standard output: Broken pipe (its reader went away)")


class GuardedGroup(click.Group):
    """A click group that turns every escaping error into one line and exit 1."""

    def invoke(self, ctx: click.Context) -> Any:
        if _stdout_closed() and not ctx.resilient_parsing:
            _fail("standard output is closed; redirect it to a file or /dev/null instead")
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except BrokenPipeError:
            _stdout_gone()
        except RecursionError:
            _fail("input nested too deeply")
        except Exception as e:
            import logging  # only here: --help and completion do without it

            with_traceback = ctx.find_root().params.get("verbose", 0) > 1
            logging.getLogger("vfs_agent").debug("unexpected error", exc_info=with_traceback)
            _fail(f"{type(e).__name__}: {e}")
        return None
