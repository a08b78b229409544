"""`vfs-agent daemon`: reconcile, then follow uevents; SIGHUP reloads the policy.

Events in, pure reconcile out: every batch of share events (and every SIGHUP) runs the same
discover -> plan -> apply as mount-all, under the same lock. Shares whose path has a generated
.mount unit are left to systemd, which follows their device units itself, except for a plug it
missed, whose unit the daemon starts (core/missed_plug.py). A share device that appears without
a driver gets its driver loaded (as udevd would); its `bind` brings the reconcile.
While the plan holds virtio-fs mounts back because the kernel is removing a device
(core/plan.py), or systemd is not done with the unit of a share left to it (a job is queued for
it), the daemon looks again after a pause: 1 s after a reconcile that uevents, a reload or
the start brought, doubled (up to 60 s) after each look that still finds it so. No uevent is
sure to come when a removal or a job ends, and each look only plans and asks (nothing is
mounted while the removal lasts); a storm of uevents does not lengthen the pause. Once ready,
it keeps the memo the generator left at this boot for the next boot (systemd/replay.py).
"""

from __future__ import annotations

import logging
import os
import select
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from vfs_agent.commands import operations as ops
from vfs_agent.core.plan import ActionKind
from vfs_agent.execute.apply import Executors
from vfs_agent.execute.kernel import KernelCalls, LiveKernelCalls
from vfs_agent.execute.outcome import Outcome
from vfs_agent.execute.route import SystemdMode
from vfs_agent.policy.errors import PolicyError
from vfs_agent.policy.types import Policy
from vfs_agent.system.uevents import EventSource, ShareEvent, needs_driver
from vfs_agent.systemd.notify import Notifier
from vfs_agent.systemd.replay import KEPT, keep_memo

log = logging.getLogger(__name__)

MAX_RECHECK = 60.0  # seconds between looks while a removal holds mounts back or a job runs


@dataclass
class DaemonState:
    policy: Policy
    mounted_by_us: set[str] = field(default_factory=set)
    reconciles: int = 0
    recheck: float | None = None  # seconds until the next look (see the module docstring)
    backoff: float | None = None  # the pause that `recheck` started from


class Daemon:
    def __init__(
        self,
        ctx: ops.Context,
        events: Callable[[], EventSource],
        *,
        notifier: Notifier | None = None,
        kernel: KernelCalls | None = None,
        unmount_on_exit: bool = False,
    ) -> None:
        self.ctx = ctx
        self.events_factory = events
        self.notifier = notifier or Notifier()
        self.kernel = kernel or LiveKernelCalls(ctx.sysroot)
        # Picked once: the kernel for shares without a unit, and shares whose path has a
        # generated unit left to systemd (the unit follows its device unit by itself).
        self.executors = Executors.pick(
            ctx.sysroot, dry_run=False, systemd=SystemdMode.LEAVE, kernel=self.kernel
        )
        self.unmount_on_exit = unmount_on_exit
        self._signals: list[int] = []

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT. Raises PolicyError if the policy is invalid at start."""
        state = DaemonState(self.ctx.policy_to_apply())
        # Listen before the first reconcile so no event between the two is lost.
        source = self.events_factory()
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        old_wakeup = signal.set_wakeup_fd(wake_w)
        handlers = {
            s: signal.signal(s, self._on_signal)
            for s in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)
        }
        try:
            self._reconcile(state, "start-up")
            self.notifier.ready(self._status(state))
            self._keep_generator_memo()
            log.info("Started; following virtio-fs uevents (%s).", getattr(source, "source", "?"))
            while True:
                timeout = _earliest(self.notifier.watchdog_interval, state.recheck)
                started = time.monotonic()
                ready, _, _ = select.select([source.fileno(), wake_r], [], [], timeout)
                self.notifier.watchdog()
                if state.recheck is not None:
                    state.recheck -= time.monotonic() - started
                    if state.recheck <= 0:
                        self._reconcile(
                            state, "a pause for a device removal or a unit's job", again=True
                        )
                if wake_r in ready:
                    _drain_pipe(wake_r)
                if self._signals and self._handle_signals(state):
                    break
                if source.fileno() in ready:
                    events = source.drain()
                    if events:
                        for event in events:
                            log.info(
                                "uevent %s %s %s%s",
                                event.action,
                                event.subsystem,
                                event.devpath,
                                f" tag={event.tag!r}" if event.tag else "",
                            )
                        if self._load_drivers(events):
                            self._reconcile(state, f"{len(events)} uevent(s)")
        finally:
            self.notifier.send("STOPPING=1")
            signal.set_wakeup_fd(old_wakeup)
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
            os.close(wake_r)
            os.close(wake_w)
            source.close()
        if self.unmount_on_exit:
            self._unmount_ours(state)
        log.info("Stopped; mounts left in place." if not self.unmount_on_exit else "Stopped.")
        return 0

    def _keep_generator_memo(self) -> None:
        """Keep what the generator left at this boot, so the next boot's generator can write
        its output again without running in full when nothing changed (systemd/replay.py)."""
        try:
            if keep_memo(str(self.ctx.sysroot.root)):
                log.info("Kept the generator's memo in %s for the next boot.", KEPT)
        except OSError as e:  # only the next boot's speed is lost
            log.warning("Cannot keep the generator's memo in %s: %s", KEPT, e)

    def _load_drivers(self, events: list[ShareEvent]) -> bool:
        """Load the driver of share devices added without one. Returns whether the batch needs
        a reconcile: it does unless it only announced devices whose driver is now there (their
        `bind` follows; reconciling before it could try to mount a tag the driver does not
        know yet)."""
        reconcile = False
        for transport in dict.fromkeys(needs_driver(e) for e in events):
            if transport is None:
                reconcile = True
                continue
            problem = self.kernel.load_driver(transport)
            if problem:
                log.warning(
                    "A %s device was added but its driver is missing: %s", transport, problem
                )
                reconcile = True  # the failed mounts then say why
        return reconcile

    def _on_signal(self, signum: int, _frame: object) -> None:
        self._signals.append(signum)

    def _handle_signals(self, state: DaemonState) -> bool:
        """Returns True when the daemon must stop."""
        pending, self._signals = self._signals, []
        if signal.SIGTERM in pending or signal.SIGINT in pending:
            return True
        if signal.SIGHUP in pending:
            self.notifier.send("RELOADING=1")
            try:
                state.policy = self.ctx.policy_to_apply()
                log.info("Reloaded the policy (%s).", ", ".join(state.policy.files) or "defaults")
                self._reconcile(state, "policy reload")
            except PolicyError as e:
                for problem in e.problems:
                    log.error("Invalid policy: %s", problem)
                log.error("Keeping the previous policy.")
            self.notifier.send("READY=1")
        return False

    def _reconcile(self, state: DaemonState, why: str, *, again: bool = False) -> list[Outcome]:
        """`again`: the look after a pause (the module docstring), which doubles the next one."""
        try:
            outcomes = ops.reconcile(self.ctx, state.policy, self.executors)
        except OSError as e:  # the mount table could not be read (EIO): nothing was changed
            log.error("Failed to reconcile after %s: %s; the next event retries, ignoring.", why, e)
            return []
        state.reconciles += 1
        if any(o.action.kind is ActionKind.HELD or not o.settled for o in outcomes):
            doubled = state.backoff * 2 if again and state.backoff else 1.0
            backoff = state.backoff = min(MAX_RECHECK, doubled)
            state.recheck = backoff
        else:
            state.backoff = state.recheck = None
        for outcome in outcomes:
            path = outcome.action.path
            if outcome.changed and path:
                if outcome.action.kind is ActionKind.MOUNT:
                    state.mounted_by_us.add(path)
                elif outcome.action.kind is ActionKind.UNMOUNT_STALE:
                    state.mounted_by_us.discard(path)
        changed = sum(o.changed for o in outcomes)
        log.debug("Reconciled after %s: %d change(s).", why, changed)
        self.notifier.status(self._status(state, outcomes))
        return outcomes

    def _status(self, state: DaemonState, outcomes: list[Outcome] | None = None) -> str:
        if not outcomes:
            return f"{len(state.mounted_by_us)} share(s) mounted by vfs-agent"
        counts = {
            "mounted": sum(
                o.action.kind in (ActionKind.MOUNT, ActionKind.KEEP) and o.ok for o in outcomes
            ),
            "ignored": sum(o.action.kind is ActionKind.IGNORE for o in outcomes),
            "absent": sum(o.action.kind is ActionKind.ABSENT for o in outcomes),
            "failed": sum(not o.ok for o in outcomes),
        }
        return ", ".join(f"{v} {k}" for k, v in counts.items())

    def _unmount_ours(self, state: DaemonState) -> None:
        for path in sorted(state.mounted_by_us, key=lambda p: -p.count("/")):
            try:
                ops.umount(self.ctx, path, self.executors, lazy=True)
                log.info("Unmounted %s.", path)
            except ops.OperationError as e:
                log.warning("%s, ignoring.", e)


def _earliest(*timeouts: float | None) -> float | None:
    """The shortest of the timeouts that are set (None: wait for ever)."""
    chosen = [max(0.0, t) for t in timeouts if t is not None]
    return min(chosen) if chosen else None


def _drain_pipe(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass
