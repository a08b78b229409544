"""A QEMU guest under test: boot (fast or systemd), run commands, hot-plug shares, tear down.

    from tests.guestlib.image import ensure_image
    from tests.guestlib.vm import VM, VMConfig, new_run_dir

    config = VMConfig(mode="fast", shares=[("media_tag", Path("/srv/media"))])
    with VM.boot(ensure_image(), config, new_run_dir()) as vm:
        print(vm.run("cat /sys/fs/virtiofs/*/tag", check=True).stdout)
        vm.hotplug_share("extra", Path("/srv/extra"))
        vm.unplug_share("extra")

Every process a VM starts is stopped by shutdown()/kill(), by the context manager, and in the
last resort by processes.stop_all() (atexit) or PR_SET_PDEATHSIG.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Literal

from tests.guestlib import guestlock, qemu
from tests.guestlib.channel import Channel, ChannelError, b64, unb64
from tests.guestlib.common import HarnessError, cache_dir, progress
from tests.guestlib.image import GUEST_LIB, GuestImage
from tests.guestlib.processes import ManagedProcess, wait_until
from tests.guestlib.qmp import QMPClient, QMPError
from tests.guestlib.virtiofsd import start_virtiofsd

Mode = Literal["fast", "systemd"]
MAX_TAG_BYTES = 36  # virtio-fs config space; QEMU refuses longer tags
KEEP_RUNS = 20
_PANIC_MARKERS = (b"Kernel panic - not syncing", b"end Kernel panic")
_INIT_STARTED = b" as init process"  # the kernel's "Run /sbin/init as init process"
# Under TCG the kernel's own code patching (static keys, alternatives) now and then trips over
# the int3 it writes, on the other vCPU: "Oops: int3" at a kernel text address, then a panic.
_TCG_INT3_OOPS = b"Oops: int3"


def panic_worth_a_reset(log: bytes) -> bool:
    """Whether the console text `log` of one boot shows a panic that a reset may retry: one
    before init started (nothing of the guest has changed yet), or, at any time, the emulator's
    int3 fault above (no test's doing: the kernel patching its own text). Any other panic after
    init is the test's to see."""
    before, panic, _ = log.partition(b"Kernel panic")
    return bool(panic) and (_INIT_STARTED not in before or _TCG_INT3_OOPS in before)


# VMs booted and not yet shut down; the pytest plugin shows their serial logs on failure.
ACTIVE: list[VM] = []
# One line per VM.boot() call, for summaries: name, mode, attempts, seconds to channel, ok.
BOOTS: list[tuple[str, str, int, float, bool]] = []
# Lines for the test run's summary besides the boots: images built or found, log directories.
NOTES: list[str] = []


class BootError(HarnessError):
    """The guest did not bring its command channel up (it died, panicked or hung)."""

    attempts = 1


class CommandFailed(HarnessError):
    """A command run with check=True exited non-zero or timed out."""

    def __init__(self, result: Result) -> None:
        super().__init__(str(result))
        self.result = result


@dataclass(frozen=True)
class Result:
    """What a guest command did. stdout/stderr are decoded UTF-8 (invalid bytes replaced)."""

    command: str
    rc: int
    stdout_bytes: bytes
    stderr_bytes: bytes
    seconds: float
    timed_out: bool = False

    @property
    def stdout(self) -> str:
        return self.stdout_bytes.decode(errors="replace")

    @property
    def stderr(self) -> str:
        return self.stderr_bytes.decode(errors="replace")

    @property
    def ok(self) -> bool:
        return self.rc == 0 and not self.timed_out

    def __str__(self) -> str:
        state = "timed out" if self.timed_out else f"exit status {self.rc}"
        return (
            f"guest command {self.command} -> {state} after {self.seconds:.1f}s\n"
            f"--- stdout ---\n{self.stdout}--- stderr ---\n{self.stderr}--- end ---"
        )


@dataclass
class VMConfig:
    """How to boot. Shares are (tag, host directory); tags are passed to QEMU verbatim."""

    mode: Mode = "fast"
    shares: Sequence[tuple[str, Path]] = ()
    shares_9p: Sequence[tuple[str, Path]] = ()
    extra_cmdline: Sequence[str] = ()
    extra_qemu_args: Sequence[str] = ()
    extra_disks: Sequence[qemu.Disk] = ()
    cloud_init: bool = False  # False: cloud-init=disabled on the kernel command line
    quiet: bool = False  # True: only kernel warnings on the serial console (a bit faster)
    cpus: int = 2
    memory_mb: int = 2048
    # "single": every vCPU in one TCG thread, on one host core; "multi": a thread per vCPU, so
    # the guest's CPUs run side by side as a real VM's do, on as many host cores, at the risk of
    # TCG's int3 fault in the kernel's code patching (a boot that dies is retried). The tests
    # take "single" (two guests at once, no fault); the guest benchmarks, which time work
    # spread over the guest's CPUs (udevd, systemd, mount(8) beside each other), "multi".
    tcg_thread: qemu.TcgThread = "single"
    hotplug_slots: int = 3
    # Tags whose virtiofsd is killed once QEMU has connected to it and the guest kernel prints
    # its first line: the host's daemon dies before the guest ever talks to it.
    dead_at_boot: Sequence[str] = ()
    boot_timeout: float | None = None  # default: 120 s fast, 300 s systemd
    retries: int = 1
    name: str = "vm"
    exclusive: bool = True  # wait for a free guest slot on this machine (guestlock.py)
    lock_timeout: float = 3600.0

    def timeout(self) -> float:
        if self.boot_timeout is not None:
            return self.boot_timeout
        return 120.0 if self.mode == "fast" else 300.0


@dataclass
class ShareHandle:
    """A virtio-fs device and its daemon."""

    tag: str
    source: Path
    ident: str
    bus: str
    daemon: ManagedProcess | None = None
    boot_time: bool = True


@dataclass
class BootStats:
    attempts: int = 0
    channel_seconds: float = 0.0  # QEMU start -> first ping answered
    failures: list[str] = field(default_factory=list)


def new_run_dir(label: str = "run") -> Path:
    """A fresh directory for one harness run's logs under the cache; old runs are pruned."""
    runs = cache_dir() / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path = Path(tempfile.mkdtemp(prefix=f"{stamp}-{label}-", dir=runs))
    for old in sorted(runs.iterdir(), key=lambda p: p.stat().st_mtime)[:-KEEP_RUNS]:
        shutil.rmtree(old, ignore_errors=True)
    return path


def _socket_dir() -> Path:
    """A short private directory for unix sockets (sun_path holds 108 bytes).

    Named after our pid, so directories left by a harness that was SIGKILLed are removed here.
    """
    for old in Path(tempfile.gettempdir()).glob("vfsa-*-*"):
        pid = old.name.split("-")[1]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"vfsa-{os.getpid()}-"))


def kernel_cmdline(config: VMConfig) -> str:
    """The guest's kernel command line for `config`."""
    args = [
        "root=/dev/vda",
        "rootfstype=ext4",
        "rw",
        "fsck.mode=skip",
        "console=ttyS0,115200",
        "apparmor=0",  # saves about 12 s of a TCG boot (README: Machine facts)
    ]
    if config.quiet:
        args.append("quiet")
    if not config.cloud_init:
        args.append("cloud-init=disabled")
    if config.mode == "fast":
        args.append(f"init=/{GUEST_LIB}/init")
    args += config.extra_cmdline
    return " ".join(args)


def check_tag(tag: str) -> None:
    """QEMU's own limits; everything else about a tag is the guest's problem (untrusted)."""
    if not tag or len(tag.encode()) > MAX_TAG_BYTES or "\0" in tag:
        raise HarnessError(f"tag {tag!r} is empty, has NUL or is over {MAX_TAG_BYTES} bytes")


class VM:
    """One running guest. Use VM.boot() (retries) or start() + wait_channel()."""

    def __init__(self, image: GuestImage, config: VMConfig, run_dir: Path) -> None:
        self.image = image
        self.config = config
        self.dir = run_dir / config.name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.serial_log = self.dir / "serial.log"
        self.stats = BootStats()
        self._sockets = _socket_dir()
        self.qemu: ManagedProcess | None = None
        self.qmp: QMPClient | None = None
        self.channel: Channel | None = None
        self.shares: dict[str, ShareHandle] = {}
        self._free_ports: list[str] = []
        self._unplugging: dict[str, ShareHandle] = {}  # device id -> share being removed
        self._counter = 0
        self.started_at = 0.0  # time.monotonic() when QEMU was started
        self._locked = False

    # -- life cycle ---------------------------------------------------------------------------

    @classmethod
    def boot(cls, image: GuestImage, config: VMConfig, run_dir: Path) -> VM:
        """Boot until the command channel answers; retry once if the boot dies or hangs."""
        attempts = 1 + max(0, config.retries)
        stats = BootStats()
        for attempt in range(1, attempts + 1):
            name = config.name if attempt == 1 else f"{config.name}.retry{attempt - 1}"
            vm = cls(image, _with_name(config, name), run_dir)
            vm.stats = stats
            stats.attempts = attempt
            try:
                vm.start()
                vm.kill_dead_at_boot()
                vm.wait_channel()
                BOOTS.append((config.name, config.mode, attempt, stats.channel_seconds, True))
                return vm
            except BaseException as exc:
                tail = vm.serial_tail()
                vm.kill()
                if isinstance(exc, BootError):
                    exc.attempts = attempt
                if not isinstance(exc, BootError) or attempt == attempts:
                    BOOTS.append((config.name, config.mode, attempt, 0.0, False))
                    raise
                stats.failures.append(str(exc).splitlines()[0])
                progress(
                    f"{config.name}: boot attempt {attempt} failed ({str(exc).splitlines()[0]}); "
                    f"logs kept in {vm.dir}; retrying once\n--- serial log tail ---\n{tail}"
                )
        raise AssertionError("unreachable")

    def start(self) -> None:
        """Start the virtiofsd daemons and QEMU (does not wait for the guest)."""
        cfg = self.config
        for tag, _ in [*cfg.shares, *cfg.shares_9p]:
            check_tag(tag)
        if cfg.exclusive:
            guestlock.acquire(cfg.name, cfg.lock_timeout)
            self._locked = True
        ports = [f"hp{i}" for i in range(len(cfg.shares) + cfg.hotplug_slots)]
        overlay = self.dir / "overlay.qcow2"
        overlay.unlink(missing_ok=True)
        subprocess.run(
            [
                "qemu-img",
                "create",
                "-q",
                "-f",
                "qcow2",
                "-F",
                "raw",
                "-b",
                str(self.image.root),
                str(overlay),
            ],
            check=True,
        )
        argv = qemu.machine_argv(
            name=f"vfs-agent-test-{cfg.name}",
            cpus=cfg.cpus,
            memory_mb=cfg.memory_mb,
            tcg_thread=cfg.tcg_thread,
        )
        argv += qemu.boot_argv(
            kernel=self.image.kernel,
            initrd=self.image.initrd,
            cmdline=kernel_cmdline(cfg),
            serial_log=self.serial_log,
        )
        argv += qemu.qmp_argv(self._sockets / "qmp.sock")
        argv += qemu.disk_argv(overlay, cfg.extra_disks)
        argv += qemu.channel_argv(self._sockets / "channel.sock")
        argv += qemu.root_ports_argv(len(ports))
        for tag, source in cfg.shares:
            handle = self._new_share(tag, source, ports.pop(0), boot_time=True)
            argv += qemu.virtiofs_argv(handle.ident, tag, self._socket(handle), handle.bus)
        self._free_ports = ports
        for index, (tag, source) in enumerate(cfg.shares_9p):
            argv += qemu.ninep_argv(f"p9-{index}", tag, source)
        argv += cfg.extra_qemu_args
        (self.dir / "qemu.argv").write_text(shlex.join(argv) + "\n")
        self.serial_log.write_bytes(b"")
        self.qemu = ManagedProcess(f"qemu[{cfg.name}]", argv, self.dir / "qemu.log")
        ACTIVE.append(self)
        self.started_at = time.monotonic()
        self.qmp = QMPClient(self._sockets / "qmp.sock")
        self.channel = Channel(self._sockets / "channel.sock")

    def kill_dead_at_boot(self) -> None:
        """Kill the virtiofsd of each `dead_at_boot` share as soon as the guest kernel runs
        (QEMU connected to it while setting up the device, before the guest starts)."""
        if not self.config.dead_at_boot:
            return
        deadline = time.monotonic() + 60
        while b"Linux version" not in self.serial_log.read_bytes():
            self._check_boot_alive()
            if time.monotonic() > deadline:
                raise BootError(f"{self.config.name}: no kernel output after 60s")
            time.sleep(0.05)
        for tag in self.config.dead_at_boot:
            self.kill_share_daemon(tag)
        progress(f"{self.config.name}: killed the virtiofsd of {list(self.config.dead_at_boot)}")

    def wait_channel(self) -> float:
        """Wait until the guest answers a ping; returns seconds since QEMU started."""
        assert self.channel is not None and self.qemu is not None
        deadline = self.started_at + self.config.timeout()
        ident = self.channel.send("ping")
        last_send = time.monotonic()
        while True:
            self._check_boot_alive()
            if time.monotonic() > deadline:
                raise BootError(
                    f"{self.config.name}: no command channel after {self.config.timeout():.0f}s"
                    f" (serial log: {self.serial_log})\n{self.serial_tail()}"
                )
            try:
                self.channel.receive(ident, timeout=1.0)
                break
            except ChannelError as exc:
                if "closed" in str(exc):
                    self._check_boot_alive()
                    raise BootError(f"{self.config.name}: channel closed during boot") from exc
            if time.monotonic() - last_send > 10:  # in case the first ping was lost
                ident = self.channel.send("ping")
                last_send = time.monotonic()
        self.stats.channel_seconds = time.monotonic() - self.started_at
        progress(
            f"{self.config.name}: {self.config.mode} boot, channel ready in "
            f"{self.stats.channel_seconds:.1f}s"
        )
        return self.stats.channel_seconds

    def reboot(self) -> float:
        """Restart the guest inside the same QEMU (shares and daemons stay); wait for the
        channel of the new boot. Returns the seconds it took. A kernel that panics before it
        starts init, or at any time on the emulator's int3 fault (panic_worth_a_reset), is
        reset over QMP and waited for again, as often as `config.retries`: the files the test
        put in place before the reboot are on disk, and the new boot starts from them."""
        channel = self._channel()
        old = channel.request("ping", wait=10)["boot_id"]
        started = time.monotonic()
        since = self._serial_size()
        channel.request("reboot", wait=10)
        resets = 0
        deadline = started + self.config.timeout()
        while True:
            try:
                self._check_boot_alive(since)
            except BootError as exc:
                if resets >= self.config.retries or not self._panic_worth_a_reset(since):
                    raise
                resets += 1
                self.stats.failures.append(str(exc).splitlines()[0])
                progress(
                    f"{self.config.name}: the kernel panicked in a reboot (before init, or "
                    "the emulator's int3 fault); "
                    f"resetting the guest (serial log: {self.serial_log})"
                )
                since = self._serial_size()
                self._qmp().execute("system_reset")
                deadline = time.monotonic() + self.config.timeout()
                continue
            if time.monotonic() > deadline:
                tail = self.serial_tail()
                raise BootError(f"{self.config.name}: no channel after reboot\n{tail}")
            try:
                reply = channel.receive(channel.send("ping"), timeout=3.0)
            except ChannelError as exc:
                if "closed" in str(exc):
                    raise BootError(f"{self.config.name}: channel closed in reboot") from exc
                continue
            if reply.get("boot_id") != old:
                break
            time.sleep(1.0)
        seconds = time.monotonic() - started
        progress(f"{self.config.name}: rebooted, channel ready in {seconds:.1f}s")
        return seconds

    def _serial_size(self) -> int:
        try:
            return self.serial_log.stat().st_size
        except OSError:
            return 0

    def _panic_worth_a_reset(self, since: int) -> bool:
        """panic_worth_a_reset() of the console after byte `since` (this boot's)."""
        try:
            log = self.serial_log.read_bytes()[since:]
        except OSError:
            return False
        return panic_worth_a_reset(log)

    def _check_boot_alive(self, since: int = 0) -> None:
        """BootError if QEMU exited, or the console shows a kernel panic after byte `since`."""
        assert self.qemu is not None
        if not self.qemu.alive():
            raise BootError(
                f"{self.config.name}: QEMU exited with {self.qemu.returncode} during boot\n"
                f"--- qemu.log ---\n{self.qemu.log_tail()}\n--- serial ---\n{self.serial_tail()}"
            )
        try:
            log = self.serial_log.read_bytes()[since:]
        except OSError:
            return
        if any(marker in log for marker in _PANIC_MARKERS):
            raise BootError(f"{self.config.name}: kernel panic\n{self.serial_tail()}")

    def shutdown(self, timeout: float | None = None) -> None:
        """Power off through the channel; force it if the guest does not comply."""
        if self.qemu is None:
            return
        wait = timeout if timeout is not None else (20.0 if self.config.mode == "fast" else 90.0)
        if self.qemu.alive() and self.channel is not None:
            try:
                self.channel.request("poweroff", wait=10)
            except ChannelError as exc:
                progress(f"{self.config.name}: poweroff request failed: {exc}")
            if not self.qemu.wait(wait):
                progress(f"{self.config.name}: guest did not power off in {wait:.0f}s; killing")
        self.kill()

    def kill(self) -> None:
        """Stop QEMU and every daemon at once (idempotent)."""
        for client in (self.channel, self.qmp):
            if client is not None:
                client.close()
        self.channel = self.qmp = None
        if self.qemu is not None:
            self.qemu.stop()
        for share in self.shares.values():
            if share.daemon is not None:
                share.daemon.stop()
        if self in ACTIVE:
            ACTIVE.remove(self)
        if self._locked:
            guestlock.release(self.config.name)
            self._locked = False
        (self.dir / "overlay.qcow2").unlink(missing_ok=True)
        shutil.rmtree(self._sockets, ignore_errors=True)

    def __enter__(self) -> VM:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.shutdown()
        else:
            self.kill()

    def alive(self) -> bool:
        return self.qemu is not None and self.qemu.alive()

    def serial_tail(self, lines: int = 60) -> str:
        try:
            text = self.serial_log.read_bytes().decode(errors="replace")
        except OSError:
            return "(no serial log)"
        return "\n".join(text.splitlines()[-lines:])

    # -- commands -----------------------------------------------------------------------------

    def _channel(self) -> Channel:
        if self.channel is None:
            raise HarnessError(f"{self.config.name} is not running")
        return self.channel

    def run(
        self,
        command: str | Sequence[str],
        *,
        timeout: float = 60.0,
        check: bool = False,
        input: bytes | str | None = None,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
    ) -> Result:
        """Run a shell string (/bin/sh -c) or an argv list in the guest as root."""
        fields: dict[str, object] = {"timeout": timeout}
        if isinstance(command, str):
            fields["sh"] = command
            shown = command
        else:
            fields["argv"] = list(command)
            shown = shlex.join(command)
        if input is not None:
            fields["input_b64"] = b64(input.encode() if isinstance(input, str) else input)
        if env:
            fields["env"] = env
        if cwd:
            fields["cwd"] = cwd
        try:
            reply = self._channel().request("run", wait=timeout + 30, **fields)
        except ChannelError as exc:
            raise HarnessError(
                f"{self.config.name}: {exc} (command: {shown})\n{self.serial_tail(30)}"
            ) from exc
        result = Result(
            command=shown,
            rc=int(reply["rc"]),
            stdout_bytes=unb64(reply.get("stdout_b64")),
            stderr_bytes=unb64(reply.get("stderr_b64")),
            seconds=float(reply.get("seconds", 0.0)),
            timed_out=bool(reply.get("timed_out")),
        )
        if check and not result.ok:
            raise CommandFailed(result)
        return result

    def put_file(self, path: str, data: bytes | str, mode: int = 0o644) -> None:
        """Write a guest file atomically (root-owned), creating missing parent directories."""
        raw = data.encode() if isinstance(data, str) else data
        self._channel().request("put", wait=60, path=path, data_b64=b64(raw), mode=mode, mkdir=True)

    def get_file(self, path: str) -> bytes:
        return unb64(self._channel().request("get", wait=60, path=path)["data_b64"])

    def wait_system_running(self, timeout: float = 240.0, settle: bool = True) -> str:
        """`systemctl is-system-running --wait` in the guest; returns the state it reports.

        "running" does not mean udev has finished coldplug (drivers such as 9pnet_virtio were
        seen still loading), so by default this also runs `udevadm settle`.
        """
        result = self.run(["systemctl", "is-system-running", "--wait"], timeout=timeout)
        if settle:
            self.run(["udevadm", "settle", "--timeout=60"], timeout=90)
        return result.stdout.strip()

    def virtiofs_tags(self) -> list[str]:
        """Tags in the guest's /sys/fs/virtiofs/*/tag (exact bytes, one trailing newline cut)."""
        script = (
            "import glob, json\n"
            "tags = []\n"
            "for p in sorted(glob.glob('/sys/fs/virtiofs/*/tag')):\n"
            "    raw = open(p, 'rb').read()\n"
            "    tags.append((raw[:-1] if raw.endswith(b'\\n') else raw).hex())\n"
            "print(json.dumps(tags))\n"
        )
        result = self.run(["python3", "-c", script], check=True)
        return sorted(
            bytes.fromhex(t).decode(errors="surrogateescape") for t in json.loads(result.stdout)
        )

    # -- shares -------------------------------------------------------------------------------

    def _new_share(self, tag: str, source: Path, bus: str, *, boot_time: bool) -> ShareHandle:
        check_tag(tag)
        if tag in self.shares:
            raise HarnessError(f"{self.config.name} already has a share tagged {tag!r}")
        self._counter += 1
        handle = ShareHandle(tag, source, f"fs{self._counter}", bus, boot_time=boot_time)
        handle.daemon = start_virtiofsd(
            f"virtiofsd[{handle.ident}]",
            source,
            self._socket(handle),
            self.dir / f"virtiofsd-{handle.ident}.log",
        )
        self.shares[tag] = handle
        return handle

    def _socket(self, handle: ShareHandle) -> Path:
        return self._sockets / f"{handle.ident}.sock"

    def _qmp(self) -> QMPClient:
        if self.qmp is None:
            raise HarnessError(f"{self.config.name} is not running")
        return self.qmp

    def hotplug_share(self, tag: str, source: Path) -> ShareHandle:
        """Start a virtiofsd and hot-add a vhost-user-fs-pci device with `tag` over QMP."""
        if not self._free_ports:
            raise HarnessError(f"{self.config.name}: no free hotplug slot (VMConfig.hotplug_slots)")
        bus = self._free_ports.pop(0)
        try:
            handle = self._new_share(tag, source, bus, boot_time=False)
        except BaseException:
            self._free_ports.insert(0, bus)
            raise
        qmp = self._qmp()
        chardev = f"chr-{handle.ident}"
        try:
            qmp.execute(
                "chardev-add",
                {
                    "id": chardev,
                    "backend": {
                        "type": "socket",
                        "data": {
                            "addr": {"type": "unix", "data": {"path": str(self._socket(handle))}},
                            "server": False,
                        },
                    },
                },
            )
            try:
                qmp.execute(
                    "device_add",
                    {
                        "driver": "vhost-user-fs-pci",
                        "id": handle.ident,
                        "chardev": chardev,
                        "tag": tag,
                        "bus": bus,
                    },
                )
            except QMPError:
                qmp.execute("chardev-remove", {"id": chardev})
                raise
        except BaseException:
            self._drop_share(handle)
            raise
        return handle

    def unplug_share(self, tag: str, timeout: float = 60.0) -> None:
        """device_del, wait for DEVICE_DELETED (the guest's ack), chardev-remove, stop daemon."""
        handle = self.shares.get(tag)
        if handle is None:
            raise HarnessError(f"{self.config.name} has no share tagged {tag!r}")
        qmp = self._qmp()
        qmp.execute("device_del", {"id": handle.ident})
        qmp.wait_event("DEVICE_DELETED", timeout, lambda d: d.get("device") == handle.ident)
        qmp.execute("chardev-remove", {"id": f"chr-{handle.ident}"})
        self._drop_share(handle)

    def unplug_shares(self, tags: Sequence[str], timeout: float = 120.0) -> None:
        """device_del every share at once (a burst), then wait for every DEVICE_DELETED."""
        handles = []
        for tag in tags:
            handle = self.shares.get(tag)
            if handle is None:
                raise HarnessError(f"{self.config.name} has no share tagged {tag!r}")
            handles.append(handle)
        qmp = self._qmp()
        for handle in handles:
            qmp.execute("device_del", {"id": handle.ident})
        # Each chardev goes the moment its device does: QEMU 7.2 crashed (SIGSEGV) when a
        # virtiofsd hung up on a deleted device whose chardev was still there.
        pending = {handle.ident: handle for handle in handles}
        deadline = time.monotonic() + timeout
        while pending:
            left = max(1.0, deadline - time.monotonic())
            event = qmp.wait_event("DEVICE_DELETED", left, lambda d: d.get("device") in pending)
            ident = event["data"]["device"]
            qmp.execute("chardev-remove", {"id": f"chr-{ident}"})
            pending.pop(ident)
        for handle in handles:
            self._drop_share(handle)

    def request_unplug(self, tag: str) -> None:
        """device_del without waiting for the guest's ack: a guest cannot finish removing a
        virtio-fs device while requests to a dead virtiofsd are in flight. The device keeps
        its slot until QEMU stops; its tag is free for a new share at once."""
        handle = self.shares.pop(tag, None)
        if handle is None:
            raise HarnessError(f"{self.config.name} has no share tagged {tag!r}")
        self._qmp().execute("device_del", {"id": handle.ident})
        self._unplugging[handle.ident] = handle

    def free_slots(self) -> int:
        """Hot-plug slots (PCIe root ports) with no device on them."""
        return len(self._free_ports)

    def wait_free_slot(self, timeout: float = 180.0) -> None:
        """Collect acknowledged unplugs until a hot-plug slot is free; a guest that acknowledges
        none of the pending request_unplug()s within `timeout` is an error, never a hang."""

        def free() -> bool:
            self.collect_unplugged()
            return bool(self._free_ports)

        if not wait_until(free, timeout, interval=0.2):
            raise HarnessError(
                f"{self.config.name}: no hot-plug slot freed within {timeout:.0f}s; the guest"
                f" acknowledged none of the unplugs of {self.unplugs_pending()}"
            )

    def unplugs_pending(self) -> list[str]:
        """Tags whose request_unplug() the guest has not acknowledged yet."""
        return [handle.tag for handle in self._unplugging.values()]

    def collect_unplugged(self) -> list[str]:
        """Finish the request_unplug()s the guest has acknowledged since; returns their tags."""
        qmp = self._qmp()
        qmp.execute("query-status")  # reads what QEMU sent so far, events included
        done = []
        for event in list(qmp.events):
            ident = event.get("data", {}).get("device")
            if event["event"] != "DEVICE_DELETED" or ident not in self._unplugging:
                continue
            qmp.events.remove(event)
            handle = self._unplugging.pop(ident)
            qmp.execute("chardev-remove", {"id": f"chr-{handle.ident}"})
            self._drop_share(handle)
            done.append(handle.tag)
        return done

    def kill_share_daemon(self, tag: str) -> None:
        """SIGKILL the virtiofsd of a share, as a crash would; the device stays attached."""
        handle = self.shares.get(tag)
        if handle is None or handle.daemon is None:
            raise HarnessError(f"{self.config.name} has no running daemon for {tag!r}")
        os.killpg(handle.daemon.pid, signal.SIGKILL)
        handle.daemon.wait(10.0)

    def _drop_share(self, handle: ShareHandle) -> None:
        if handle.daemon is not None and not handle.daemon.wait(3.0):
            handle.daemon.stop()
        if self.shares.get(handle.tag) is handle:
            del self.shares[handle.tag]
        self._free_ports.append(handle.bus)
        self._socket(handle).unlink(missing_ok=True)


def _with_name(config: VMConfig, name: str) -> VMConfig:
    return replace(config, name=name)
