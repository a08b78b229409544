"""The daemon's event loop against a pipe-based event source and a fake kernel (a mounter
that edits the fake tree's mountinfo), in the main thread so real signals are delivered."""

import contextlib
import itertools
import os
import select
import shutil
import signal
import socket
import stat
import threading
import time
from pathlib import Path

import pytest
from faketree import FakeTree, run_generator

from vfs_agent.commands import daemon as daemon_module
from vfs_agent.commands import operations as ops
from vfs_agent.commands.daemon import Daemon
from vfs_agent.core.plan import Action, ActionKind
from vfs_agent.core.transport import Transport
from vfs_agent.execute.outcome import Outcome
from vfs_agent.system.sysroot import SysRoot
from vfs_agent.system.uevents import ShareEvent, needs_driver, relevant
from vfs_agent.systemd.replay import KEPT, MEMO_NAME, SYSTEM_GENERATOR_DIR


class PipeEvents:
    def __init__(self) -> None:
        self.r, self.w = os.pipe()
        self.queue: list[ShareEvent] = []
        self.lock = threading.Lock()
        self.closed = False

    def push(self, event: ShareEvent) -> None:
        with self.lock:
            self.queue.append(event)
        os.write(self.w, b"x")

    def fileno(self) -> int:
        return self.r

    def drain(self) -> list[ShareEvent]:
        os.read(self.r, 4096)
        with self.lock:
            out, self.queue = self.queue, []
        return out

    def close(self) -> None:
        self.closed = True
        os.close(self.r)
        os.close(self.w)


class FakeKernel:
    """Mounts by appending to the fake mountinfo; unmounts by removing the line."""

    def __init__(self, tree: FakeTree) -> None:
        self.tree = tree
        self.entries: list[tuple[str, str, str]] = []
        self.calls: list[str] = []
        self.drivers: list[Transport] = []

    def mount(self, source: str, target: str, fstype: str, flags: int, data: str) -> None:
        inner = "/" + os.path.relpath(os.readlink(target), self.tree.root)
        self.entries.append((fstype, source, inner))
        self.calls.append(f"mount {source} {inner}")
        self.tree.mounted(*self.entries)

    def umount(self, target: str, *, lazy: bool = False) -> None:
        inner = "/" + os.path.relpath(target, self.tree.root)
        self.entries = [e for e in self.entries if e[2] != inner]
        self.calls.append(f"umount{' -l' if lazy else ''} {inner}")
        self.tree.mounted(*self.entries)

    def load_filesystem(self, transport: Transport) -> str | None:
        return None

    def load_driver(self, transport: Transport) -> str | None:
        self.drivers.append(transport)
        return None


POLICY = """\
version: 1
mounts:
  - {tag: media_tag, path: /mnt/media}
  - {tag: 'data-*', path: '/srv/{tag}'}
"""


def wait_for(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.01)


@pytest.fixture
def setup(fake_tree: FakeTree):
    tree = fake_tree
    tree.policy(POLICY)
    tree.virtiofs("media_tag", index=1)
    return tree, PipeEvents(), FakeKernel(tree)


def run_daemon(tree, events, kernel, script, **kwargs) -> Daemon:
    daemon = Daemon(ops.Context(SysRoot(tree.root)), lambda: events, kernel=kernel, **kwargs)
    failures: list[BaseException] = []

    def guarded() -> None:
        try:
            script()
        except BaseException as e:  # stop the daemon, report in the main thread
            failures.append(e)
            os.kill(os.getpid(), signal.SIGTERM)

    worker = threading.Thread(target=guarded, daemon=True)
    worker.start()
    assert daemon.run() == 0
    worker.join(5)
    assert not worker.is_alive(), "the scenario did not finish"
    if failures:
        raise failures[0]
    return daemon


def test_hotplug_unplug_and_clean_exit(setup):
    tree, events, kernel = setup

    def script() -> None:
        wait_for(lambda: "mount media_tag /mnt/media" in kernel.calls)
        device = tree.virtiofs("data-1", index=3)
        events.push(ShareEvent("add", "virtiofs", "/fs/virtiofs/3", "data-1", None))
        wait_for(lambda: "mount data-1 /srv/data-1" in kernel.calls)
        shutil.rmtree(tree.root / "sys/fs/virtiofs/3")
        shutil.rmtree(tree.root / f"sys/bus/virtio/devices/{device}")
        events.push(ShareEvent("remove", "virtiofs", "/fs/virtiofs/3", "data-1", None))
        wait_for(lambda: "umount -l /srv/data-1" in kernel.calls)
        os.kill(os.getpid(), signal.SIGTERM)

    run_daemon(tree, events, kernel, script)
    assert kernel.calls == [
        "mount media_tag /mnt/media",
        "mount data-1 /srv/data-1",
        "umount -l /srv/data-1",
    ]
    assert kernel.entries == [("virtiofs", "media_tag", "/mnt/media")]  # left in place
    assert events.closed


def test_sighup_with_a_broken_policy_keeps_the_old_one(setup, caplog):
    tree, events, kernel = setup

    def script() -> None:
        wait_for(lambda: kernel.calls)
        tree.policy("version: 1\nmounts: [{tag: media_tag, pth: /x}]\n")
        os.kill(os.getpid(), signal.SIGHUP)
        wait_for(lambda: "Keeping the previous policy" in caplog.text)
        tree.virtiofs("data-2", index=4)
        events.push(ShareEvent("add", "virtiofs", "/fs/virtiofs/4", "data-2", None))
        wait_for(lambda: "mount data-2 /srv/data-2" in kernel.calls)
        os.kill(os.getpid(), signal.SIGTERM)

    with caplog.at_level("INFO", logger="vfs_agent"):
        run_daemon(tree, events, kernel, script)
    assert "unknown key 'pth'" in caplog.text


def test_unmount_on_exit_unmounts_only_what_the_daemon_mounted(setup):
    tree, events, kernel = setup
    kernel.entries = [("virtiofs", "by-hand", "/mnt/by-hand")]
    tree.virtiofs("by-hand", index=2)
    tree.mounted(*kernel.entries)

    def script() -> None:
        wait_for(lambda: "mount media_tag /mnt/media" in kernel.calls)
        os.kill(os.getpid(), signal.SIGTERM)

    run_daemon(tree, events, kernel, script, unmount_on_exit=True)
    assert kernel.calls[-1] == "umount -l /mnt/media"
    assert ("virtiofs", "by-hand", "/mnt/by-hand") in kernel.entries


def test_a_restart_after_sigkill_does_not_stack_mounts(setup):
    tree, events, kernel = setup
    kernel.entries = [("virtiofs", "media_tag", "/mnt/media")]  # left by the killed daemon
    tree.mounted(*kernel.entries)

    def script() -> None:
        time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGTERM)

    run_daemon(tree, events, kernel, script)
    assert kernel.calls == []


FS_MODALIAS = "virtio:d0000001Av00001AF4"


def test_a_share_device_added_without_its_driver_gets_the_driver_loaded_then_mounted(setup):
    """Debian 12 without udevd: virtiofs.ko is not loaded, so a hot-plugged virtio-fs device
    stays unbound and no `bind` uevent ever comes; the daemon must load the driver itself."""
    tree, events, kernel = setup

    def script() -> None:
        wait_for(lambda: "mount media_tag /mnt/media" in kernel.calls)
        device = tree.virtiofs("data-1", index=3)
        path = f"/devices/pci0000:00/0000:00:06.0/0000:03:00.0/{device}"
        events.push(ShareEvent("add", "virtio", path, None, None, FS_MODALIAS))
        wait_for(lambda: kernel.drivers == [Transport.VIRTIOFS])
        # The driver binds (it now knows the tag); only its uevent brings the mount.
        events.push(ShareEvent("bind", "virtio", path, None, "virtiofs"))
        wait_for(lambda: "mount data-1 /srv/data-1" in kernel.calls)
        os.kill(os.getpid(), signal.SIGTERM)

    run_daemon(tree, events, kernel, script)
    assert kernel.drivers == [Transport.VIRTIOFS]
    assert kernel.calls == ["mount media_tag /mnt/media", "mount data-1 /srv/data-1"]


def test_only_the_add_of_a_share_device_without_a_driver_needs_one():
    add = ShareEvent("add", "virtio", "/devices/x/virtio3", None, None, FS_MODALIAS)
    assert needs_driver(add) is Transport.VIRTIOFS and relevant(add)
    ninep = ShareEvent(
        "add", "virtio", "/devices/x/virtio4", None, None, "virtio:d00000009v00001AF4"
    )
    assert needs_driver(ninep) is Transport.NINEP
    net = ShareEvent("add", "virtio", "/devices/x/virtio5", None, None, "virtio:d00000001v00001AF4")
    assert needs_driver(net) is None and not relevant(net)
    bound = ShareEvent("add", "virtio", "/devices/x/virtio3", None, "virtiofs", FS_MODALIAS)
    assert needs_driver(bound) is None
    assert (
        needs_driver(ShareEvent("bind", "virtio", "/devices/x/v", None, None, FS_MODALIAS)) is None
    )
    assert needs_driver(ShareEvent("add", "virtio", "/d/v", None, None, FS_MODALIAS + "x")) is None
    assert needs_driver(ShareEvent("add", "virtio", "/d/v", None, None, None)) is None


def test_only_share_events_are_relevant():
    assert relevant(ShareEvent("add", "virtiofs", "/fs/virtiofs/1", "t", None))
    assert relevant(ShareEvent("bind", "virtio", "/devices/x/virtio1", None, "virtiofs"))
    assert relevant(ShareEvent("remove", "virtio", "/devices/x/virtio1", None, None))
    assert not relevant(ShareEvent("bind", "virtio", "/devices/x/virtio2", None, "virtio_net"))
    assert not relevant(ShareEvent("add", "block", "/devices/x/vda", None, None))


def test_an_unreadable_mount_table_skips_one_batch_not_the_daemon(setup, caplog, monkeypatch):
    """An error reading the mount table changes nothing and the next event is handled."""
    import errno

    tree, events, kernel = setup
    mountinfo = str(tree.root / "proc/self/mountinfo")
    broken = threading.Event()
    real_open = os.open

    def fake_open(path, flags, *args, **kwargs):
        if broken.is_set() and str(path) == mountinfo:
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", fake_open)

    def script() -> None:
        wait_for(lambda: kernel.calls)
        broken.set()
        tree.virtiofs("data-1", index=3)
        events.push(ShareEvent("add", "virtiofs", "/fs/virtiofs/3", "data-1", None))
        wait_for(lambda: "Failed to reconcile after 1 uevent(s)" in caplog.text)
        broken.clear()
        tree.virtiofs("data-2", index=4)
        events.push(ShareEvent("add", "virtiofs", "/fs/virtiofs/4", "data-2", None))
        wait_for(lambda: "mount data-2 /srv/data-2" in kernel.calls)
        os.kill(os.getpid(), signal.SIGTERM)

    with caplog.at_level("INFO", logger="vfs_agent"):
        run_daemon(tree, events, kernel, script)
    assert kernel.calls == [
        "mount media_tag /mnt/media",
        "mount data-1 /srv/data-1",
        "mount data-2 /srv/data-2",
    ]
    assert "Input/output error" in caplog.text


class Sleeps:
    """Stands in for the daemon's `select` module: records each wait's timeout."""

    def __init__(self) -> None:
        self.timeouts: list[float | None] = []

    def select(self, rlist, wlist, xlist, timeout=None):  # type: ignore[no-untyped-def]
        self.timeouts.append(timeout)
        return select.select(rlist, wlist, xlist, timeout)


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch):
    """A NOTIFY_SOCKET that collects what the daemon tells systemd."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    for name in ("WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(name, raising=False)

    def received() -> list[str]:
        messages = []
        with contextlib.suppress(BlockingIOError):
            while True:
                messages += sock.recv(4096).decode().splitlines()
        return messages

    yield received
    sock.close()


def idle_daemon(setup, monkeypatch, seconds: float) -> Sleeps:
    """Start the daemon, let it idle `seconds` after its first mount, stop it."""
    tree, events, kernel = setup
    sleeps = Sleeps()
    monkeypatch.setattr(daemon_module, "select", sleeps)

    def script() -> None:
        wait_for(lambda: "mount media_tag /mnt/media" in kernel.calls)
        time.sleep(seconds)
        os.kill(os.getpid(), signal.SIGTERM)

    run_daemon(tree, events, kernel, script)
    return sleeps


def test_without_a_watchdog_the_idle_daemon_sleeps_until_an_event(
    setup, monkeypatch, notify_socket
):
    """systemd sets no WATCHDOG_USEC (WatchdogSec=0): the daemon waits in select(2) with no
    timeout, so it never wakes while nothing happens (bench/daemon_idle.py counts 0)."""
    sleeps = idle_daemon(setup, monkeypatch, 0.5)
    assert sleeps.timeouts and all(t is None for t in sleeps.timeouts)
    messages = notify_socket()
    assert "READY=1" in messages and "WATCHDOG=1" not in messages


def test_with_a_watchdog_the_daemon_pings_at_half_the_interval(setup, monkeypatch, notify_socket):
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    sleeps = idle_daemon(setup, monkeypatch, 0.5)
    assert set(sleeps.timeouts) == {0.1} and len(sleeps.timeouts) >= 4
    assert notify_socket().count("WATCHDOG=1") >= 4


def test_the_daemon_keeps_the_generators_memo_for_the_next_boot(setup, tmp_path):
    """What the generator left in systemd's directory at this boot is kept in /var/lib, where
    the next boot's generator looks (systemd/replay.py)."""
    tree, events, kernel = setup
    run_dir = tree.root / SYSTEM_GENERATOR_DIR.lstrip("/")
    run_dir.mkdir(parents=True)
    done = run_generator(tree.root, run_dir)
    assert done.returncode == 0, done.stderr
    kept = tree.root / KEPT.lstrip("/")

    def script() -> None:
        wait_for(kept.exists)
        os.kill(os.getpid(), signal.SIGTERM)

    run_daemon(tree, events, kernel, script)
    assert kept.read_bytes() == (run_dir / MEMO_NAME).read_bytes()
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600


def test_while_systemd_is_not_done_with_a_unit_the_daemon_looks_again(setup, monkeypatch):
    """A unit left to systemd with a job queued (an unsettled outcome): no uevent is sure to
    come when the job ends, so the daemon looks again by itself (after 1 s, then 2 s), and
    stops looking once the outcome is settled."""
    tree, events, kernel = setup
    looks: list[float] = []
    action = Action(kind=ActionKind.MOUNT, tag="t", reason="r", path="/mnt/t")

    def reconcile(ctx, policy, executors) -> list[Outcome]:
        looks.append(time.monotonic())
        return [Outcome(action, True, False, "left to systemd", settled=len(looks) > 2)]

    monkeypatch.setattr(ops, "reconcile", reconcile)

    def script() -> None:
        wait_for(lambda: len(looks) == 3, timeout=10)
        time.sleep(2.5)  # the next look would come after 4 s
        os.kill(os.getpid(), signal.SIGTERM)

    run_daemon(tree, events, kernel, script)
    pauses = [round(b - a) for a, b in itertools.pairwise(looks)]
    assert pauses == [1, 2]


def test_a_uevent_brings_the_next_look_back_to_a_second(setup, monkeypatch):
    """The pause grows only with looks that found systemd still busy, not with uevents: after a
    storm, a plug systemd missed is started within a second or two, not a minute."""
    tree, events, kernel = setup
    looks: list[float] = []
    action = Action(kind=ActionKind.MOUNT, tag="t", reason="r", path="/mnt/t")

    def reconcile(ctx, policy, executors) -> list[Outcome]:
        looks.append(time.monotonic())
        return [Outcome(action, True, False, "left to systemd", settled=False)]

    monkeypatch.setattr(ops, "reconcile", reconcile)

    def script() -> None:
        wait_for(lambda: len(looks) == 3, timeout=10)  # at 0, 1 and 3 s: the next after 4 s
        events.push(ShareEvent("add", "virtiofs", "/fs/virtiofs/2", "t", None))
        wait_for(lambda: len(looks) == 5, timeout=10)
        os.kill(os.getpid(), signal.SIGTERM)

    run_daemon(tree, events, kernel, script)
    pauses = [round(b - a) for a, b in itertools.pairwise(looks)]
    assert pauses == [1, 2, 0, 1]
