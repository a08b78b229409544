"""Run a system call that can hang for good in a forked child, and wait for it with a deadline.

With a dead virtiofsd, a request to its mount never ends, and once the guest starts removing
such a device the kernel holds virtio-fs's global lock until those requests end: every later
virtio-fs mount(2) waits for it too. Neither can be interrupted. Such calls run here: the child
keeps nothing open but the descriptors it needs and one pipe for its answer (no stdout, no lock
file, no socket), so a child that never returns holds nothing the agent or its caller waits for.
A late child is left alone (a signal would only move it into uninterruptible sleep) and reaped
when it ends.
"""

from __future__ import annotations

import contextlib
import os
import select
import time
from collections.abc import Callable, Iterable, Sequence

TIMED_OUT = -1  # the answer of a child that missed the deadline

_CHILDREN: set[int] = set()  # children of this process not yet reaped


class Child:
    """A forked child and the read end of the pipe it answers on. A plain class: the answer
    wait (answer.py) runs at boot once per share and imports no dataclasses."""

    __slots__ = ("answer_fd", "pid")

    def __init__(self, pid: int, answer_fd: int) -> None:
        self.pid = pid
        self.answer_fd = answer_fd


def spawn(call: Callable[[], int], *, keep: Iterable[int] = (), name: bytes = b"") -> Child:
    """Fork; the child runs `call` (returning an errno, 0 for success) and exits. Descriptors
    in `keep` stay open in the child; `name` is what it shows in ps."""

    def answer(write_end: int) -> None:
        os.write(write_end, str(_errno_of(call)).encode())

    return _fork(answer, keep, name)


def spawn_each(calls: Sequence[Callable[[], int]], *, name: bytes = b"") -> Child:
    """One child for several calls that may each hang for good (wait_each() collects them):
    each runs in a thread of its own and answers `INDEX ERRNO` on a line of its own as soon as
    it returns, so one that hangs holds back no other. Under emulation each fork of the agent
    costs tens of milliseconds of CPU, the child's page faults and exit included: one child for
    the 8 probes of a look took 65 ms where 8 children took 96 (bench/reconcile_cost.py). The
    child ends when every call has returned."""

    def answer_each(write_end: int) -> None:
        import threading  # only here: the answer wait at boot does without it

        def one(index: int, call: Callable[[], int]) -> None:
            code = _errno_of(call)
            # One line, far below PIPE_BUF: the lines of the threads never interleave. The
            # reader is gone after its deadline (EPIPE): nobody is left to tell.
            with contextlib.suppress(OSError):
                os.write(write_end, f"{index} {code}\n".encode())

        threads = [threading.Thread(target=one, args=(i, call)) for i, call in enumerate(calls)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    return _fork(answer_each, (), name)


def _errno_of(call: Callable[[], int]) -> int:
    """What a child answers for `call`: its result, or the errno of the OSError it raised."""
    try:
        return call()
    except OSError as e:
        return e.errno or 0


def _fork(body: Callable[[int], None], keep: Iterable[int], name: bytes) -> Child:
    """Fork; the child runs `body` with the write end of its answer pipe, then exits."""
    reap()
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    kept = sorted({*keep, write_end})
    pid = os.fork()
    if pid == 0:  # the child: a few system calls, then _exit; never returns
        try:
            low = 0
            for fd in kept:
                os.closerange(low, fd)
                low = fd + 1
            os.closerange(low, 65536)
            if name:
                with contextlib.suppress(OSError), open("/proc/self/comm", "wb") as comm:
                    comm.write(name)
            body(write_end)
        finally:
            os._exit(0)
    os.close(write_end)
    _CHILDREN.add(pid)
    return Child(pid, read_end)


def wait(children: Iterable[Child], timeout: float) -> dict[int, int]:
    """The answer of each child (by pid), TIMED_OUT for those that missed the deadline."""
    pending = {child.answer_fd: child for child in children}
    answers: dict[int, int] = {}
    deadline = time.monotonic() + timeout
    try:
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            ready, _, _ = select.select(list(pending), [], [], left)
            for fd in ready:
                child = pending.pop(fd)
                answers[child.pid] = collect(child)
    finally:
        for fd, child in pending.items():
            os.close(fd)
            answers[child.pid] = TIMED_OUT
    return answers


def collect(child: Child) -> int:
    """The answer of a child whose pipe is readable (it answered or died): its errno, 0, or
    TIMED_OUT when it died without one. Closes the pipe and reaps the child."""
    text = os.read(child.answer_fd, 16)
    os.close(child.answer_fd)
    with contextlib.suppress(ChildProcessError):  # reap() may have been first
        os.waitpid(child.pid, 0)  # it answered, so it is exiting: nothing blocks
    _CHILDREN.discard(child.pid)
    return int(text) if text else TIMED_OUT


def wait_each(child: Child, count: int, timeout: float) -> dict[int, int]:
    """The answers of a spawn_each() child of `count` calls, by index: each call's errno (0:
    success), TIMED_OUT for a call that missed the deadline. The child is reaped once every call
    answered; one with a call still running is left as spawn() leaves a late child."""
    answers = dict.fromkeys(range(count), TIMED_OUT)
    pending = set(answers)
    left_over = b""
    deadline = time.monotonic() + timeout
    try:
        while pending:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([child.answer_fd], [], [], left)[0]:
                break
            chunk = os.read(child.answer_fd, 4096)
            if not chunk:  # the child died without every answer
                break
            *lines, left_over = (left_over + chunk).split(b"\n")
            for line in lines:
                index, code = (int(word) for word in line.split())
                pending.discard(index)
                answers[index] = code
    finally:
        os.close(child.answer_fd)
    if not pending:
        with contextlib.suppress(ChildProcessError):  # every thread returned: it is exiting
            os.waitpid(child.pid, 0)
        _CHILDREN.discard(child.pid)
    return answers


def run(
    call: Callable[[], int], timeout: float, *, keep: Iterable[int] = (), name: bytes = b""
) -> int:
    """One call in a child: its errno (0: success), or TIMED_OUT."""
    child = spawn(call, keep=keep, name=name)
    return wait([child], timeout)[child.pid]


def reap() -> None:
    """Collect children that have ended since (the daemon runs for long)."""
    for pid in list(_CHILDREN):
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done = pid
        if done:
            _CHILDREN.discard(pid)


def unreaped() -> frozenset[int]:
    return frozenset(_CHILDREN)


def proc_file(pid: int, name: str) -> bytes:
    """A file of this machine's /proc/PID (children are processes here, whatever the root)."""
    try:
        with open(f"/proc/{pid}/{name}", "rb") as handle:
            return handle.read()
    except OSError:
        return b""


def start_time(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat: tells a PID from a later process that reused it."""
    fields = proc_file(pid, "stat").rsplit(b")", 1)[-1].split()
    return fields[19].decode() if len(fields) > 19 else None
