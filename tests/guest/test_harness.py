"""Smoke tests of the harness itself: channel, shares, hotplug, both boot modes, teardown."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.guest.conftest import BootGuest
from tests.guestlib.image import GuestImage
from tests.guestlib.processes import live_processes
from tests.guestlib.vm import VM, BootError, CommandFailed, Mode, VMConfig

pytestmark = pytest.mark.guest

BOOT_TAGS = ["media_tag", "weird tag#1"]
NINEP_TAG = "9p,share tag"  # the comma must reach QEMU as ",,"
# Hostile and exactly 36 bytes: non-ASCII, '..', '#', ',' and a space.
HOT_TAG = "hot ü..#,"
HOT_TAG += "x" * (36 - len(HOT_TAG.encode()))


@pytest.fixture(scope="module")
def share_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("shares")
    dirs = {name: root / name for name in ("media", "weird", "ninep", "hot")}
    for path in dirs.values():
        path.mkdir()
    return dirs


def _config(mode: Mode, dirs: dict[str, Path]) -> VMConfig:
    return VMConfig(
        mode=mode,
        name=f"harness-{mode}",
        shares=[(BOOT_TAGS[0], dirs["media"]), (BOOT_TAGS[1], dirs["weird"])],
        shares_9p=[(NINEP_TAG, dirs["ninep"])],
    )


def _wait_tags(guest: VM, present: str | None, absent: str | None, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        tags = guest.virtiofs_tags()
        if (present is None or present in tags) and (absent is None or absent not in tags):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"tags after {timeout}s: {tags} (want {present=}, {absent=})")
        time.sleep(0.3)


@pytest.fixture(scope="class")
def guest(boot_guest: BootGuest, share_dirs: dict[str, Path]) -> Iterator[VM]:
    """One fast-mode guest for all of TestFastBoot (shut down before TestSystemdBoot boots)."""
    guest = boot_guest(_config("fast", share_dirs))
    yield guest
    guest.shutdown()


class TestFastBoot:
    def test_channel_returns_output_and_status(self, guest: VM) -> None:
        result = guest.run("echo out; echo err >&2; exit 3")
        assert (result.rc, result.stdout, result.stderr) == (3, "out\n", "err\n")
        assert guest.run(["cat"], input="fed on stdin").stdout == "fed on stdin"
        assert guest.run(["printf", "\\377\\000"]).stdout_bytes == b"\xff\x00"
        assert guest.run(["/no/such/program"]).rc == 127

    def test_check_raises_with_full_output(self, guest: VM) -> None:
        with pytest.raises(CommandFailed) as failed:
            guest.run("echo visible-out; echo visible-err >&2; false", check=True)
        assert "visible-out" in str(failed.value) and "visible-err" in str(failed.value)

    def test_timeout_kills_the_command_and_the_channel_survives(self, guest: VM) -> None:
        started = time.monotonic()
        result = guest.run("sleep 60 & sleep 60", timeout=2)
        assert result.timed_out and not result.ok
        assert time.monotonic() - started < 20
        assert guest.run("echo alive").stdout == "alive\n"

    def test_put_and_get_file(self, guest: VM) -> None:
        guest.put_file("/etc/vfs-agent-test/blob", b"\x00\x01bytes\n", mode=0o600)
        assert guest.get_file("/etc/vfs-agent-test/blob") == b"\x00\x01bytes\n"
        stat = guest.run(["stat", "-c", "%a %U", "/etc/vfs-agent-test/blob"], check=True)
        assert stat.stdout == "600 root\n"

    def test_fast_mode_is_not_systemd(self, guest: VM) -> None:
        assert guest.run("cat /proc/1/cmdline | tr '\\0' ' '").stdout.startswith("/usr/bin/python3")
        assert guest.run(["python3", "-c", "import vfs_agent"]).ok

    def test_guest_sees_exactly_the_host_tags(self, guest: VM) -> None:
        assert guest.virtiofs_tags() == sorted(BOOT_TAGS)

    def test_9p_tag_with_a_comma(self, guest: VM) -> None:
        script = "cat /sys/bus/virtio/devices/*/mount_tag 2>/dev/null"
        assert guest.run(script).stdout_bytes.rstrip(b"\0") == NINEP_TAG.encode()

    def test_mount_by_hand_and_write_through(self, guest: VM, share_dirs: dict[str, Path]) -> None:
        (share_dirs["media"] / "from-host").write_text("host was here\n")
        guest.run("mkdir -p /mnt/x && mount -t virtiofs media_tag /mnt/x", check=True)
        try:
            assert guest.run("cat /mnt/x/from-host", check=True).stdout == "host was here\n"
            guest.run("echo guest was here > /mnt/x/from-guest && sync", check=True)
            assert (share_dirs["media"] / "from-guest").read_text() == "guest was here\n"
        finally:
            guest.run("umount /mnt/x", check=True)

    def test_hotplug_then_unplug(self, guest: VM, share_dirs: dict[str, Path]) -> None:
        handle = guest.hotplug_share(HOT_TAG, share_dirs["hot"])
        _wait_tags(guest, present=HOT_TAG, absent=None)
        assert guest.virtiofs_tags() == sorted([*BOOT_TAGS, HOT_TAG])
        guest.run(["mkdir", "-p", "/mnt/hot"], check=True)
        guest.run(["mount", "-t", "virtiofs", HOT_TAG, "/mnt/hot"], check=True)
        guest.run("echo hot > /mnt/hot/file && umount /mnt/hot", check=True)
        assert (share_dirs["hot"] / "file").read_text() == "hot\n"
        daemon = handle.daemon
        assert daemon is not None and daemon.alive()
        guest.unplug_share(HOT_TAG)
        _wait_tags(guest, present=None, absent=HOT_TAG)
        assert guest.virtiofs_tags() == sorted(BOOT_TAGS)
        assert not daemon.alive()

    def test_a_boot_time_share_can_be_unplugged_too(self, guest: VM) -> None:
        guest.unplug_share(BOOT_TAGS[1])  # every virtio-fs device sits on its own root port
        _wait_tags(guest, present=None, absent=BOOT_TAGS[1])
        assert guest.virtiofs_tags() == [BOOT_TAGS[0]]

    def test_reboot_in_the_same_qemu(self, guest: VM) -> None:
        before = guest.run("cat /proc/sys/kernel/random/boot_id", check=True).stdout
        guest.reboot()
        assert guest.run("cat /proc/sys/kernel/random/boot_id", check=True).stdout != before
        assert guest.virtiofs_tags() == [BOOT_TAGS[0]]  # the unplugged share stays away
        guest.run("mkdir -p /mnt/x && mount -t virtiofs media_tag /mnt/x", check=True)
        assert guest.run("cat /mnt/x/from-guest", check=True).stdout == "guest was here\n"


class TestSystemdBoot:
    def test_reaches_running_with_the_channel(
        self, boot_guest: BootGuest, share_dirs: dict[str, Path]
    ) -> None:
        guest = boot_guest(_config("systemd", share_dirs))
        pids = [p.pid for p in live_processes()]
        try:
            state = guest.wait_system_running()
            failed = guest.run("systemctl --failed --no-legend").stdout
            assert state in ("running", "degraded"), failed
            unit = guest.run(["systemctl", "is-active", "vfs-agent-test-channel.service"])
            assert unit.stdout == "active\n"
            assert guest.run("cat /proc/1/comm").stdout == "systemd\n"
            assert guest.virtiofs_tags() == sorted(BOOT_TAGS)
        finally:
            guest.shutdown()
        assert not live_processes()
        for pid in pids:
            assert not os.path.exists(f"/proc/{pid}"), f"pid {pid} survived shutdown"


def test_a_dead_boot_is_retried_once_then_fails_cleanly(
    guest_image: GuestImage, guest_run_dir: Path
) -> None:
    """A guest whose init exits panics ("Attempted to kill init"): one retry, then BootError."""
    config = VMConfig(name="harness-panic", extra_cmdline=["init=/bin/false"], boot_timeout=90)
    with pytest.raises(BootError) as failed:
        VM.boot(guest_image, config, guest_run_dir)
    assert failed.value.attempts == 2
    assert not live_processes()


def test_a_reboot_whose_kernel_panics_before_init_is_reset_and_goes_on(
    guest_image: GuestImage, guest_run_dir: Path
) -> None:
    """Under TCG the kernel now and then panics in early boot (an int3 from its own code
    patching). In a reboot, before init has started, nothing of the guest has changed yet:
    reboot() resets the guest over QMP and waits for the new boot. Here the panic is made on
    purpose: an NMI from QEMU while the second boot's kernel initialises, which the kernel
    turns into a panic (unknown_nmi_panic=1)."""
    config = VMConfig(name="harness-reboot-panic", extra_cmdline=["unknown_nmi_panic=1"])
    with VM.boot(guest_image, config, guest_run_dir) as vm:
        before = vm.run("cat /proc/sys/kernel/random/boot_id", check=True).stdout
        start = vm.serial_log.stat().st_size
        injected = threading.Event()

        def inject_nmi_in_early_boot() -> None:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                if b"NET: Registered PF_INET6" in vm.serial_log.read_bytes()[start:]:
                    vm._qmp().execute("inject-nmi")
                    injected.set()
                    return
                time.sleep(0.05)

        injector = threading.Thread(target=inject_nmi_in_early_boot)
        injector.start()
        try:
            vm.reboot()
        finally:
            injector.join()
        assert injected.is_set()
        log = vm.serial_log.read_bytes()[start:]
        assert log.count(b"end Kernel panic - not syncing: NMI") == 1, "the NMI did not panic"
        assert log.count(b"Linux version") == 2, "one boot panicked, the reset one came up"
        assert vm.stats.failures == [f"{config.name}: kernel panic"]
        assert vm.run("cat /proc/sys/kernel/random/boot_id", check=True).stdout != before
