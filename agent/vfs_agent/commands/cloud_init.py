"""`vfs-agent cloud-init apply`: the `vfs_agent:` key of #cloud-config user-data becomes the
policy drop-in /etc/vfs-agent/policy.d/50-cloud-init.yaml, and its shares are mounted.

Why this shape: cloud-init has no plugin interface for third-party config keys, but it documents
cloud-config.target as the point where user-data is there for other services, and any unit may
order itself between its stages. vfs-agent-cloud-init.service runs this command after
cloud-config.service and before cloud-final.service (which runs runcmd), so the shares are
mounted when user commands run. The config comes from `cloud-init query`
(policy/cloud_config.py turns it into the drop-in's text, without touching the system;
system/cloud_init.py holds the edges: cloud-init, systemctl, the drop-in file, the log).

Decisions, so that neither a reboot nor bad user-data makes things worse:
- a valid key: the drop-in is written atomically (root, 0644) at every boot - cloud-init's
  data owns it, as cloud-init owns its netplan 50-cloud-init.yaml - and then mount-all;
- no key: a drop-in left by an earlier boot (an earlier instance, or user-data changed since)
  is removed, so the drop-in always mirrors the current user-data; then the policy files are
  applied as they are. This is the schema-clean way: cloud-init's own write_files puts a
  policy file into policy.d (its init stage runs before this unit), no key cloud-init does not
  know, so `cloud-init schema --system` stays clean and `cloud-init status --wait` exits 0;
- an invalid key: every problem is reported with the messages of `policy check` and nothing is
  changed (as for any invalid policy; a drop-in from an earlier boot stays); exit 0, boot goes on;
- cloud-init cannot be queried: reported, nothing changed, exit 0.
Exit 1 only when mount-all fails (a required share), so the unit shows the failure.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, Protocol

from vfs_agent.commands import operations as ops
from vfs_agent.commands import report
from vfs_agent.execute.outcome import Outcome
from vfs_agent.policy.cloud_config import KEY, CloudInitError, cloud_config, dropin_text
from vfs_agent.policy.compiled import compile_policy
from vfs_agent.policy.errors import PolicyError
from vfs_agent.policy.files import DROPIN_DIR, policy_files
from vfs_agent.policy.layers import CLOUD_INIT_DROPIN as DROPIN
from vfs_agent.policy.load import read_policy
from vfs_agent.system.cloud_init import (
    BootReporter,
    newer_than_generator,
    remove_dropin,
    run_query,
    run_systemctl,
    write_dropin,
)
from vfs_agent.system.tools import ToolError
from vfs_agent.systemd.units import systemd_running

# --no-block: never wait on a job from inside the boot; a daemon not (yet) running reads the
# new policy when it starts.
RELOAD_DAEMON = ["try-reload-or-restart", "--no-block", "vfs-agent.service"]

MountAll = Callable[[ops.Context], list[Outcome]]
# None on success, else why it failed, naming the command (system/tools.py's words)
Systemctl = Callable[[list[str]], str | None]


class Reporter(Protocol):
    def info(self, message: str) -> None: ...
    def error(self, message: str) -> None: ...


def _mount_all(ctx: ops.Context) -> list[Outcome]:
    return ops.mount_all(ctx, ops.executors(ctx, dry_run=False))


def apply(
    ctx: ops.Context,
    *,
    query: Callable[[], str] | None = None,
    systemctl: Systemctl | None = None,
    mount_all: MountAll = _mount_all,
    out: Reporter | None = None,
) -> int:
    """The boot-time command; the edges (cloud-init, systemctl, mounting) are injectable.
    systemctl runs by default only on the running system under systemd, never for --root."""
    out = out or BootReporter(ctx.sysroot)
    if systemctl is None:
        live = ctx.sysroot.live and systemd_running(ctx.sysroot)
        systemctl = run_systemctl if live else _no_systemctl
    try:
        config, userdata = cloud_config((query or run_query)())
    except (CloudInitError, ToolError) as e:
        out.error(f"cannot read the cloud-config: {e}; nothing was changed")
        return 0
    try:
        return _apply_config(ctx, config, userdata, systemctl, mount_all, out)
    except OSError as e:  # /etc read-only or full: the old drop-in (if any) is intact
        out.error(f"cannot update {DROPIN}: {e.strerror or e}; nothing was changed")
        return 1


def _apply_config(
    ctx: ops.Context,
    config: dict[Any, Any],
    userdata: str | None,
    systemctl: Systemctl,
    mount_all: MountAll,
    out: Reporter,
) -> int:
    if KEY not in config:
        removed = remove_dropin(ctx.sysroot, DROPIN)
        if removed:
            out.info(f"removed {DROPIN}: the cloud-config has no {KEY} key (any more)")
        return _apply_files(ctx, removed, systemctl, mount_all, out)
    text, problems = dropin_text(config[KEY], userdata)
    if text is None:
        for problem in problems:
            out.error(str(problem))
        kept = (
            f"kept {DROPIN} from an earlier boot"
            if ctx.sysroot.exists(DROPIN)
            else f"did not write {DROPIN}"
        )
        where = " (line:column of the user-data)" if any(p.line for p in problems) else ""
        out.error(
            f"invalid {KEY} key in the cloud-config user-data{where}: {len(problems)} "
            f"problem(s); {kept}; nothing was changed (see 'vfs-agent policy schema')"
        )
        return 0
    if write_dropin(ctx.sysroot, DROPIN, text):
        out.info(f"wrote {DROPIN} from the cloud-config {KEY} key")
        # The generator makes units for the new drop-in, so systemd owns these mounts (and
        # follows unplug) from this first boot on, as it will at every later boot.
        _reload(systemctl, out, ["daemon-reload"])
        changed = True
    else:
        out.info(f"{DROPIN} is up to date")
        changed = False
    code = _mount(ctx, mount_all, out)
    if changed:  # the daemon, if it runs already, holds the policy it read at start
        _reload(systemctl, out, RELOAD_DAEMON)
    return code


def _apply_files(
    ctx: ops.Context, removed: bool, systemctl: Systemctl, mount_all: MountAll, out: Reporter
) -> int:
    """No vfs_agent key: the policy files as they are, which cloud-init's write_files may have
    just written (its init stage runs before this unit). When they changed after the generator
    last ran, it reruns (daemon-reload) so systemd owns the new mounts, and the daemon rereads
    them. An invalid policy is reported, nothing is mounted, exit 0. The policy is compiled
    for the generator before that daemon-reload (best effort, like mount-all)."""
    watched = [*policy_files(ctx.sysroot, None), DROPIN_DIR]
    changed = removed or newer_than_generator(ctx.sysroot, watched)
    try:
        loaded = read_policy(ctx.sysroot)
    except PolicyError as e:
        for problem in e.problems:
            out.error(str(problem))
        out.error(f"invalid policy in {DROPIN_DIR} or its main file: no share was mounted")
        return 0
    with contextlib.suppress(OSError):
        compile_policy(ctx.sysroot, loaded)
    files = loaded.policy.files
    if not files and not removed:
        out.info(f"the cloud-config has no {KEY} key and there is no policy; nothing to do")
        return 0
    if changed:
        if files:
            out.info(f"applying the policy files: {', '.join(files)}")
        _reload(systemctl, out, ["daemon-reload"])
    code = _mount(ctx, mount_all, out) if files else 0
    if changed:
        _reload(systemctl, out, RELOAD_DAEMON)
    return code


def _mount(ctx: ops.Context, mount_all: MountAll, out: Reporter) -> int:
    try:
        outcomes = mount_all(ctx)
    except PolicyError as e:
        for problem in e.problems:
            out.error(str(problem))
        out.error("the policy is invalid: no share was mounted")
        return 1
    except (ops.OperationError, OSError) as e:
        out.error(f"mount-all failed: {e}")
        return 1
    for line in report.outcomes_text(outcomes).splitlines():
        out.info(line)
    return 1 if any(o.fatal for o in outcomes) else 0


def _reload(systemctl: Systemctl, out: Reporter, args: list[str]) -> None:
    problem = systemctl(args)
    if problem:
        out.error(f"{problem} (going on)")


def _no_systemctl(args: list[str]) -> str | None:
    return None
