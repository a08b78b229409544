"""Is a share's mount answering? Probed so that a hung mount can never stall the agent.

A virtio-fs mount whose virtiofsd died while the device stays attached does not fail: a request
that reached the device waits for an answer that never comes. The kernel offers no way out for
virtio-fs (its FUSE connections are not listed under /sys/fs/fuse/connections and it refuses
MNT_FORCE), so a statfs(2) from the agent itself would hang the agent for good.

So every probe is a statfs(2) (FUSE_STATFS is never answered from a cache) in a thread of one
forked child (system/bounded.py), all the mounts asked about in parallel under one deadline
(system/observe.py asks about every share mount but those of shares known to be gone). A child
with a probe that misses it is left where it is: it ends when the device answers, or when the
guest reboots.

A stuck request also keeps the guest from finishing a removal of that device, so the agent
sends at most one: the PID of the child of a stuck probe is kept in /run/vfs-agent/probes/,
and while it is still stuck and the attached share devices are the same, the mount is reported
unresponsive without a new probe. When the devices change, the mount is probed afresh: a
request to a device the host removed fails at once with ENOTCONN (and once the discovery shows
its share gone, the mount is not probed at all).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
from collections.abc import Iterable
from enum import StrEnum

from vfs_agent.system import bounded
from vfs_agent.system.sysroot import SysRoot

PROBE_TIMEOUT = 1.0  # seconds for every probe of one look together
PROBE_DIR = "/run/vfs-agent/probes"
PROBE_COMM = b"vfs-agent-probe"  # the name a probe child shows in ps


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
    result: dict[str, Liveness] = {}
    asked: list[tuple[str, str]] = []  # (target, device) of each call of the probe child
    for target, device in dict.fromkeys(mounts):
        if _still_stuck(sysroot, device, devices):
            result[target] = Liveness.UNRESPONSIVE
        else:
            asked.append((target, device))
    if not asked:
        return result
    calls = [functools.partial(_statfs, str(sysroot.path(target))) for target, _ in asked]
    child = bounded.spawn_each(calls, name=PROBE_COMM)
    for index, answer in bounded.wait_each(child, len(calls), timeout).items():
        target, device = asked[index]
        if answer == bounded.TIMED_OUT:
            result[target] = Liveness.UNRESPONSIVE
            _remember(sysroot, device, child.pid, devices)
        else:
            result[target] = Liveness.DEAD if answer == errno.ENOTCONN else Liveness.ALIVE
    return result


def _statfs(path: str) -> int:
    os.statvfs(path)
    return 0


def _marker(device: str) -> str:
    return f"{PROBE_DIR}/{device.replace(':', '_')}"


def _still_stuck(sysroot: SysRoot, device: str, devices: str) -> bool:
    try:
        text = sysroot.read_text(_marker(device))
    except OSError:  # a marker only root may read (status run by a user): probe afresh
        return False
    if text is None:
        return False
    try:
        pid_text, started, seen = text.split("\n", 2)
        pid = int(pid_text)
    except ValueError:
        return False
    if seen.rstrip("\n") != devices:
        return False
    comm = bounded.proc_file(pid, "comm").strip()
    return comm == PROBE_COMM and bounded.start_time(pid) == started


def _remember(sysroot: SysRoot, device: str, pid: int, devices: str) -> None:
    """Best effort: without a writable /run the next look just probes again."""
    started = bounded.start_time(pid)
    if started is None:
        return
    with contextlib.suppress(OSError):
        sysroot.path(PROBE_DIR).mkdir(parents=True, exist_ok=True, mode=0o700)
        sysroot.write_atomic(_marker(device), f"{pid}\n{started}\n{devices}\n", mode=0o600)
