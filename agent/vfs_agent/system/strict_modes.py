"""sshd-style StrictModes for what the agent trusts (policy files, the compiled policy): owned
by root (or by the user running vfs-agent) and writable by nobody else. Cheap to import: the
boot-time generator checks its compiled policy with it."""

from __future__ import annotations

import os
import stat


def mode_problems(path: os.PathLike[str] | str) -> list[str]:
    """What is wrong with the owner and mode of `path` and of its directory ([] when fine).
    A path that cannot be stat'ed is left to the reader, which reports it."""
    problems = []
    for what, part in (("file", path), ("directory", os.path.dirname(path))):
        try:
            st = os.stat(part)
        except OSError:
            continue
        if st.st_uid not in (0, os.geteuid()):
            problems.append(f"the {{}} {what} must be owned by root (chown root)")
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            problems.append(f"the {{}} {what} is writable by group or others (chmod go-w)")
    return problems
