"""Did systemd miss a share's plug? Pure: what `systemctl show` says about a share's mount unit
and the device unit it follows in, what the daemon does with that mount unit out.

systemd starts a mount unit when the device it follows appears (`<device>.wants/`), but only
if the mount unit is not active at that moment (its unit.c, `retroactively_start_dependencies`).
So when the host plugs a share again while the unit's previous mount is still being stopped
(its stop job waits for the services that use the mount, or umount(8) runs), systemd starts
nothing; the stop then ends, and the share stays attached and unmounted until its next plug.

`next_step` tells that apart from everything systemd does see:
- a job queued for the mount unit, or the unit changing state: systemd is not done with it,
  look again (`WAIT`);
- the unit inactive, and its device unplugged and plugged again since the unit last began to
  start: that plug was missed (`START`);
- anything else is systemd's (`LEAVE`): a unit started since the plug, also when it failed
  (its host may not answer, and a second start would only wait again); a unit an
  administrator stopped (its device was not plugged since); a unit with no device.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class NextStep(StrEnum):
    LEAVE = "leave"  # systemd has it: nothing to do
    WAIT = "wait"  # systemd is not done with the unit: look again later
    START = "start"  # systemd missed the share's plug: start the unit


# What next_step reads, in the form `systemctl show --property=` takes.
PROPERTIES = (
    "ActiveState",
    "Job",
    "InactiveExitTimestampMonotonic",
    "InactiveEnterTimestampMonotonic",
    "ActiveEnterTimestampMonotonic",
)
_SETTLED = frozenset({"active", "inactive", "failed"})


@dataclass(frozen=True)
class UnitState:
    """One unit as systemd reports it; timestamps in microseconds of CLOCK_MONOTONIC, 0 for
    never."""

    active_state: str
    job: bool  # a job is queued for the unit
    inactive_exit: int  # when the unit last began to start
    inactive_enter: int  # when it last became inactive
    active_enter: int  # when it last became active


def parse_show(text: str) -> list[UnitState]:
    """The units of `systemctl show --property=<PROPERTIES> UNIT...` output, in order: one
    block of NAME=VALUE lines per unit, blocks separated by an empty line. A property systemd
    leaves out (no job, an old systemd) reads as empty, or 0."""
    units = []
    for block in text.strip("\n").split("\n\n"):
        values = dict(line.partition("=")[::2] for line in block.splitlines())
        units.append(
            UnitState(
                active_state=values.get("ActiveState", ""),
                job=values.get("Job", "") not in ("", "0"),
                inactive_exit=_stamp(values, "InactiveExitTimestampMonotonic"),
                inactive_enter=_stamp(values, "InactiveEnterTimestampMonotonic"),
                active_enter=_stamp(values, "ActiveEnterTimestampMonotonic"),
            )
        )
    return units


def _stamp(values: dict[str, str], name: str) -> int:
    value = values.get(name, "")
    return int(value) if value.isdigit() else 0


def next_step(mount: UnitState, device: UnitState) -> NextStep:
    """What to do with the mount unit of a share that is attached and not mounted (see the
    module docstring)."""
    if mount.job or mount.active_state not in _SETTLED:
        return NextStep.WAIT
    if mount.active_state == "active":
        return NextStep.LEAVE
    replugged = (
        device.active_state == "active"
        and mount.inactive_exit < device.inactive_enter <= device.active_enter
    )
    return NextStep.START if replugged else NextStep.LEAVE
