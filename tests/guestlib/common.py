"""Shared helpers of the guest harness: cache location, progress lines, hashing, commands."""

from __future__ import annotations

import hashlib
import os
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

DEFAULT_CACHE = "/var/cache/vfs-agent-test"
_T0 = time.monotonic()


class HarnessError(RuntimeError):
    """The harness could not do its job (build, boot, channel); the message says why."""


def cache_dir() -> Path:
    """Root of everything the harness keeps between runs ($VFS_AGENT_CACHE)."""
    path = Path(os.environ.get("VFS_AGENT_CACHE") or DEFAULT_CACHE) / "guest"
    path.mkdir(parents=True, exist_ok=True)
    return path


def progress(message: str) -> None:
    """Print a '>>> ...' line with the time elapsed since the harness was imported."""
    print(f">>> [{time.monotonic() - _T0:7.1f}s] {message}", file=sys.stderr, flush=True)


def sha256_parts(parts: Iterable[bytes | str]) -> str:
    """Hash a sequence of parts unambiguously (each part is length-prefixed)."""
    digest = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    return digest.hexdigest()


def run_host(
    argv: Sequence[str | os.PathLike[str]],
    *,
    log: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float | None = None,
) -> None:
    """Run a host command; its output goes to `log` (appended) or is captured and shown on error.

    Raises HarnessError with the command line and the tail of its output when it fails.
    """
    cmd = [str(a) for a in argv]
    full_env = {**os.environ, **(env or {})}
    if log is not None:
        with log.open("ab") as out:
            out.write(f"\n$ {shlex.join(cmd)}\n".encode())
            out.flush()
            proc = subprocess.run(
                cmd, stdout=out, stderr=subprocess.STDOUT, env=full_env, timeout=timeout
            )
        if proc.returncode != 0:
            tail = log.read_bytes()[-4000:].decode(errors="replace")
            raise HarnessError(
                f"command failed (rc={proc.returncode}): {shlex.join(cmd)}\n"
                f"--- last output (full log: {log}) ---\n{tail}"
            )
        return
    done = subprocess.run(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=full_env, timeout=timeout
    )
    if done.returncode != 0:
        tail = done.stdout[-4000:].decode(errors="replace")
        raise HarnessError(f"command failed (rc={done.returncode}): {shlex.join(cmd)}\n{tail}")


def write_new_file(path: Path, data: bytes | str, mode: int = 0o644) -> None:
    """Write `path` as a new inode (unlink first).

    Trees built with `cp -al` share inodes with the cached rootfs; writing in place would
    change the cache too.
    """
    raw = data.encode() if isinstance(data, str) else data
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink() or path.exists():
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.write(fd, raw)
    finally:
        os.close(fd)
    os.chmod(path, mode)


def new_symlink(path: Path, target: str) -> None:
    """Create (or replace) a symlink without touching the inode it replaces."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink() or path.exists():
        path.unlink()
    os.symlink(target, path)


def connect_unix(path: Path, timeout: float, error: type[Exception], what: str) -> socket.socket:
    """Connect to a unix socket that QEMU may not have created yet, retrying until `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(path))
            return sock
        except OSError as exc:
            sock.close()
            if time.monotonic() > deadline:
                raise error(f"cannot connect to {what} {path}: {exc}") from exc
            time.sleep(0.05)
