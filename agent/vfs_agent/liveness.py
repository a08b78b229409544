"""Is a share's mount answering? Probed so that a hung mount can never stall the agent.

A virtio-fs mount whose virtiofsd died while the device stays attached does not fail: a request
that reached the device waits for an answer in uninterruptible sleep until the FUSE connection is
aborted. A stat(2) of such a mount from the agent itself would hang the agent with it. So every
probe runs in a forked child that holds nothing but one pipe (no stdout, no lock file, no
socket), and the parent waits for all children together with one deadline. A child that misses
it is sent SIGKILL and left to die when the mount is aborted or unmounted; the parent reaps it
later (`reap`) or, when the parent exits first, init does.
"""

from __future__ import annotations

import errno
import os
import select
import signal
import time
from collections.abc import Iterable
from enum import StrEnum

from vfs_agent.sysroot import SysRoot

PROBE_TIMEOUT = 1.0  # seconds for every probe of one look together

_UNREAPED: set[int] = set()  # probe children that missed their deadline


class Liveness(StrEnum):
    ALIVE = "alive"
    DEAD = "dead"  # ENOTCONN: the device is gone
    UNRESPONSIVE = "unresponsive"  # no answer within the deadline: the host's daemon is gone


def probe(
    sysroot: SysRoot, targets: Iterable[str], timeout: float = PROBE_TIMEOUT
) -> dict[str, Liveness]:
    """The liveness of each mount target (paths inside the root), all probed in parallel."""
    reap()
    children: dict[int, tuple[str, int]] = {}  # read end -> (target, pid)
    result: dict[str, Liveness] = {}
    for target in dict.fromkeys(targets):
        read_end, pid = _spawn(str(sysroot.path(target)))
        children[read_end] = (target, pid)
    deadline = time.monotonic() + timeout
    try:
        while children:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            ready, _, _ = select.select(list(children), [], [], left)
            for fd in ready:
                target, pid = children.pop(fd)
                result[target] = _verdict(os.read(fd, 16))
                os.close(fd)
                _reap_one(pid)
    finally:
        for fd, (target, pid) in children.items():
            os.close(fd)
            result[target] = Liveness.UNRESPONSIVE
            os.kill(pid, signal.SIGKILL)  # takes effect when the mount lets go of it
            _reap_one(pid)
    return result


def reap() -> None:
    """Collect probe children that have since been freed (the daemon runs for long)."""
    for pid in list(_UNREAPED):
        _reap_one(pid)


def _reap_one(pid: int) -> None:
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        done = pid
    if done:
        _UNREAPED.discard(pid)
    else:
        _UNREAPED.add(pid)


def _verdict(answer: bytes) -> Liveness:
    code = int(answer or b"-1")
    return Liveness.DEAD if code == errno.ENOTCONN else Liveness.ALIVE


def _spawn(path: str) -> tuple[int, int]:
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # the child: only async-signal-safe work, then _exit
        code = 0
        try:
            os.closerange(0, write_end)
            os.closerange(write_end + 1, 65536)
            try:
                os.stat(path)
            except OSError as e:
                code = e.errno or 0
            os.write(write_end, str(code).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    return read_end, pid
