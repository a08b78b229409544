"""`vfs-agent cloud-init apply`: the `vfs_agent:` key of #cloud-config user-data becomes the
policy drop-in /etc/vfs-agent/policy.d/50-cloud-init.yaml, and its shares are mounted.

Why this shape: cloud-init has no plugin interface for third-party config keys, but it documents
cloud-config.target as the point where user-data is there for other services, and any unit may
order itself between its stages. vfs-agent-cloud-init.service runs this command after
cloud-config.service and before cloud-final.service (which runs runcmd), so the shares are
mounted when user commands run. The config comes from `cloud-init query`: its
combined_cloud_config (cloud-init >= 23.3) is system config, vendor-data and user-data merged
the way cloud-init itself acts on them. (merged_system_cfg, formerly merged_cfg, holds only
/etc/cloud/cloud.cfg{,.d}.) Older cloud-init falls back to a plain #cloud-config user-data.

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
import json
import logging
import os
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Protocol

import yaml

from vfs_agent.commands import operations as ops
from vfs_agent.commands import report
from vfs_agent.execute.outcome import Outcome
from vfs_agent.policy.files import DROPIN_DIR, policy_files
from vfs_agent.policy.load import (
    YAML_DEPTH_MAX,
    PolicyError,
    PolicyProblem,
    check_depth,
    field_path,
    load_policy,
    node_positions,
    parse_text,
)
from vfs_agent.policy.pydantic_compat import BaseModel, field_names
from vfs_agent.policy.schema import DefaultsSection, PolicyFile, RuleModel
from vfs_agent.system.atomic import remove_durably
from vfs_agent.system.sysroot import SysRoot
from vfs_agent.system.tools import ToolError, run_tool, tool_output
from vfs_agent.systemd.units import systemd_running

KEY = "vfs_agent"
SOURCE = "cloud-config vfs_agent"  # the "file name" in error messages
DROPIN = f"{DROPIN_DIR}/50-cloud-init.yaml"
GENERATOR_DIR = "/run/systemd/generator"
CLOUD_INIT_LOG = "/var/log/cloud-init-output.log"
QUERY = ["cloud-init", "query", "--all"]
# --no-block: never wait on a job from inside the boot; a daemon not (yet) running reads the
# new policy when it starts.
RELOAD_DAEMON = ["try-reload-or-restart", "--no-block", "vfs-agent.service"]
HEADER = (
    "# Written at every boot by 'vfs-agent cloud-init apply' from the vfs_agent key of the\n"
    "# cloud-config user-data. Change the user-data rather than this file, or add a file of\n"
    "# your own next to it (files are read in lexical order; later files win).\n"
)

log = logging.getLogger(__name__)
MAX_NODES = 10_000  # bounds the walk over user-data nodes (aliases)
Marks = dict[str, tuple[int, int]]
MountAll = Callable[[ops.Context], list[Outcome]]
Systemctl = Callable[[list[str]], str | None]  # None on success, else why it failed


class CloudInitError(Exception):
    """cloud-init's data could not be read; nothing may be changed."""


class Reporter(Protocol):
    def info(self, message: str) -> None: ...
    def error(self, message: str) -> None: ...


class BootReporter:
    """The journal (or stderr), and cloud-init's output log, where someone debugging a first
    boot looks (`cloud-init collect-logs` takes it too)."""

    def __init__(self, sysroot: SysRoot) -> None:
        self.cloud_log = sysroot.path(CLOUD_INIT_LOG)

    def info(self, message: str) -> None:
        log.info(message)
        self._append(message)

    def error(self, message: str) -> None:
        log.error(message)
        self._append(f"error: {message}")

    def _append(self, message: str) -> None:
        if self.cloud_log.exists():
            with contextlib.suppress(OSError), self.cloud_log.open("a", encoding="utf-8") as f:
                f.write(f"vfs-agent: {message}\n")


def run_query() -> str:
    """The JSON of `cloud-init query --all` (as root it holds user-data and the merged config)."""
    try:
        return tool_output(QUERY, 300)
    except ToolError as e:
        raise CloudInitError(str(e)) from None


def run_systemctl(args: list[str]) -> str | None:
    """`systemctl ARGS`; None on success, else why it failed."""
    return run_tool(["systemctl", *args], 300)


def cloud_config(query_json: str) -> tuple[dict[Any, Any], str | None]:
    """The merged cloud-config, and the raw user-data (for error positions) if it is text."""
    try:
        data = json.loads(query_json)
    except ValueError as e:
        raise CloudInitError(f"cloud-init query printed no JSON: {e}") from None
    except RecursionError:
        raise CloudInitError("cloud-init query printed JSON nested too deeply") from None
    if not isinstance(data, dict):
        raise CloudInitError("cloud-init query printed no JSON object")
    userdata = data.get("userdata") if isinstance(data.get("userdata"), str) else None
    combined = data.get("combined_cloud_config")
    if isinstance(combined, dict):
        return combined, userdata
    if not userdata:  # old cloud-init and no user-data at all
        return {}, None
    if not _is_cloud_config(userdata):
        raise CloudInitError(
            "cloud-init gives no merged cloud-config (combined_cloud_config needs cloud-init "
            "23.3 or later) and the user-data is not a plain #cloud-config document"
        )
    try:
        check_depth(userdata, "user-data")
        loaded = yaml.safe_load(userdata)
    except PolicyError as e:
        raise CloudInitError(f"the #cloud-config {e}") from None
    except yaml.YAMLError as e:
        raise CloudInitError(f"the #cloud-config user-data is not valid YAML: {e}") from None
    return (loaded if isinstance(loaded, dict) else {}), userdata


def _is_cloud_config(text: str) -> bool:
    return text.startswith("#cloud-config")


def validate(value: Any, userdata: str | None) -> tuple[str | None, list[PolicyProblem]]:
    """The drop-in text for a valid value, else every problem, worded as `policy check` does.

    The text that would be written is what gets validated, so the drop-in always passes
    `policy check`. Positions are those in the user-data when the value comes straight from a
    plain #cloud-config document; else only the field path is shown."""
    if _depth(value) > YAML_DEPTH_MAX:
        if userdata and _is_cloud_config(userdata):
            try:
                check_depth(userdata, "user-data")
            except PolicyError as e:
                return None, e.problems
        message = f"nested deeper than {YAML_DEPTH_MAX} levels; a policy needs 4"
        return None, [PolicyProblem(SOURCE, 0, 0, "", message)]
    body = yaml.safe_dump(_ordered(value), sort_keys=False, allow_unicode=True)
    text = HEADER + body
    try:
        parse_text(text, SOURCE)
    except PolicyError as e:
        marks = _user_data_marks(value, userdata)
        return None, [_place(p, marks) for p in e.problems]
    return text, []


def _depth(value: Any) -> int:
    """How deeply lists and mappings nest in `value` (without recursion)."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            if level <= YAML_DEPTH_MAX:
                stack += [(child, level + 1) for child in children]
    return deepest


def _ordered(value: Any) -> Any:
    """Keys in the schema's order (cloud-init query sorts them), so the drop-in reads well."""
    if not isinstance(value, dict):
        return value
    top = _by_fields(value, PolicyFile)
    if isinstance(top.get("defaults"), dict):
        top["defaults"] = _by_fields(top["defaults"], DefaultsSection)
    if isinstance(top.get("mounts"), list):
        top["mounts"] = [
            _by_fields(m, RuleModel) if isinstance(m, dict) else m for m in top["mounts"]
        ]
    return top


def _by_fields(data: dict[Any, Any], model: type[BaseModel]) -> dict[Any, Any]:
    order = field_names(model)
    return dict(sorted(data.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else 99))


def _user_data_marks(value: Any, userdata: str | None) -> tuple[Marks, Marks] | None:
    """(value marks, key marks) by field path inside the user-data's vfs_agent node."""
    if not userdata or not _is_cloud_config(userdata):
        return None
    try:
        root = yaml.compose(userdata, Loader=yaml.SafeLoader)
        loaded = yaml.safe_load(userdata)
    except yaml.YAMLError:
        return None
    if not isinstance(root, yaml.MappingNode) or not isinstance(loaded, dict):
        return None
    if loaded.get(KEY) != value:  # merged from vendor-data or several parts: no positions
        return None
    node = next((v for k, v in root.value if getattr(k, "value", None) == KEY), None)
    if node is None:
        return None
    try:
        positions = node_positions(node, SOURCE, MAX_NODES)
    except PolicyError:  # too large: no positions
        return None
    marks: Marks = {}
    keys: Marks = {}
    for loc, mark in positions.items():
        if loc[-1:] == ("<key>",):
            keys[field_path(loc[:-1])] = mark
        else:
            marks[field_path(loc)] = mark
    return marks, keys


def _place(problem: PolicyProblem, marks: tuple[Marks, Marks] | None) -> PolicyProblem:
    """Move a problem from the rendered drop-in to the user-data (or to no line at all)."""
    if marks is None:
        return replace(problem, line=0, column=0)
    values, keys = marks
    if problem.message.startswith("unknown key") and problem.field in keys:
        line, column = keys[problem.field]
        return replace(problem, line=line, column=column)
    field = problem.field
    while field not in values and field:
        field = field[: max(field.rfind("."), field.rfind("["), 0)]
    line, column = values.get(field, (0, 0))
    return replace(problem, line=line, column=column)


def write_dropin(sysroot: SysRoot, text: str) -> bool:
    """Write the drop-in atomically: root-owned, 0644, in a 0755 policy.d (the policy's
    StrictModes). False when it already holds `text`. Never leaves a half-written file: the
    temporary name starts with a dot, which the policy loader skips."""
    path = sysroot.path(DROPIN)
    st = sysroot.lstat(DROPIN)
    same_owner_mode = st is not None and (st.st_mode & 0o7777, st.st_uid) == (0o644, os.geteuid())
    if same_owner_mode and sysroot.read_text(DROPIN) == text:
        return False
    for directory in (path.parent.parent, path.parent):
        if not directory.is_dir():
            directory.mkdir(mode=0o755)
            os.chmod(directory, 0o755)  # whatever the umask
    sysroot.write_atomic(DROPIN, text, mode=0o644, keep_attrs=False)
    return True


def remove_dropin(sysroot: SysRoot) -> bool:
    return remove_durably(sysroot.path(DROPIN))


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
    except CloudInitError as e:
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
        removed = remove_dropin(ctx.sysroot)
        if removed:
            out.info(f"removed {DROPIN}: the cloud-config has no {KEY} key (any more)")
        return _apply_files(ctx, removed, systemctl, mount_all, out)
    text, problems = validate(config[KEY], userdata)
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
    if write_dropin(ctx.sysroot, text):
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
    them. An invalid policy is reported, nothing is mounted, exit 0."""
    changed = removed or _newer_than_generator(ctx.sysroot)
    try:
        policy = load_policy(ctx.sysroot, save_compiled=True)
    except PolicyError as e:
        for problem in e.problems:
            out.error(str(problem))
        out.error(f"invalid policy in {DROPIN_DIR} or its main file: no share was mounted")
        return 0
    if not policy.files and not removed:
        out.info(f"the cloud-config has no {KEY} key and there is no policy; nothing to do")
        return 0
    if changed:
        if policy.files:
            out.info(f"applying the policy files: {', '.join(policy.files)}")
        _reload(systemctl, out, ["daemon-reload"])
    code = _mount(ctx, mount_all, out) if policy.files else 0
    if changed:
        _reload(systemctl, out, RELOAD_DAEMON)
    return code


def _newer_than_generator(sysroot: SysRoot) -> bool:
    """Whether a policy file (or the drop-in directory: a removed file) changed after systemd
    last ran its generators. systemd recreates GENERATOR_DIR at each run; both times come from
    the same clock in the same boot. No such directory (no systemd, --root): True."""
    try:
        generated = os.stat(sysroot.path(GENERATOR_DIR)).st_mtime
    except OSError:
        return True
    paths = [sysroot.path(name) for name in policy_files(sysroot, None)]
    paths.append(sysroot.path(DROPIN_DIR))
    times = []
    for path in paths:
        with contextlib.suppress(OSError):
            times.append(os.stat(path).st_mtime)
    return any(t >= generated for t in times)


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
        out.error(f"systemctl {' '.join(args)} failed: {problem} (going on)")


def _no_systemctl(args: list[str]) -> str | None:
    return None
