"""Carrying out a plan: the executors.

`core.plan` says what should happen to each share (an `Action`); this package makes it happen.
Every executor offers one method, `carry_out(Step) -> Outcome` (`executor.Executor`), and never
raises for a failed action: the `Outcome` says what happened, and one failure never stops the
others.

- `kernel`: mount(2)/umount2(2) here, each call in a bounded child (`system.bounded`), through
  the mountpoint opened without following symlinks; each filesystem's module is loaded once,
  before its first mount. The kernel calls themselves (`KernelCalls`) are what unit tests fake.
  It also unmounts for `vfs-agent umount` (with `--abort`, after aborting the FUSE connection).
- `systemd`: a share whose path has a vfs-agent generated .mount unit is systemd's:
  `SystemdStart` runs `systemctl start UNIT` (commands run by hand), `LeftToSystemd` leaves it
  to the unit (the daemon: the unit follows its device), but starts it for a plug systemd
  missed (`core.missed_plug`), and while systemd is not done with the unit leaves its outcome
  unsettled (`Outcome.settled`), so the daemon looks again; `OtherRootSystemd` reports a unit
  inside `--root` (the running system's manager is never asked), and `SystemdStop` runs
  `systemctl stop --job-mode=fail UNIT` for the mount of a share no longer attached (when the
  unit follows the share's device, systemd is stopping it already: one stop job, one
  unmount), leaves a share attached again meanwhile to systemd, and falls back on the kernel.
- `dry_run`: says what would be done, changes nothing.
- `verdict`: actions that change nothing (keep, ignore, absent, conflict, refuse, unresponsive).

Which executor carries out an action is decided by `route.route(step, situation)`, a pure
function of data: the action's kind, the managed unit of its path (read once at the edge, by
`commands.operations.gather_steps`), whether the root is the running system (`SysRoot.live`,
the one place that decides it), the systemd mode and dry run; its whole table is in `route`'s
docstring, and an import-linter contract keeps it free of I/O.
A command picks its executors once from its options (`apply.Executors.pick`) and hands them
to `apply.apply_plan`, which routes each step and logs each outcome (`outcome.log_outcome`,
journal fields TAG, MOUNT_PATH, ACTION).
"""
