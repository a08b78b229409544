"""Which executor carries out an action: a pure function of data gathered at the edge.

The whole table (`route`):

| action                     | dry run | managed unit | live root | systemd | route         |
| -------------------------- | ------- | ------------ | --------- | ------- | ------------- |
| keep ignore absent         | any     | any          | any       | any     | VERDICT       |
| conflict refuse            | any     | any          | any       | any     | VERDICT       |
| unresponsive               | any     | any          | any       | any     | VERDICT       |
| mount, unmount-stale       | yes     | any          | any       | any     | DRY_RUN       |
| unmount-stale, share gone  | no      | yes          | yes       | any     | SYSTEMD_STOP  |
| unmount-stale              | no      | any          | any       | any     | KERNEL        |
| mount                      | no      | no           | any       | any     | KERNEL        |
| mount                      | no      | yes          | no        | any     | OTHER_ROOT    |
| mount                      | no      | yes          | yes       | start   | SYSTEMD_START |
| mount                      | no      | yes          | yes       | leave   | SYSTEMD_LEAVE |

"Managed unit": systemd runs in the root and has a vfs-agent generated .mount unit for the
action's path. "Live root": the root is the running system's `/` (`SysRoot.live`); under
`--root` a unit is that root's systemd's business, never the running manager's. The first
matching row wins.

"Share gone": the stale mount's share is no longer attached (`Action.share_gone`), not merely
dead. A virtio-fs unit bound to its share's device (where vfs-agent's udev rule is installed)
is being stopped by systemd already, or soon, which unmounts the share: asked to stop the unit
too, systemd merges both into one stop job and one unmount. Unmounted behind its back instead,
systemd's own umount(8) may find nothing mounted, and systemd before 256 then marks the unit
failed. Any other unit is stopped the same way, so systemd knows its mount is gone. A dead
mount of a share still attached goes to the kernel: its device stays, so systemd stops nothing,
and the kernel executor's unmount is lazy and bounded where umount(8) would wait for a host
daemon that may never answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from vfs_agent.core.plan import Action, ActionKind


class SystemdMode(StrEnum):
    """What to do with a share whose path has a generated .mount unit (systemd manages it)."""

    START = "start"  # systemctl start the unit (commands run by hand)
    LEAVE = "leave"  # leave it to systemd (the daemon: the unit follows its device itself)


class Route(StrEnum):
    VERDICT = "verdict"  # nothing to carry out: the plan's verdict is the outcome
    DRY_RUN = "dry-run"  # say what would be done, change nothing
    KERNEL = "kernel"  # mount(2)/umount2(2) here
    SYSTEMD_START = "systemd-start"  # systemctl start the share's unit
    SYSTEMD_STOP = "systemd-stop"  # systemctl stop the unit of a share no longer attached
    SYSTEMD_LEAVE = "systemd-leave"  # the unit follows its device (or missed a plug: start)
    OTHER_ROOT = "other-root"  # a unit inside --root: that root's systemd mounts it


CHANGING = frozenset({ActionKind.MOUNT, ActionKind.UNMOUNT_STALE})


@dataclass(frozen=True)
class Step:
    """An action with the one fact about the system its routing needs."""

    action: Action
    unit: str | None = None  # the generated .mount unit systemd has for the action's path


@dataclass(frozen=True)
class Situation:
    """What holds for a whole command run, decided once when its executors are picked."""

    live: bool  # the running system's root, not an image or a test tree
    dry_run: bool
    systemd: SystemdMode = SystemdMode.START


def route(step: Step, situation: Situation) -> Route:
    """The executor for `step` (see the table in the module docstring). No I/O."""
    kind = step.action.kind
    if kind not in CHANGING:
        return Route.VERDICT
    if situation.dry_run:
        return Route.DRY_RUN
    if kind is ActionKind.UNMOUNT_STALE:
        stop = step.unit is not None and step.action.share_gone and situation.live
        return Route.SYSTEMD_STOP if stop else Route.KERNEL
    if step.unit is None:
        return Route.KERNEL
    if not situation.live:
        return Route.OTHER_ROOT
    if situation.systemd is SystemdMode.START:
        return Route.SYSTEMD_START
    return Route.SYSTEMD_LEAVE
