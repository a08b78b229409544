"""Wait for the host to answer a virtio-fs share before its generated mount unit runs.

Why: virtio-fs mount(2) returns before the host's daemon answered FUSE_INIT, so with a dead
virtiofsd the mount unit "succeeds", and every service that requires it then hangs on its first
access, for good (the kernel has no request timeout for it; see the README's Host-side faults).
So the share is mounted first in a private mount namespace of a forked child (bounded.py), which
asks for statfs(2): FUSE sends that only after FUSE_INIT is answered. No answer within the
share's `mount_timeout` means its wait fails, so the mount unit and what requires it fail with
it and the boot goes on without them.

Who waits: a shell (render_systemd.ANSWER_SCRIPT) for each share, run by vfs-agent's mount
helper inside the share's mount unit (mount(8) runs /sbin/mount.virtiofs.vfsagent), or, on a
system without the helper, by the share's `vfs-agent-answer@<path>.service`. It asks
`vfs-agent-prober.service`, one interpreter for all of them, started by its FIFO
(`vfs-agent-prober.socket`): `python3 -m vfs_agent.system.answer --serve`, the FIFO on stdin.
At boot every share attached then asks at once, and one interpreter instead of one per share is
what keeps the waits off the boot's critical path. A request is one line, `TAG_HEX SECONDS PID`;
the answer, `0` or `1 <what went wrong>`, goes to the FIFO ANSWERS_DIR/PID the shell made. At
boot the prober does not wait to be asked: the generator's drop-in of its service names the
shares attached then ($VFS_AGENT_BOOT_SHARES, `TAG_HEX:SECONDS` words), and its first start in
the boot (first_start) probes them at once, with the first unit that wants it, while the mount
units still wait for local-fs-pre.target. The first request for each share waits for that
probe if it is still running (a dead host's deadline runs from the probe's start), takes its
success if it is at most EARLY_FRESH_SECONDS old, and otherwise gets a probe of its own: an
earlier failure is not handed on. The prober exits after IDLE_SECONDS without a request; the
FIFO starts it again.
Without the prober's socket (units written by `generate systemd` for a system without
vfs-agent's own units) the shell runs `python3 -m vfs_agent.system.answer TAG_HEX SECONDS`, the
same wait for one share. All of them write to the kernel log, not the journal: at boot they run
before journald has started.

A late child is left where it is: killing it would only make its exit wait, uninterruptibly,
for the kernel to tear its mount down, which needs the dead host too. The prober's unit keeps
it (KillMode=process), as does a `vfs-agent-answer@` unit. This module imports the standard
library's os, select, stat and time and nothing of the core's data (no dataclasses, no enum)
unless a mount fails.
"""

from __future__ import annotations

import contextlib
import os
import select
import stat
import sys
import time
from collections.abc import Callable

from vfs_agent.system import bounded, syscalls
from vfs_agent.system.kmsg import ERR, WARNING, kmsg

MOUNTPOINT = "/run/vfs-agent/probe"  # mounted on only inside the child's own namespace
# One file per share whose host did not answer (named by the tag in hex), for `status`.
UNANSWERED_DIR = "/run/vfs-agent/unanswered"
# The prober's request FIFO (made by vfs-agent-prober.socket) and the waits' answer FIFOs.
ANSWERS_DIR = "/run/vfs-agent/answers"
# Set by the generator's drop-in of the prober's service (render_systemd.BOOT_SHARES_VARIABLE).
BOOT_SHARES_VARIABLE = "VFS_AGENT_BOOT_SHARES"
# Made by the prober's first start in this boot (/run is empty at every boot): later starts
# (the socket starts it again after each idle exit) do not probe the boot's shares again.
BOOT_PROBED = "/run/vfs-agent/boot-shares-probed"
# How long an early probe's success stands for a share's first request. At boot the mount units
# ask within seconds of the prober's start; a later first request (its unit started late, by
# hand say) is probed anew rather than trust a host that answered that long ago.
EARLY_FRESH_SECONDS = 30.0
PROG = "vfs-agent-answer"  # the probes' name in ps, and the one-shot wait's in the kernel log
PROBER = "vfs-agent-prober"
IDLE_SECONDS = 60.0
MAX_TIMEOUT = 3600  # the policy's bound for mount_timeout
_LINE_MAX = 512  # a request is three short words; longer is garbage


class Request:
    """One share's wait: what it asked for, and the FIFO (a PID) its answer goes to."""

    __slots__ = ("reply", "tag_hex", "timeout")

    def __init__(self, tag_hex: str, timeout: int, reply: str = "") -> None:
        self.tag_hex = tag_hex
        self.timeout = timeout
        self.reply = reply

    @property
    def tag(self) -> str:
        return bytes.fromhex(self.tag_hex).decode("utf-8", "surrogateescape")


def parse_request(words: list[str]) -> Request:
    """`TAG_HEX SECONDS [PID]`; ValueError for anything else."""
    if len(words) not in (2, 3):
        raise ValueError("expected TAG_HEX SECONDS [PID]")
    tag_hex, seconds, *reply = words
    try:
        if not tag_hex or bytes.fromhex(tag_hex).hex() != tag_hex.lower():
            raise ValueError
    except ValueError:
        raise ValueError(f"not a tag in hex: {tag_hex!r}") from None
    if not seconds.isdigit() or not 1 <= int(seconds) <= MAX_TIMEOUT:
        raise ValueError(f"not a number of seconds from 1 to {MAX_TIMEOUT}: {seconds!r}")
    if reply and not (reply[0].isdigit() and reply[0].isascii() and len(reply[0]) <= 10):
        raise ValueError(f"not a PID: {reply[0]!r}")
    return Request(tag_hex.lower(), int(seconds), reply[0] if reply else "")


def _probe(tag: str) -> int:
    """In the child: a private mount namespace, the share mounted there, one statfs(2)."""
    syscalls.private_mount_namespace()
    syscalls.mount(tag, MOUNTPOINT, "virtiofs", 0, "")
    os.statvfs(MOUNTPOINT)
    return 0


def _probe_call(request: Request) -> Callable[[], int]:
    """The probe of the request's share, for a bounded child (its mountpoint made first)."""
    os.makedirs(MOUNTPOINT, mode=0o700, exist_ok=True)
    tag = request.tag
    return lambda: _probe(tag)


def verdict(request: Request, code: int) -> str:
    """What a probe's answer means for the share: "" when the host answered, else why it is not
    usable. Keeps the record `status` reads of a host that did not answer."""
    marker = os.path.join(UNANSWERED_DIR, request.tag_hex)
    if code == 0:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(marker)
        return ""
    if code == bounded.TIMED_OUT:
        os.makedirs(UNANSWERED_DIR, mode=0o755, exist_ok=True)
        with open(marker, "w", encoding="ascii") as handle:
            handle.write(f"{request.timeout}\n")
        why = (
            f"its host did not answer within {request.timeout} s (is the host's virtiofsd for "
            "it running?); failing its mount so the boot goes on without it"
        )
    else:  # rare: only then the words for the errno, and the enum they take
        from vfs_agent.core.transport import Transport
        from vfs_agent.system.mount_errors import explain_mount_error

        error = OSError(code, os.strerror(code))
        why = explain_mount_error(error, request.tag, Transport.VIRTIOFS)
    return f"Share {request.tag!r} is not usable: {why}."


def _reply(request: Request, why: str) -> None:
    """Hand the verdict to the waiting shell; gone (its unit stopped), nobody needs it."""
    path = os.path.join(ANSWERS_DIR, request.reply)
    line = f"{1 if why else 0} {why}".replace("\n", " ") + "\n"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:  # ENXIO: nobody reads it any more; ENOENT: never made, or removed
        kmsg(WARNING, PROBER, f"no one waits for the answer for {request.tag!r} ({e})")
        return
    try:
        if stat.S_ISFIFO(os.fstat(fd).st_mode):
            os.write(fd, line.encode("utf-8", "backslashreplace")[:4096])  # one atomic write
    finally:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(path)


def boot_shares(value: str) -> list[Request]:
    """The shares to probe in advance, from the generator's drop-in of the prober's service:
    `TAG_HEX:SECONDS` words (render_systemd.prober_dropin). A bad word is logged and left out."""
    shares = []
    for word in value.split():
        tag_hex, _, seconds = word.partition(":")
        try:
            shares.append(parse_request([tag_hex, seconds]))
        except ValueError as e:
            kmsg(WARNING, PROBER, f"ignored a share to probe at boot: {e}")
    return shares


def first_start(marker: str) -> bool:
    """Whether this is the prober's first start in this boot (`marker` made now, atomically).
    Only then are the boot's shares probed in advance: a share whose host was dead at boot would
    otherwise get another probe, and another child stuck on it, at every later start."""
    try:
        os.close(os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644))
    except FileExistsError:
        return False
    except OSError as e:  # no /run/vfs-agent: the probes in advance are only a head start
        kmsg(WARNING, PROBER, f"not probing the boot's shares in advance: {e}")
        return False
    return True


def serve(
    requests: int,
    idle: float = IDLE_SECONDS,
    early: list[Request] | None = None,
    fresh: float = EARLY_FRESH_SECONDS,
) -> int:
    """Answer the requests read from `requests` (the FIFO), each probe with its own deadline,
    until `idle` seconds pass with nothing asked and nothing pending. The `early` shares (the
    boot's) are probed at once; the first request for each gets that probe's verdict as soon as
    there is one, unless it is a failure or a success older than `fresh` seconds (then it is
    probed anew). A later request, after a replug say, gets a probe of its own."""
    waiting: dict[int, tuple[bounded.Child, float, Request]] = {}  # by the child's answer fd
    # An early probe's verdict and when it came, by tag in hex; None: still probing.
    verdicts: dict[str, tuple[str, float] | None] = {}
    asked: dict[str, list[Request]] = {}  # requests waiting for an early probe's verdict
    for request in early or []:
        verdicts[request.tag_hex] = None
        child = bounded.spawn(_probe_call(request), name=PROG.encode())
        waiting[child.answer_fd] = (child, time.monotonic() + request.timeout, request)

    def answer(request: Request, why: str) -> None:
        if request.reply:
            _reply(request, why)
            return
        waiters = asked.pop(request.tag_hex, [])
        if not waiters:  # kept for the first request
            verdicts[request.tag_hex] = (why, time.monotonic())
            return
        del verdicts[request.tag_hex]  # handed to the requests that came while it ran
        for waiter in waiters:
            _reply(waiter, why)

    pending = b""
    reading = True
    while reading or waiting:
        now = time.monotonic()
        until = min((deadline for _, deadline, _ in waiting.values()), default=now + idle)
        watched = [*waiting, *([requests] if reading else [])]
        ready, _, _ = select.select(watched, [], [], max(until - now, 0))
        if not ready and not waiting:
            return 0  # idle: the socket starts the prober again for the next request
        for fd in ready:
            if fd != requests:
                child, _, request = waiting.pop(fd)
                answer(request, verdict(request, bounded.collect(child)))
                continue
            chunk = os.read(requests, 4096)
            reading = bool(chunk)
            *lines, pending = (pending + chunk).split(b"\n")
            if len(pending) > _LINE_MAX:
                pending = b""
            for line in lines:
                try:
                    request = parse_request(line.decode("ascii").split())
                except (UnicodeDecodeError, ValueError) as e:
                    kmsg(WARNING, PROBER, f"ignored a request: {e}")
                    continue
                if request.tag_hex in verdicts:  # probed in advance: its verdict, once
                    early_verdict = verdicts[request.tag_hex]
                    if early_verdict is None:  # still probing: this request waits for it
                        asked.setdefault(request.tag_hex, []).append(request)
                        continue
                    del verdicts[request.tag_hex]
                    why, at = early_verdict
                    if why == "" and time.monotonic() - at <= fresh:  # else probed anew
                        _reply(request, why)
                        continue
                child = bounded.spawn(_probe_call(request), name=PROG.encode())
                waiting[child.answer_fd] = (child, time.monotonic() + request.timeout, request)
        now = time.monotonic()
        for fd in [fd for fd, (_, deadline, _) in waiting.items() if deadline <= now]:
            _, _, request = waiting.pop(fd)
            os.close(fd)  # the late child is left alone (the module's docstring)
            answer(request, verdict(request, bounded.TIMED_OUT))
    return 0


def main(argv: list[str]) -> int:
    if argv == ["--serve"]:
        listed = os.environ.get(BOOT_SHARES_VARIABLE, "")
        early = boot_shares(listed) if listed and first_start(BOOT_PROBED) else []
        return serve(sys.stdin.fileno(), early=early)
    try:
        if len(argv) != 2:
            raise ValueError("expected TAG_HEX SECONDS")
        request = parse_request(argv)
    except ValueError as e:
        sys.stderr.write(f"usage: {PROG} TAG_HEX SECONDS | {PROG} --serve ({e})\n")
        return 2
    code = bounded.run(_probe_call(request), request.timeout, name=PROG.encode())
    why = verdict(request, code)
    if why:
        kmsg(ERR, PROG, why)
    return 1 if why else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
