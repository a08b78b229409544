"""The routing table (execute/route.py), every combination of its inputs, against the table
written out here row by row (first matching row wins, None matches anything)."""

from __future__ import annotations

import itertools

import pytest

from vfs_agent.core.plan import Action, ActionKind
from vfs_agent.core.transport import Transport
from vfs_agent.execute.route import Route, Situation, Step, SystemdMode, route

K = ActionKind
REPORTED = {K.KEEP, K.IGNORE, K.ABSENT, K.CONFLICT, K.REFUSE, K.UNRESPONSIVE, K.HELD}
Row = tuple[
    set[ActionKind], bool | None, bool | None, bool | None, SystemdMode | None, bool | None, Route
]
# (kinds, dry run, has a managed unit, live root, systemd mode, share gone) -> route
TABLE: list[Row] = [
    (REPORTED, None, None, None, None, None, Route.VERDICT),
    ({K.MOUNT, K.UNMOUNT_STALE}, True, None, None, None, None, Route.DRY_RUN),
    ({K.UNMOUNT_STALE}, False, True, True, None, True, Route.SYSTEMD_STOP),
    ({K.UNMOUNT_STALE}, False, None, None, None, None, Route.KERNEL),
    ({K.MOUNT}, False, False, None, None, None, Route.KERNEL),
    ({K.MOUNT}, False, True, False, None, None, Route.OTHER_ROOT),
    ({K.MOUNT}, False, True, True, SystemdMode.START, None, Route.SYSTEMD_START),
    ({K.MOUNT}, False, True, True, SystemdMode.LEAVE, None, Route.SYSTEMD_LEAVE),
]
FLAGS = (False, True)
COMBINATIONS = list(itertools.product(ActionKind, FLAGS, FLAGS, FLAGS, SystemdMode, FLAGS))


def expected(
    kind: ActionKind, dry: bool, unit: bool, live: bool, mode: SystemdMode, gone: bool
) -> Route:
    for kinds, t_dry, t_unit, t_live, t_mode, t_gone, result in TABLE:
        if (
            kind in kinds
            and t_dry in (None, dry)
            and t_unit in (None, unit)
            and t_live in (None, live)
            and t_mode in (None, mode)
            and t_gone in (None, gone)
        ):
            return result
    raise AssertionError(f"the table has no row for {kind, dry, unit, live, mode, gone}")


def test_the_table_covers_every_action_kind():
    assert {k for row in TABLE for k in row[0]} == set(ActionKind)


@pytest.mark.parametrize(("kind", "dry", "unit", "live", "mode", "gone"), COMBINATIONS)
def test_route(kind: ActionKind, dry: bool, unit: bool, live: bool, mode: SystemdMode, gone: bool):
    action = Action(
        kind=kind,
        tag="t",
        reason="why",
        path="/mnt/t",
        transport=Transport.VIRTIOFS,
        share_gone=gone,
    )
    step = Step(action, "mnt-t.mount" if unit else None)
    situation = Situation(live=live, dry_run=dry, systemd=mode)
    assert route(step, situation) is expected(kind, dry, unit, live, mode, gone)


def test_every_route_is_reachable():
    assert {expected(*c) for c in COMBINATIONS} == set(Route)
