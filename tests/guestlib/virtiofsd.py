"""One virtiofsd per share: QEMU 7.2's C daemon, or the Rust one where installed."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path

from tests.guestlib.common import HarnessError
from tests.guestlib.processes import ManagedProcess, wait_until

C_VIRTIOFSD = "/usr/lib/qemu/virtiofsd"  # QEMU <= 7.2 ships it
RUST_VIRTIOFSD = "/usr/libexec/virtiofsd"  # Debian package "virtiofsd"


def virtiofsd_binary() -> tuple[str, str]:
    """(path, flavour) of the daemon to use; $VFS_AGENT_VIRTIOFSD overrides the choice."""
    override = os.environ.get("VFS_AGENT_VIRTIOFSD")
    candidates = [override] if override else [RUST_VIRTIOFSD, C_VIRTIOFSD]
    for path in candidates:
        if path and os.access(path, os.X_OK):
            flavour = "c" if _is_c_daemon(path) else "rust"
            return path, flavour
    found = shutil.which("virtiofsd")
    if found:
        return found, "c" if _is_c_daemon(found) else "rust"
    raise HarnessError(
        f"no virtiofsd found (looked for {', '.join(p for p in candidates if p)}); "
        "install qemu-system-x86 (Debian 12) or virtiofsd"
    )


@functools.cache
def _is_c_daemon(path: str) -> bool:
    """The C daemon takes "-o source=DIR"; the Rust one documents --shared-dir."""
    done = subprocess.run([path, "--help"], capture_output=True, text=True, timeout=10)
    return "--shared-dir" not in done.stdout + done.stderr


def virtiofsd_argv(source: Path, socket_path: Path) -> list[str]:
    binary, flavour = virtiofsd_binary()
    if flavour == "rust":
        return [
            binary,
            f"--socket-path={socket_path}",
            f"--shared-dir={source}",
            "--cache=auto",
            "--sandbox=namespace",
        ]
    if "," in str(source):
        # The C daemon splits -o on commas; the harness never needs such a directory.
        raise HarnessError(f"the C virtiofsd cannot share a path containing ',': {source}")
    return [
        binary,
        f"--socket-path={socket_path}",
        "-o",
        f"source={source}",
        "-o",
        "cache=auto",
        "-o",
        "sandbox=namespace",
    ]


# /proc/net/unix's Flags column: __SO_ACCEPTCON, set by listen(2).
_ACCEPTING = 0x10000


def is_listening(socket_path: Path, table: str = "/proc/net/unix") -> bool:
    """Whether a Unix socket bound to `socket_path` is listening, as the kernel's table says.
    The socket's file exists from bind(2) on, before listen(2): QEMU connecting in between gets
    "Connection refused". Probing by connecting is no way to tell, since virtiofsd serves only
    the first connection it accepts."""
    with open(table, encoding="utf-8", errors="surrogateescape") as lines:
        next(lines, None)  # Num RefCount Protocol Flags Type St Inode Path
        for line in lines:
            fields = line.split(maxsplit=7)
            path = fields[7].rstrip("\n") if len(fields) == 8 else None
            if path == str(socket_path) and int(fields[3], 16) & _ACCEPTING:
                return True
    return False


def start_virtiofsd(name: str, source: Path, socket_path: Path, log: Path) -> ManagedProcess:
    """Start a daemon for `source` and wait until its vhost-user socket is listening."""
    if not source.is_dir():
        raise HarnessError(f"share source {source} is not a directory")
    socket_path.unlink(missing_ok=True)
    proc = ManagedProcess(name, virtiofsd_argv(source, socket_path), log)
    if not wait_until(lambda: is_listening(socket_path) or not proc.alive(), timeout=10):
        proc.stop()
        raise HarnessError(f"{name}: {socket_path} not listening after 10s\n{proc.log_tail()}")
    if not proc.alive():
        raise HarnessError(f"{name} exited with {proc.returncode}:\n{proc.log_tail()}")
    return proc
