"""Reading policy files: YAML with positions, strict-mode file checks, pydantic validation, and
error messages of the form `file:line:col: field: what is wrong; what to write`."""

from __future__ import annotations

import difflib
import os
import stat
import typing
from dataclasses import dataclass, replace
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from vfs_agent import policy_cache
from vfs_agent.policy import FileSection, Policy, empty_policy, merge
from vfs_agent.policy_layers import SYSTEM_CREDENTIALS, LayerKind, policy_layers
from vfs_agent.policy_model import PolicyFile, to_section
from vfs_agent.sysroot import SysRoot

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class PolicyProblem:
    file: str
    line: int  # 1-based; 0 when the problem is about the file as a whole
    column: int
    field: str  # e.g. "mounts[0].path", "" for the whole file
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}" if self.line else self.file
        return (
            f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"
        )


class PolicyError(Exception):
    """One or more problems; nothing may be changed when this is raised."""

    def __init__(self, problems: list[PolicyProblem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


def load_policy(
    sysroot: SysRoot,
    explicit: str | None = None,
    *,
    save_compiled: bool = False,
    credentials_dir: str = SYSTEM_CREDENTIALS,
) -> Policy:
    """Read, check and merge the policy's layers (policy_layers.py). Raises PolicyError listing
    every problem of the files; problems of the host's layers (credential, kernel command line)
    are returned in `Policy.warnings` and those parts left out, so they never stop a boot.
    With `save_compiled`, the result is cached for the boot-time generator (policy_cache):
    the commands that act on the policy do it (mount-all, the daemon); reports do not."""
    layers = policy_layers(sysroot, explicit, credentials_dir)
    if not layers:
        return empty_policy()
    parsed: list[FileSection] = []
    problems: list[PolicyProblem] = []
    warnings: list[str] = []
    from vfs_agent.policy_host import load_host_layer  # it imports this module

    for layer in layers:
        if layer.kind is not LayerKind.FILE:
            section, ignored = load_host_layer(sysroot, layer)
            warnings += ignored
            parsed += [section] if section else []
            continue
        try:
            parsed.append(to_section(layer.name, load_file(sysroot, layer.path)))
        except PolicyError as e:
            problems += e.problems
    if problems:
        raise PolicyError(problems)
    policy = replace(merge(parsed), warnings=tuple(warnings))
    if explicit is None and save_compiled:
        policy_cache.save(sysroot, policy, layers)
    return policy


def load_file(sysroot: SysRoot, name: str, *, check_modes: bool = True) -> PolicyFile:
    host_path = sysroot.path(name)
    problems = file_mode_problems(name, host_path) if check_modes else []
    try:
        text = host_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PolicyError([PolicyProblem(name, 0, 0, "", "no such file")]) from None
    except (OSError, UnicodeDecodeError) as e:
        raise PolicyError([PolicyProblem(name, 0, 0, "", f"cannot read: {e}")]) from None
    try:
        parsed = parse_text(text, name)
    except PolicyError as e:
        problems += e.problems
        raise PolicyError(problems) from None
    if problems:
        raise PolicyError(problems)
    return parsed


def file_mode_problems(name: str, host_path: os.PathLike[str]) -> list[PolicyProblem]:
    """sshd-style StrictModes: the file and its directory must be owned by root (or by the user
    running vfs-agent) and writable by nobody else."""
    problems = []
    for what, path in (("file", host_path), ("directory", os.path.dirname(host_path))):
        try:
            st = os.stat(path)
        except OSError:
            continue
        if st.st_uid not in (0, os.geteuid()):
            problems.append(
                PolicyProblem(
                    name, 0, 0, "", f"the policy {what} must be owned by root (chown root)"
                )
            )
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            problems.append(
                PolicyProblem(
                    name, 0, 0, "", f"the policy {what} is writable by group or others (chmod go-w)"
                )
            )
    return problems


def parse_text(text: str, name: str) -> PolicyFile:
    """Parse one policy document; positions of every node are kept for error messages."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (0, 0)
        raise PolicyError(
            [PolicyProblem(name, line, col, "", f"invalid YAML: {e.problem}")]
        ) from None
    if node is None:
        raise PolicyError(
            [PolicyProblem(name, 1, 1, "", "the file is empty; it needs at least 'version: 1'")]
        )
    positions: dict[Loc, tuple[int, int]] = {}
    builder = _Builder(name, positions)
    try:
        data = builder.build(node, ())
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (0, 0)
        raise PolicyError(
            [PolicyProblem(name, line, col, "", f"invalid YAML: {e.problem}")]
        ) from None
    duplicates = builder.problems
    if not isinstance(data, dict):
        line, col = positions[()]
        message = "the policy must be a mapping with 'version: 1'"
        raise PolicyError([*duplicates, PolicyProblem(name, line, col, "", message)])
    problems = list(duplicates)  # keep going: report every problem of the file at once
    try:
        parsed = PolicyFile.model_validate(data)
    except ValidationError as e:
        problems += [_problem(err, positions, name) for err in e.errors()]
    else:
        problems += _duplicate_tags(parsed, positions, name)
    if problems:
        raise PolicyError(sorted(problems, key=lambda p: (p.line, p.column)))
    return parsed


def validate_data(data: dict[str, Any], name: str, column: int) -> PolicyFile:
    """Validate a policy built in code (not parsed from YAML, so every problem is placed at
    line 1, `column`): the kernel command line's rules get the files' checks and messages."""
    try:
        return PolicyFile.model_validate(data)
    except ValidationError as e:
        positions: dict[Loc, tuple[int, int]] = {(): (1, column)}
        raise PolicyError([_problem(err, positions, name) for err in e.errors()]) from None


def _duplicate_tags(
    parsed: PolicyFile, positions: dict[Loc, tuple[int, int]], name: str
) -> list[PolicyProblem]:
    first: dict[str, int] = {}
    problems = []
    for index, rule in enumerate(parsed.mounts):
        if rule.tag in first:
            line, col = positions[("mounts", index, "tag")]
            problems.append(
                PolicyProblem(
                    name,
                    line,
                    col,
                    f"mounts[{index}].tag",
                    f"tag {rule.tag!r} is already named by mounts[{first[rule.tag]}]; "
                    "merge the two rules into one",
                )
            )
        first.setdefault(rule.tag, index)
    return problems


MAX_NODES = 100_000  # bounds alias expansion ("billion laughs")


class _Builder:
    """Builds plain Python data from a YAML node tree, recording each node's position and
    rejecting duplicate keys (PyYAML silently keeps the last one). Merge keys (<<) work as in
    YAML: explicit keys override merged ones."""

    def __init__(
        self, name: str, positions: dict[Loc, tuple[int, int]], limit: int = MAX_NODES
    ) -> None:
        self.name = name
        self.positions = positions
        self.limit = limit
        self.problems: list[PolicyProblem] = []
        self.loader = yaml.SafeLoader(stream="")
        self.visited = 0

    def build(self, node: yaml.Node, loc: Loc) -> Any:
        self.visited += 1
        if self.visited > self.limit:
            raise PolicyError(
                [PolicyProblem(self.name, 0, 0, "", "the policy is too large (aliases?)")]
            )
        self.positions[loc] = _mark(node)
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, loc)
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*loc, i)) for i, item in enumerate(node.value)]
        return self.loader.construct_object(node, deep=True)

    def _mapping(self, node: yaml.MappingNode, loc: Loc) -> dict[str, Any]:
        own = [
            k
            for k, _ in node.value
            if not (isinstance(k, yaml.ScalarNode) and k.tag == "tag:yaml.org,2002:merge")
        ]
        own_keys = {str(self.loader.construct_object(k, deep=True)) for k in own}
        try:
            self.loader.flatten_mapping(node)
        except yaml.MarkedYAMLError as e:
            line, col = _mark(node)
            raise PolicyError(
                [
                    PolicyProblem(
                        self.name, line, col, _field(loc), f"invalid merge key: {e.problem}"
                    )
                ]
            ) from None
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = str(self.loader.construct_object(key_node, deep=True))
            merged = key_node not in own
            if key in out or (merged and key in own_keys):
                if not merged and key in out:
                    message = "duplicate key; each key may appear once"
                    self.problems.append(
                        PolicyProblem(self.name, *_mark(key_node), _field((*loc, key)), message)
                    )
                continue
            self.positions[(*loc, key, "<key>")] = _mark(key_node)
            out[key] = self.build(value_node, (*loc, key))
        return out


def node_positions(
    node: yaml.Node, name: str, limit: int = MAX_NODES
) -> dict[Loc, tuple[int, int]]:
    """(line, column) of every value in a YAML node tree by location, and of every key at
    (*location, "<key>"). Raises PolicyError past `limit` nodes (alias expansion)."""
    positions: dict[Loc, tuple[int, int]] = {}
    _Builder(name, positions, limit).build(node, ())
    return positions


def field_path(loc: Loc) -> str:
    """A location as error messages write it: mounts[0].path."""
    return _field(loc)


def _mark(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


def _problem(err: Any, positions: dict[Loc, tuple[int, int]], name: str) -> PolicyProblem:
    loc: Loc = tuple(err["loc"])
    kind = err["type"]
    if kind == "extra_forbidden":
        line, col = positions.get((*loc, "<key>"), _nearest(loc, positions))
        return PolicyProblem(name, line, col, _field(loc), _unknown_key_message(loc))
    line, col = _nearest(loc, positions)
    return PolicyProblem(name, line, col, _field(loc), _message(err, loc))


def _nearest(loc: Loc, positions: dict[Loc, tuple[int, int]]) -> tuple[int, int]:
    while loc not in positions and loc:
        loc = loc[:-1]
    return positions.get(loc, (1, 1))


def _field(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _message(err: Any, loc: Loc) -> str:
    kind = err["type"]
    given = err.get("input")
    if kind in ("greater_than_equal", "less_than_equal", "int_type", "int_parsing"):
        return f"{given!r} is not allowed: {err['msg'].lower()}; write whole seconds, e.g. 10"
    if kind == "missing":
        return f"this key is required; {_describe(loc)}"
    if kind == "literal_error" and loc == ("version",):
        return f"unsupported version {given!r}; write 'version: 1'"
    if kind == "enum":
        expected = err.get("ctx", {}).get("expected", "")
        return f"{given!r} is not allowed; write one of {expected}"
    if kind in ("bool_type", "bool_parsing"):
        return f"{given!r} is not a boolean; write true or false"
    if kind == "string_type":
        return f"expected text, got {type(given).__name__} {given!r}; quote it if needed"
    if kind == "list_type":
        return f"expected a list, got {type(given).__name__}; write [a, b] or one '- item' per line"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"expected a mapping of keys, got {type(given).__name__}; {_describe(loc)}"
    if kind == "value_error":
        return str(err["msg"]).removeprefix("Value error, ")
    return str(err["msg"])


def _model_at(loc: Loc) -> type[BaseModel] | None:
    """The pydantic model that holds the keys at `loc` (for listing allowed keys)."""
    model: Any = PolicyFile
    for part in loc:
        if isinstance(part, int):
            continue
        field = (
            model.model_fields.get(part)
            if isinstance(model, type) and issubclass(model, BaseModel)
            else None
        )
        if field is None:
            return None
        model = _unwrap(field.annotation)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _unwrap(annotation: Any) -> Any:
    for arg in (*typing.get_args(annotation), annotation):
        inner = _unwrap(arg) if typing.get_args(arg) else arg
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            return inner
    return annotation


def _describe(loc: Loc) -> str:
    model = _model_at(loc[:-1]) if loc else PolicyFile
    field = model.model_fields.get(str(loc[-1])) if model and loc else None
    if field is not None and field.description:
        return field.description
    return "see 'vfs-agent policy schema'"


def _unknown_key_message(loc: Loc) -> str:
    model = _model_at(loc[:-1])
    key = str(loc[-1])
    if model is None:
        return f"unknown key {key!r}"
    allowed = list(model.model_fields)
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"unknown key {key!r}; {hint}allowed keys here: {', '.join(allowed)}"
