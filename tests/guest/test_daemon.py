"""`vfs-agent daemon` in a real guest: hotplug and unplug over QMP, 20 cycles without leaks,
SIGHUP with a broken policy, SIGKILL and restart. Fast boot: no udevd, so the daemon follows
the kernel's own uevents (the systemd boot tests cover the udev path)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.guest.conftest import BootGuest
from tests.guestlib.vm import VM, VMConfig

pytestmark = pytest.mark.guest

POLICY = """\
version: 1
mounts:
  - {tag: media_tag, path: /mnt/media}
  - {tag: "hot-*", path: "/srv/hot/{tag}"}
"""
LOG = "/var/log/vfs-agent-daemon.log"
START = f"setsid -f sh -c 'exec vfs-agent -v daemon >>{LOG} 2>&1 </dev/null'"
CYCLES = 20


def wait_until(what: str, check: Callable[[], bool], timeout: float = 60) -> float:
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.2)
    return time.monotonic() - started


def share_mounts(guest: VM) -> list[tuple[str, str]]:
    """(source, target) of every virtiofs mount, from util-linux."""
    result = guest.run("findmnt --json --list -o SOURCE,TARGET -t virtiofs")
    if result.rc != 0:
        return []
    return [(r["source"], r["target"]) for r in json.loads(result.stdout)["filesystems"]]


def daemon_pid(guest: VM) -> int | None:
    """The one daemon process. Its forked children (a probe or a mount(2) with a deadline)
    carry the same command line, so a process whose parent also matches is not counted."""
    out = guest.run(
        "pgrep -f '^/usr/bin/python3 /usr/local/bin/vfs-agent -v daemon'"
        " | xargs -r ps -o pid=,ppid= -p"
    ).stdout.split()
    pairs = [(int(pid), int(ppid)) for pid, ppid in zip(out[::2], out[1::2], strict=True)]
    pids = {pid for pid, _ in pairs}
    daemons = [pid for pid, ppid in pairs if ppid not in pids]
    return daemons[0] if len(daemons) == 1 else None


def resources(guest: VM, pid: int) -> dict[str, int]:
    fds = int(guest.run(f"ls /proc/{pid}/fd | wc -l", check=True).stdout)
    status = guest.get_file(f"/proc/{pid}/status").decode()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {
        "fds": fds,
        "threads": int(fields["Threads"]),
        "rss_kb": int(fields["VmRSS"].split()[0]),
    }


def no_dead_mounts(guest: VM) -> bool:
    return "not connected" not in guest.run("ls /srv/hot/* /mnt/media 2>&1").stdout


@pytest.fixture(scope="module")
def host_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("daemon-shares")
    dirs = {"media": root / "media", "hot": root / "hot"}
    for path in dirs.values():
        path.mkdir()
    (dirs["hot"] / "payload.txt").write_text("hot payload\n")
    return dirs


@pytest.fixture(scope="module")
def guest(boot_guest: BootGuest, host_dirs: dict[str, Path]) -> Iterator[VM]:
    vm = boot_guest(
        VMConfig(mode="fast", name="daemon-fast", shares=[("media_tag", host_dirs["media"])])
    )
    vm.put_file("/etc/vfs-agent/policy.yaml", POLICY)
    vm.run("chmod 755 /etc/vfs-agent", check=True)
    vm.run(START, check=True)
    wait_until(
        "the daemon's first reconcile", lambda: ("media_tag", "/mnt/media") in share_mounts(vm)
    )
    yield vm
    pid = daemon_pid(vm)
    if pid is not None:
        vm.run(f"kill -TERM {pid}")
    vm.shutdown()


def cycle(guest: VM, host_dirs: dict[str, Path], tag: str) -> tuple[float, float]:
    """Hot-plug `tag`, wait until its file is readable, unplug, wait until the mount is gone."""
    path = f"/srv/hot/{tag}/payload.txt"
    guest.hotplug_share(tag, host_dirs["hot"])
    up = wait_until(f"{path} readable", lambda: guest.run(["cat", path]).stdout == "hot payload\n")
    guest.unplug_share(tag)
    down = wait_until(f"{tag} unmounted", lambda: tag not in {s for s, _ in share_mounts(guest)})
    return up, down


def test_hotplug_mounts_and_unplug_unmounts_without_dead_mounts(guest: VM, host_dirs) -> None:
    cycle(guest, host_dirs, "hot-1")
    assert no_dead_mounts(guest)
    log = guest.get_file(LOG).decode()
    assert "uevent add virtiofs" in log and "tag='hot-1'" in log
    assert "Mounted share 'hot-1' on /srv/hot/hot-1." in log
    assert "Unmounted /srv/hot/hot-1" in log


def test_twenty_cycles_leak_no_mounts_fds_threads_or_memory(guest: VM, host_dirs) -> None:
    pid = daemon_pid(guest)
    assert pid is not None
    cycle(guest, host_dirs, "hot-warmup")
    before = resources(guest, pid)
    for i in range(CYCLES):
        cycle(guest, host_dirs, f"hot-{i % 3}")
    after = resources(guest, pid)
    assert daemon_pid(guest) == pid
    assert share_mounts(guest) == [("media_tag", "/mnt/media")]
    assert no_dead_mounts(guest)
    assert after["fds"] == before["fds"], (before, after)
    assert after["threads"] == before["threads"] == 1, (before, after)
    assert after["rss_kb"] - before["rss_kb"] < 2048, (before, after)


def test_sighup_with_a_broken_policy_keeps_the_old_one(guest: VM, host_dirs) -> None:
    pid = daemon_pid(guest)
    guest.put_file("/etc/vfs-agent/policy.yaml", "version: 1\nmounts:\n  - {tag: x, pth: /x}\n")
    guest.run(f"kill -HUP {pid}", check=True)
    wait_until("the reload error", lambda: b"Keeping the previous policy" in guest.get_file(LOG))
    assert "unknown key 'pth'" in guest.get_file(LOG).decode()
    assert daemon_pid(guest) == pid
    cycle(guest, host_dirs, "hot-after-hup")  # still follows the old policy
    guest.put_file("/etc/vfs-agent/policy.yaml", POLICY)
    guest.run(f"kill -HUP {pid}", check=True)
    wait_until("the reload", lambda: b"Reloaded the policy" in guest.get_file(LOG))


def test_sigkill_and_restart_restores_the_plan_without_stacking(guest: VM, host_dirs) -> None:
    guest.hotplug_share("hot-kill", host_dirs["hot"])
    wait_until("hot-kill mounted", lambda: ("hot-kill", "/srv/hot/hot-kill") in share_mounts(guest))
    guest.run(f"kill -KILL {daemon_pid(guest)}", check=True)
    wait_until("the daemon to die", lambda: daemon_pid(guest) is None)
    guest.run(START, check=True)
    wait_until("a new daemon", lambda: daemon_pid(guest) is not None)
    time.sleep(3)  # its first reconcile
    mounts = share_mounts(guest)
    assert sorted(mounts) == [("hot-kill", "/srv/hot/hot-kill"), ("media_tag", "/mnt/media")]
    guest.run("vfs-agent mount-all", check=True)  # by hand, while the daemon runs: no stacking
    assert sorted(share_mounts(guest)) == sorted(mounts)
    guest.unplug_share("hot-kill")
    wait_until("hot-kill unmounted", lambda: "hot-kill" not in {s for s, _ in share_mounts(guest)})
