"""Carry out a plan: route each step to its executor, log each outcome."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass

from vfs_agent.core.plan import Action
from vfs_agent.execute.dry_run import DryRun
from vfs_agent.execute.executor import Executor, Unmounter
from vfs_agent.execute.kernel import KernelCalls, KernelExecutor
from vfs_agent.execute.outcome import Outcome, log_outcome
from vfs_agent.execute.route import Route, Situation, Step, SystemdMode, route
from vfs_agent.execute.systemd import LeftToSystemd, OtherRootSystemd, SystemdStart, SystemdStop
from vfs_agent.execute.verdict import Verdict
from vfs_agent.system.discovery import listed_now
from vfs_agent.system.sysroot import SysRoot


@dataclass(frozen=True)
class Executors:
    """The executors one command run carries out its actions with, picked once from its options
    (`pick`); `route` chooses among them for each action."""

    situation: Situation
    by_route: Mapping[Route, Executor]
    unmounter: Unmounter  # for `vfs-agent umount`
    kernel: KernelExecutor
    left: LeftToSystemd  # remembers, plan after plan, since when a share has waited for systemd

    @classmethod
    def pick(
        cls,
        sysroot: SysRoot,
        *,
        dry_run: bool,
        systemd: SystemdMode = SystemdMode.START,
        kernel: KernelCalls | None = None,
    ) -> Executors:
        """`kernel`: the kernel calls to make (tests pass a fake); the real ones by default."""
        situation = Situation(live=sysroot.live, dry_run=dry_run, systemd=systemd)
        dry, here, left = DryRun(), KernelExecutor(sysroot, kernel), LeftToSystemd()
        by_route: dict[Route, Executor] = {
            Route.VERDICT: Verdict(),
            Route.DRY_RUN: dry,
            Route.KERNEL: here,
            Route.SYSTEMD_START: SystemdStart(),
            Route.SYSTEMD_STOP: SystemdStop(
                fallback=here, attached=functools.partial(_listed, sysroot)
            ),
            Route.SYSTEMD_LEAVE: left,
            Route.OTHER_ROOT: OtherRootSystemd(sysroot.root),
        }
        return cls(situation, by_route, dry if dry_run else here, here, left)

    @property
    def dry_run(self) -> bool:
        return self.situation.dry_run

    def executor(self, step: Step) -> Executor:
        return self.by_route[route(step, self.situation)]


def _listed(sysroot: SysRoot, action: Action) -> bool:
    assert action.transport is not None
    return listed_now(sysroot, action.transport, action.tag)


def apply_plan(steps: list[Step], executors: Executors) -> list[Outcome]:
    """Carry out every step in order, each by the executor its route names; one failure never
    stops the others."""
    executors.kernel.begin_plan()
    executors.left.begin_plan()
    outcomes = []
    for step in steps:
        outcome = executors.executor(step).carry_out(step)
        log_outcome(outcome)
        outcomes.append(outcome)
    return outcomes
