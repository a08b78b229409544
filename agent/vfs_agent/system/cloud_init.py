"""The edges of `vfs-agent cloud-init apply`: asking cloud-init for its data, systemctl, the
policy drop-in file, and cloud-init's output log. Each external tool runs through
system/tools.py; the drop-in is written by SysRoot.write_atomic. Which files make up the
policy is the caller's to say (policy/ sits above this layer)."""

from __future__ import annotations

import contextlib
import logging
import os
import stat

from vfs_agent.system.atomic import remove_durably
from vfs_agent.system.sysroot import SysRoot
from vfs_agent.system.tools import run_tool, tool_output

QUERY = ["cloud-init", "query", "--all"]
TOOL_TIMEOUT = 300  # seconds; cloud-init and systemctl answer in well under that
GENERATOR_DIR = "/run/systemd/generator"
CLOUD_INIT_LOG = "/var/log/cloud-init-output.log"

log = logging.getLogger(__name__)


def run_query() -> str:
    """The JSON of `cloud-init query --all` (as root it holds user-data and the merged config);
    ToolError when cloud-init cannot answer."""
    return tool_output(QUERY, TOOL_TIMEOUT)


def run_systemctl(args: list[str]) -> str | None:
    """`systemctl ARGS`; None on success, else why it failed."""
    return run_tool(["systemctl", *args], TOOL_TIMEOUT)


def write_dropin(sysroot: SysRoot, name: str, text: str) -> bool:
    """Write the drop-in `name` atomically (SysRoot.write_atomic: a half-written file is never
    seen, and its temporary name starts with a dot, which the policy loader skips): owned by
    this user, exactly 0644 whatever was there, in 0755 directories (the policy's StrictModes).
    False when it already holds `text` with that owner and mode. A symlinked drop-in is
    followed, as the writer follows it."""
    path = sysroot.path(name)
    try:
        st: os.stat_result | None = os.stat(path)  # a symlinked drop-in: its target
    except FileNotFoundError:
        st = None
    right = st is not None and (stat.S_IMODE(st.st_mode), st.st_uid) == (0o644, os.geteuid())
    if right and sysroot.read_text(name) == text:
        return False
    for directory in (path.parent.parent, path.parent):
        if not directory.is_dir():
            directory.mkdir(mode=0o755)
            os.chmod(directory, 0o755)  # whatever the umask
    sysroot.write_atomic(name, text, mode=0o644, keep_attrs=False)
    return True


def remove_dropin(sysroot: SysRoot, name: str) -> bool:
    """Remove the drop-in `name`; False when there was none."""
    return remove_durably(sysroot.path(name))


def newer_than_generator(sysroot: SysRoot, names: list[str]) -> bool:
    """Whether one of `names` (the policy files, and the drop-in directory: a removed file)
    changed after systemd last ran its generators. systemd recreates GENERATOR_DIR at each run;
    both times come from the same clock in the same boot. No such directory (no systemd,
    --root): True."""
    try:
        generated = os.stat(sysroot.path(GENERATOR_DIR)).st_mtime
    except OSError:
        return True
    times = []
    for name in names:
        with contextlib.suppress(OSError):
            times.append(os.stat(sysroot.path(name)).st_mtime)
    return any(t >= generated for t in times)


class BootReporter:
    """The journal (or stderr), and cloud-init's output log, where someone debugging a first
    boot looks (`cloud-init collect-logs` takes it too)."""

    def __init__(self, sysroot: SysRoot) -> None:
        self.cloud_log = sysroot.path(CLOUD_INIT_LOG)

    def info(self, message: str) -> None:
        log.info(message)
        self._append(message)

    def error(self, message: str) -> None:
        log.error(message)
        self._append(f"error: {message}")

    def _append(self, message: str) -> None:
        if self.cloud_log.exists():
            with contextlib.suppress(OSError), self.cloud_log.open("a", encoding="utf-8") as f:
                f.write(f"vfs-agent: {message}\n")
