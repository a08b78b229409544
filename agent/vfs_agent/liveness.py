"""Is a share's mount answering? Probed so that a hung mount can never stall the agent.

A virtio-fs mount whose virtiofsd died while the device stays attached does not fail: a request
that reached the device waits for an answer that never comes. The kernel offers no way out for
virtio-fs (its FUSE connections are not listed under /sys/fs/fuse/connections and it refuses
MNT_FORCE), so a statfs(2) from the agent itself would hang the agent for good.

So every probe runs in a forked child that holds nothing but one pipe (no stdout, no lock file,
no socket), and the parent waits for all children together with one deadline. A child that
misses it is left where it is: killing it would only move it into uninterruptible sleep (its
request is already on the device). It ends when the device answers or the guest reboots.

A stuck request also keeps the guest from finishing a removal of that device, so the agent
sends at most one: the PID of a stuck probe is kept in /run/vfs-agent/probes/, and while it is
still stuck and the attached share devices are the same, the mount is reported unresponsive
without a new probe. When the devices change (the host removed the dead one, and new requests to
its mount fail at once with ENOTCONN), the mount is probed afresh.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import time
from collections.abc import Iterable
from enum import StrEnum

from vfs_agent.sysroot import SysRoot

PROBE_TIMEOUT = 1.0  # seconds for every probe of one look together
PROBE_DIR = "/run/vfs-agent/probes"
PROBE_COMM = b"vfs-agent-probe"  # the name a probe child shows in ps

_CHILDREN: set[int] = set()  # probe children of this process not yet reaped


class Liveness(StrEnum):
    ALIVE = "alive"
    DEAD = "dead"  # ENOTCONN: the device is gone
    UNRESPONSIVE = "unresponsive"  # no answer within the deadline: the host's daemon is gone


def probe(
    sysroot: SysRoot,
    mounts: Iterable[tuple[str, str]],
    devices: str,
    timeout: float = PROBE_TIMEOUT,
) -> dict[str, Liveness]:
    """The liveness of each (target, "major:minor") mount, probed in parallel. `devices` names
    the attached share devices; a stuck probe from a look at the same devices is trusted."""
    reap()
    result: dict[str, Liveness] = {}
    children: dict[int, tuple[str, str, int]] = {}  # read end -> (target, device, pid)
    for target, device in dict.fromkeys(mounts):
        if _still_stuck(sysroot, device, devices):
            result[target] = Liveness.UNRESPONSIVE
            continue
        read_end, pid = _spawn(str(sysroot.path(target)))
        children[read_end] = (target, device, pid)
    deadline = time.monotonic() + timeout
    try:
        while children:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            ready, _, _ = select.select(list(children), [], [], left)
            for fd in ready:
                target, _, pid = children.pop(fd)
                result[target] = _verdict(os.read(fd, 16))
                os.close(fd)
                os.waitpid(pid, 0)  # it answered, so it is exiting: nothing left to block on
                _CHILDREN.discard(pid)
    finally:
        for fd, (target, device, pid) in children.items():
            os.close(fd)
            result[target] = Liveness.UNRESPONSIVE
            _remember(sysroot, device, pid, devices)
    return result


def reap() -> None:
    """Collect probe children that have since ended (the daemon runs for long)."""
    for pid in list(_CHILDREN):
        _reap_one(pid)


def _reap_one(pid: int) -> None:
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        done = pid
    if done:
        _CHILDREN.discard(pid)
    else:
        _CHILDREN.add(pid)


def _verdict(answer: bytes) -> Liveness:
    code = int(answer or b"-1")
    return Liveness.DEAD if code == errno.ENOTCONN else Liveness.ALIVE


def _marker(device: str) -> str:
    return f"{PROBE_DIR}/{device.replace(':', '_')}"


def _proc(pid: int, name: str) -> bytes:
    """A file of this machine's /proc/PID (a probe child is a process here, whatever the root)."""
    try:
        with open(f"/proc/{pid}/{name}", "rb") as handle:
            return handle.read()
    except OSError:
        return b""


def _start_time(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat: tells a PID from a later process that reused it."""
    fields = _proc(pid, "stat").rsplit(b")", 1)[-1].split()
    return fields[19].decode() if len(fields) > 19 else None


def _still_stuck(sysroot: SysRoot, device: str, devices: str) -> bool:
    text = sysroot.read_text(_marker(device))
    if text is None:
        return False
    try:
        pid_text, started, seen = text.split("\n", 2)
        pid = int(pid_text)
    except ValueError:
        return False
    if seen.rstrip("\n") != devices:
        return False
    return _proc(pid, "comm").strip() == PROBE_COMM and _start_time(pid) == started


def _remember(sysroot: SysRoot, device: str, pid: int, devices: str) -> None:
    """Best effort: without a writable /run the next look just probes again."""
    started = _start_time(pid)
    if started is None:
        return
    with contextlib.suppress(OSError):
        sysroot.path(PROBE_DIR).mkdir(parents=True, exist_ok=True, mode=0o700)
        sysroot.write_atomic(_marker(device), f"{pid}\n{started}\n{devices}\n", mode=0o600)


def _spawn(path: str) -> tuple[int, int]:
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # the child: a few system calls, then _exit; never returns
        code = 0
        try:
            os.closerange(0, write_end)
            os.closerange(write_end + 1, 65536)
            with contextlib.suppress(OSError), open("/proc/self/comm", "wb") as comm:
                comm.write(PROBE_COMM)
            try:
                os.statvfs(path)  # FUSE_STATFS: never answered from a cache
            except OSError as e:
                code = e.errno or 0
            os.write(write_end, str(code).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    _CHILDREN.add(pid)
    return read_end, pid
