"""cloud-init's user-data as a policy layer, computed without touching the system: the answer
of `cloud-init query --all` -> the merged cloud-config -> the text of the policy drop-in
(policy/layers.py: CLOUD_INIT_DROPIN) for its `vfs_agent` key, or every problem of that key
worded as `vfs-agent policy check` words it and placed at its line in the user-data.

The config is `combined_cloud_config` (cloud-init >= 23.3): system config, vendor-data and
user-data merged the way cloud-init itself acts on them. (merged_system_cfg, formerly
merged_cfg, holds only /etc/cloud/cloud.cfg{,.d}.) Older cloud-init falls back to a plain
#cloud-config user-data. The drop-in's keys follow the schema's order (cloud-init query sorts
them), and the text that would be written is the text validated, so the drop-in always passes
`policy check`."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import yaml

from vfs_agent.policy.document import parse_text
from vfs_agent.policy.errors import PolicyError, PolicyProblem
from vfs_agent.policy.pydantic_compat import BaseModel, field_names
from vfs_agent.policy.schema import DefaultsSection, PolicyFile, RuleModel
from vfs_agent.policy.yaml_positions import YAML_DEPTH_MAX, check_depth, field_path, node_positions

KEY = "vfs_agent"
SOURCE = "cloud-config vfs_agent"  # the "file name" in error messages
HEADER = (
    "# Written at every boot by 'vfs-agent cloud-init apply' from the vfs_agent key of the\n"
    "# cloud-config user-data. Change the user-data rather than this file, or add a file of\n"
    "# your own next to it (files are read in lexical order; later files win).\n"
)
MAX_NODES = 10_000  # bounds the walk over user-data nodes (aliases)
Marks = dict[str, tuple[int, int]]  # field path -> (line, column) in the user-data


class CloudInitError(Exception):
    """cloud-init's data could not be read; nothing may be changed."""


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
    if not is_cloud_config(userdata):
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


def is_cloud_config(text: str) -> bool:
    return text.startswith("#cloud-config")


def dropin_text(value: Any, userdata: str | None) -> tuple[str | None, list[PolicyProblem]]:
    """The drop-in text for a valid `vfs_agent` value, else every problem, worded as `policy
    check` does. Positions are those in the user-data when the value comes straight from a
    plain #cloud-config document; else only the field path is shown (line 0)."""
    if nesting_depth(value) > YAML_DEPTH_MAX:
        if userdata and is_cloud_config(userdata):
            try:
                check_depth(userdata, "user-data")
            except PolicyError as e:
                return None, e.problems
        message = f"nested deeper than {YAML_DEPTH_MAX} levels; a policy needs 4"
        return None, [PolicyProblem(SOURCE, 0, 0, "", message)]
    body = yaml.safe_dump(schema_ordered(value), sort_keys=False, allow_unicode=True)
    text = HEADER + body
    try:
        parse_text(text, SOURCE)
    except PolicyError as e:
        marks = user_data_marks(value, userdata)
        return None, [place(p, marks) for p in e.problems]
    return text, []


def nesting_depth(value: Any) -> int:
    """How deeply lists and mappings nest in `value` (without recursion); counting stops a
    level past YAML_DEPTH_MAX."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            if level <= YAML_DEPTH_MAX:
                children = item.values() if isinstance(item, dict) else item
                stack += [(child, level + 1) for child in children]
    return deepest


def schema_ordered(value: Any) -> Any:
    """Keys in the schema's order (cloud-init query sorts them), so the drop-in reads well;
    keys the schema does not know go last, in their order (validation then names them)."""
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


def user_data_marks(value: Any, userdata: str | None) -> tuple[Marks, Marks] | None:
    """(value marks, key marks) by field path inside the user-data's vfs_agent node; None
    when `value` is not exactly what that plain #cloud-config document holds (merged from
    vendor-data or several parts) or the document is too large."""
    if not userdata or not is_cloud_config(userdata):
        return None
    try:
        root = yaml.compose(userdata, Loader=yaml.SafeLoader)
        loaded = yaml.safe_load(userdata)
    except yaml.YAMLError:
        return None
    if not isinstance(root, yaml.MappingNode) or not isinstance(loaded, dict):
        return None
    if loaded.get(KEY) != value:
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


def place(problem: PolicyProblem, marks: tuple[Marks, Marks] | None) -> PolicyProblem:
    """Move a problem from the rendered drop-in to the user-data (or to no line at all): an
    unknown key to the key, anything else to its value or the nearest enclosing one."""
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
