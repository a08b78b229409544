"""Wait, at boot, for the host to answer a virtio-fs share: `python3 -m vfs_agent.system.answer
TAG_HEX SECONDS`, run by the generated `vfs-agent-answer@<path>.service` before the share's
mount unit.

Why: virtio-fs mount(2) returns before the host's daemon answered FUSE_INIT, so with a dead
virtiofsd the mount unit "succeeds", and every service that requires it then hangs on its first
access, for good (the kernel has no request timeout for it; see the README's Host-side faults).
So the share is mounted first in a private mount namespace of a forked child (bounded.py), which
asks for statfs(2): FUSE sends that only after FUSE_INIT is answered. No answer within SECONDS
means this unit fails, so the mount unit and what requires it fail with it ("Dependency failed")
and the boot goes on without them.

A late child is left where it is: killing it would only make its exit wait, uninterruptibly,
for the kernel to tear its mount down, which needs the dead host too. The unit keeps it
(KillMode=process). It runs once per share on every boot and on every hotplug, so it imports
the standard library's os, select and ctypes and nothing of the core's data (no dataclasses,
no enum) unless a mount fails.
"""

from __future__ import annotations

import contextlib
import os
import sys

from vfs_agent.system import bounded, syscalls

MOUNTPOINT = "/run/vfs-agent/answer"  # mounted on only inside the child's own namespace
# One file per share whose host did not answer (named by the tag in hex), for `status`.
UNANSWERED_DIR = "/run/vfs-agent/unanswered"
PROG = "vfs-agent-answer"


def _probe(tag: str) -> int:
    """In the child: a private mount namespace, the share mounted there, one statfs(2)."""
    syscalls.private_mount_namespace()
    syscalls.mount(tag, MOUNTPOINT, "virtiofs", 0, "")
    os.statvfs(MOUNTPOINT)
    return 0


def wait_for_answer(tag: str, timeout: float) -> int:
    """0 when the host answered; its errno when the mount failed; bounded.TIMED_OUT."""
    os.makedirs(MOUNTPOINT, mode=0o700, exist_ok=True)
    return bounded.run(lambda: _probe(tag), timeout, name=PROG.encode())


def main(argv: list[str]) -> int:
    try:
        tag = bytes.fromhex(argv[0]).decode("utf-8", "surrogateescape")
        timeout = int(argv[1])
    except (IndexError, ValueError):
        sys.stderr.write(f"usage: {PROG} TAG_HEX SECONDS\n")
        return 2
    code = wait_for_answer(tag, timeout)
    marker = os.path.join(UNANSWERED_DIR, argv[0].lower())
    if code == 0:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(marker)
        return 0
    if code == bounded.TIMED_OUT:
        os.makedirs(UNANSWERED_DIR, mode=0o755, exist_ok=True)
        with open(marker, "w", encoding="ascii") as handle:
            handle.write(f"{timeout}\n")
        why = (
            f"its host did not answer within {timeout} s (is the host's virtiofsd for it "
            "running?); failing its mount so the boot goes on without it"
        )
    else:  # rare: only then the words for the errno, and the enum they take
        from vfs_agent.core.transport import Transport
        from vfs_agent.system.mount_errors import explain_mount_error

        why = explain_mount_error(OSError(code, os.strerror(code)), tag, Transport.VIRTIOFS)
    sys.stderr.write(f"Share {tag!r} is not usable: {why}.\n")
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
