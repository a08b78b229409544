"""Loading a filesystem module before the first mount that needs it (the only subprocess)."""

from __future__ import annotations

import subprocess

from vfs_agent.model import Transport
from vfs_agent.sysroot import SysRoot

MODULES = {Transport.VIRTIOFS: ["virtiofs"], Transport.NINEP: ["9pnet_virtio", "9p"]}


def filesystem_registered(sysroot: SysRoot, fstype: str) -> bool:
    text = sysroot.read_text("/proc/filesystems") or ""
    return any(line.split()[-1:] == [fstype] for line in text.splitlines())


def ensure_filesystem(sysroot: SysRoot, transport: Transport) -> str | None:
    """Load the modules `transport` needs if its filesystem is not registered yet.
    Returns None when ready, else what went wrong. Only acts on the running system (root /)."""
    if filesystem_registered(sysroot, transport.value) or str(sysroot.root) != "/":
        return None
    for module in MODULES[transport]:
        try:
            done = subprocess.run(
                ["modprobe", "-q", module], capture_output=True, text=True, timeout=30
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"modprobe {module} failed: {e}"
        if done.returncode != 0:
            return f"modprobe {module} failed: {done.stderr.strip() or f'exit {done.returncode}'}"
    return None
