"""Telling a plug systemd missed from everything it follows (core/missed_plug.py). The case
itself, in a guest, is in tests/guest/test_systemd.py; MISSED has the timestamps a Debian 13
guest's systemd 257 gave its units in that case."""

from __future__ import annotations

import pytest

from vfs_agent.core.missed_plug import PROPERTIES, NextStep, UnitState, next_step, parse_show

# `systemctl show --property=<PROPERTIES> -- srv-hot.mount <its device>` after a plug that came
# while the mount's stop job was waiting: the mount stopped after the device came back.
MISSED = """\
ActiveState=inactive
Job=
InactiveExitTimestampMonotonic=42124578
InactiveEnterTimestampMonotonic=52394539
ActiveEnterTimestampMonotonic=42830657

ActiveState=active
Job=
InactiveExitTimestampMonotonic=45865844
InactiveEnterTimestampMonotonic=43859019
ActiveEnterTimestampMonotonic=45865844
"""


def unit(state: str, exit_: int = 0, enter: int = 0, active: int = 0, *, job: bool = False):
    return UnitState(state, job, exit_, enter, active)


def test_the_output_of_systemctl_show_is_read_unit_by_unit():
    mount, device = parse_show(MISSED)
    assert mount == UnitState("inactive", False, 42124578, 52394539, 42830657)
    assert device == UnitState("active", False, 45865844, 43859019, 45865844)
    assert next_step(mount, device) is NextStep.START


def test_a_job_number_is_a_job_and_a_property_left_out_reads_as_none():
    [queued] = parse_show("ActiveState=active\nJob=183\n")
    assert queued == UnitState("active", True, 0, 0, 0)
    [none] = parse_show("ActiveState=inactive\nJob=0\nInactiveExitTimestampMonotonic=\n")
    assert none == UnitState("inactive", False, 0, 0, 0)


def test_the_properties_are_the_ones_read():
    shown = "\n".join(f"{name}=7" for name in PROPERTIES)
    assert parse_show(shown) == [UnitState("7", True, 7, 7, 7)]


PLUGGED_AGAIN = unit("active", 300, 200, 300)  # unplugged at 200, plugged at 300


@pytest.mark.parametrize(
    ("mount", "device", "expected"),
    [
        # unplugged and plugged again after the mount last began to start: missed
        (unit("inactive", 100, 400), PLUGGED_AGAIN, NextStep.START),
        (unit("failed", 100, 400), PLUGGED_AGAIN, NextStep.START),  # its stop killed a start
        # systemd started it after that plug: its, also when it failed (a host not answering)
        (unit("failed", 310, 400), PLUGGED_AGAIN, NextStep.LEAVE),
        (unit("inactive", 310, 400), PLUGGED_AGAIN, NextStep.LEAVE),
        # stopped by hand: the device was not unplugged since the mount started
        (unit("inactive", 100, 400), unit("active", 50, 0, 50), NextStep.LEAVE),
        # a boot's unit that began before its device unit (no wait for coldplug), then failed
        (unit("failed", 5, 30), unit("active", 9, 0, 9), NextStep.LEAVE),
        # the device is gone again, or never was (no udev rule, 9p)
        (unit("inactive", 100, 400), unit("inactive", 300, 450, 300), NextStep.LEAVE),
        (unit("inactive", 100, 400), unit("inactive"), NextStep.LEAVE),
        # systemd is not done with the mount unit: its stop job waits, or it is changing state
        (unit("active", 100, 0, 150, job=True), PLUGGED_AGAIN, NextStep.WAIT),
        (unit("inactive", 100, 400, job=True), PLUGGED_AGAIN, NextStep.WAIT),
        (unit("deactivating", 100, 0, 150), PLUGGED_AGAIN, NextStep.WAIT),
        (unit("activating", 310), PLUGGED_AGAIN, NextStep.WAIT),
        # active: systemd has it
        (unit("active", 310, 0, 320), PLUGGED_AGAIN, NextStep.LEAVE),
    ],
)
def test_next_step(mount: UnitState, device: UnitState, expected: NextStep):
    assert next_step(mount, device) is expected
