"""Reading policy files: YAML with positions, strict-mode file checks, pydantic validation, and
error messages of the form `file:line:col: field: what is wrong; what to write`."""

from __future__ import annotations

import difflib
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from vfs_agent.core.escape import has_control
from vfs_agent.policy import compiled as policy_cache
from vfs_agent.policy.errors import PolicyError as PolicyError  # re-exported
from vfs_agent.policy.errors import PolicyProblem as PolicyProblem
from vfs_agent.policy.files import POLICY_MAX
from vfs_agent.policy.layers import SYSTEM_CREDENTIALS, LayerKind, policy_layers
from vfs_agent.policy.pydantic_compat import (
    BaseModel,
    ValidationError,
    error_details,
    field_description,
    field_model,
    field_names,
    validate,
)
from vfs_agent.policy.schema import PolicyFile, to_section
from vfs_agent.policy.types import FileSection, Policy, empty_policy, merge
from vfs_agent.system.safe_io import read_regular
from vfs_agent.system.strict_modes import mode_problems
from vfs_agent.system.sysroot import SysRoot

YAML_DEPTH_MAX = 64  # nesting levels; PyYAML's composer recurses once per level

Loc = tuple[str | int, ...]


def load_policy(
    sysroot: SysRoot,
    explicit: str | None = None,
    *,
    save_compiled: bool = False,
    credentials_dir: str = SYSTEM_CREDENTIALS,
) -> Policy:
    """Read, check and merge the policy's layers (policy/layers.py). Raises PolicyError listing
    every problem of the files; problems of the host's layers (credential, kernel command line)
    are returned in `Policy.warnings` and those parts left out, so they never stop a boot.
    With `save_compiled`, the result is cached for the boot-time generator (policy_cache):
    the commands that act on the policy do it (mount-all, the daemon); reports do not."""
    sysroot, explicit = policy_location(sysroot, explicit)
    layers = policy_layers(sysroot, explicit, credentials_dir)
    if not layers:
        return empty_policy()
    parsed: list[FileSection] = []
    problems: list[PolicyProblem] = []
    warnings: list[str] = []
    from vfs_agent.policy.host import load_host_layer  # it imports this module

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


def policy_location(sysroot: SysRoot, explicit: str | None) -> tuple[SysRoot, str | None]:
    """Where `--policy PATH` is read: a relative PATH names a file at hand (from the current
    directory, never inside --root); an absolute one is inside the root, like the default
    files (as `systemd-tmpfiles --root` reads its configuration)."""
    if explicit is not None and not explicit.startswith("/"):
        return SysRoot(Path("/")), os.path.abspath(explicit)
    return sysroot, explicit


def file_positions(sysroot: SysRoot, name: str) -> dict[Loc, tuple[int, int]]:
    """(line, column) of every value of a policy file that loads (see node_positions)."""
    text = read_regular(sysroot.path(name), POLICY_MAX).decode("utf-8")
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    return node_positions(node, name) if node is not None else {}


def load_file(sysroot: SysRoot, name: str, *, check_modes: bool = True) -> PolicyFile:
    host_path = sysroot.path(name)
    tried = "" if str(host_path) == name else f" ({host_path})"
    if has_control(name):
        shown = ascii(name)[1:-1]
        message = "the file name contains a control character; rename the file"
        raise PolicyError([PolicyProblem(shown, 0, 0, "", message)])
    problems = file_mode_problems(name, host_path) if check_modes else []
    try:
        raw = read_regular(host_path, POLICY_MAX)
    except FileNotFoundError:
        raise PolicyError([PolicyProblem(name, 0, 0, "", f"no such file{tried}")]) from None
    except OSError as e:
        why = e.strerror or str(e)
        raise PolicyError([PolicyProblem(name, 0, 0, "", f"cannot read{tried}: {why}")]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        column = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        message = f"byte 0x{raw[e.start]:02x} is not UTF-8; save the file as UTF-8"
        raise PolicyError([PolicyProblem(name, line, column, "", message)]) from None
    try:
        parsed = parse_text(text, name)
    except PolicyError as e:
        problems += e.problems
        raise PolicyError(problems) from None
    if problems:
        raise PolicyError(problems)
    return parsed


def file_mode_problems(name: str, host_path: os.PathLike[str]) -> list[PolicyProblem]:
    """sshd-style StrictModes (system/strict_modes.py) for a policy file and its directory."""
    return [
        PolicyProblem(name, 0, 0, "", problem.format("policy"))
        for problem in mode_problems(host_path)
    ]


def parse_text(text: str, name: str) -> PolicyFile:
    """Parse one policy document; positions of every node are kept for error messages."""
    try:
        check_depth(text, name)
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.reader.ReaderError as e:
        line, col = _text_position(text, e.position)
        char = chr(e.character) if isinstance(e.character, int) else str(e.character)
        what = f"character {char!a}"
        message = f"invalid YAML: {what} is not allowed (control character); remove it"
        raise PolicyError([PolicyProblem(name, line, col, "", message)]) from None
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
        parsed = validate(PolicyFile, data)
    except ValidationError as e:
        problems += [_problem(err, positions, name) for err in error_details(PolicyFile, e, data)]
    else:
        problems += _duplicate_tags(parsed, positions, name)
    if problems:
        raise PolicyError(sorted(problems, key=lambda p: (p.line, p.column)))
    return parsed


def check_depth(text: str, name: str) -> None:
    """Refuse nesting deeper than YAML_DEPTH_MAX at its position, before the composer's
    recursion turns it into a RecursionError. The event parser itself does not recurse."""
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > YAML_DEPTH_MAX:
                line, col = _mark(event)
                message = f"nested deeper than {YAML_DEPTH_MAX} levels; a policy needs 4"
                raise PolicyError([PolicyProblem(name, line, col, "", message)])
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def _text_position(text: str, offset: int) -> tuple[int, int]:
    """1-based line and column of a character offset."""
    line = text.count("\n", 0, offset) + 1
    return line, offset - (text.rfind("\n", 0, offset) + 1) + 1


def validate_data(data: dict[str, Any], name: str, column: int) -> PolicyFile:
    """Validate a policy built in code (not parsed from YAML, so every problem is placed at
    line 1, `column`): the kernel command line's rules get the files' checks and messages."""
    try:
        return validate(PolicyFile, data)
    except ValidationError as e:
        positions: dict[Loc, tuple[int, int]] = {(): (1, column)}
        details = error_details(PolicyFile, e, data)
        raise PolicyError([_problem(err, positions, name) for err in details]) from None


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


def _mark(node: yaml.Node | yaml.Event) -> tuple[int, int]:
    mark = node.start_mark
    return (mark.line + 1, mark.column + 1) if mark else (1, 1)


def _problem(
    err: dict[str, Any], positions: dict[Loc, tuple[int, int]], name: str
) -> PolicyProblem:
    loc: Loc = err["loc"]
    if err["type"] == "value_error.extra":
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


def _message(err: dict[str, Any], loc: Loc) -> str:
    """What is wrong and what to write, worded by vfs-agent (not pydantic) from the error's
    type and context, so the text is the same whatever pydantic prints."""
    kind = err["type"]
    given = err["input"]
    ctx = err["ctx"]
    seconds = "write whole seconds, e.g. 10"
    bounds = {"value_error.number.not_ge": "greater", "value_error.number.not_le": "less"}
    if kind in bounds:
        limit = f"{bounds[kind]} than or equal to {ctx['limit_value']}"
        return f"{given!r} is not allowed: input should be {limit}; {seconds}"
    if kind == "type_error.integer":
        return f"{given!r} is not allowed: input should be a valid integer; {seconds}"
    if kind == "value_error.missing":
        return f"this key is required; {_describe(loc)}"
    if kind == "value_error.const" and loc == ("version",):
        return f"unsupported version {given!r}; write 'version: 1'"
    if kind == "type_error.enum":
        expected = [f"'{v.value}'" for v in ctx.get("enum_values", [])]
        choices = (
            " or ".join(expected)
            if len(expected) < 3
            else (f"{', '.join(expected[:-1])} or {expected[-1]}")
        )
        return f"{given!r} is not allowed; write one of {choices}"
    if kind in ("value_error.strictbool", "type_error.bool"):
        return f"{given!r} is not a boolean; write true or false"
    if kind == "type_error.str":
        return f"expected text, got {type(given).__name__} {given!r}; quote it if needed"
    if kind == "type_error.list":
        return f"expected a list, got {type(given).__name__}; write [a, b] or one '- item' per line"
    if kind == "type_error.dict":
        return f"expected a mapping of keys, got {type(given).__name__}; {_describe(loc)}"
    return str(err["msg"])


def _model_at(loc: Loc) -> type[BaseModel] | None:
    """The pydantic model that holds the keys at `loc` (for listing allowed keys)."""
    model: type[BaseModel] | None = PolicyFile
    for part in loc:
        if isinstance(part, int):
            continue
        if model is None:
            return None
        model = field_model(model, part)
    return model


def _describe(loc: Loc) -> str:
    model = _model_at(loc[:-1]) if loc else PolicyFile
    description = field_description(model, str(loc[-1])) if model and loc else None
    return description or "see 'vfs-agent policy schema'"


def _unknown_key_message(loc: Loc) -> str:
    model = _model_at(loc[:-1])
    key = str(loc[-1])
    if model is None:
        return f"unknown key {key!r}"
    allowed = field_names(model)
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"unknown key {key!r}; {hint}allowed keys here: {', '.join(allowed)}"
