"""YAML read with the position of every node, so each problem can be placed at its line.

PyYAML's own loader forgets positions and silently keeps the last of two equal keys. Here a
document is composed into nodes, nested no deeper than YAML_DEPTH_MAX (checked on the event
stream, before the composer's recursion could overflow), and built into plain Python data while
recording (line, column) by location: ("mounts", 0, "path") for a value, (..., "<key>") for the
key that names it. Duplicate keys are problems; merge keys (<<) work as in YAML. No pydantic and
no policy rules here: policy/document.py validates what this returns.
"""

from __future__ import annotations

from typing import Any

import yaml

from vfs_agent.policy.errors import PolicyError, PolicyProblem

YAML_DEPTH_MAX = 64  # nesting levels; PyYAML's composer recurses once per level
MAX_NODES = 100_000  # bounds alias expansion ("billion laughs")

Loc = tuple[str | int, ...]
Positions = dict[Loc, tuple[int, int]]


def compose(text: str, name: str) -> yaml.Node | None:
    """The node tree of one YAML document (None for an empty one); PolicyError, placed at the
    line, for a control character, invalid YAML or nesting deeper than YAML_DEPTH_MAX."""
    try:
        check_depth(text, name)
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.reader.ReaderError as e:
        line, col = text_position(text, e.position)
        char = chr(e.character) if isinstance(e.character, int) else str(e.character)
        message = f"invalid YAML: character {char!a} is not allowed (control character); remove it"
        raise PolicyError([PolicyProblem(name, line, col, "", message)]) from None
    except yaml.MarkedYAMLError as e:
        raise PolicyError([_yaml_problem(e.problem_mark, e, name)]) from None


def build(node: yaml.Node, name: str) -> tuple[Any, Positions, list[PolicyProblem]]:
    """Plain data from a node tree, the position of every value and key, and the duplicate
    keys found (reported, not fatal: the caller goes on to report every problem at once)."""
    positions: Positions = {}
    builder = _Builder(name, positions)
    try:
        data = builder.build(node, ())
    except yaml.MarkedYAMLError as e:
        raise PolicyError([_yaml_problem(e.problem_mark or e.context_mark, e, name)]) from None
    return data, positions, builder.problems


def node_positions(node: yaml.Node, name: str, limit: int = MAX_NODES) -> Positions:
    """(line, column) of every value in a YAML node tree by location, and of every key at
    (*location, "<key>"). Raises PolicyError past `limit` nodes (alias expansion)."""
    positions: Positions = {}
    _Builder(name, positions, limit).build(node, ())
    return positions


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


def field_path(loc: Loc) -> str:
    """A location as error messages write it: mounts[0].path."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def nearest(loc: Loc, positions: Positions) -> tuple[int, int]:
    """The position of `loc`, or of its closest enclosing node that has one."""
    while loc not in positions and loc:
        loc = loc[:-1]
    return positions.get(loc, (1, 1))


def text_position(text: str, offset: int) -> tuple[int, int]:
    """1-based line and column of a character offset."""
    line = text.count("\n", 0, offset) + 1
    return line, offset - (text.rfind("\n", 0, offset) + 1) + 1


def _yaml_problem(mark: yaml.Mark | None, e: yaml.MarkedYAMLError, name: str) -> PolicyProblem:
    line, col = (mark.line + 1, mark.column + 1) if mark else (0, 0)
    return PolicyProblem(name, line, col, "", f"invalid YAML: {e.problem}")


def _mark(node: yaml.Node | yaml.Event) -> tuple[int, int]:
    mark = node.start_mark
    return (mark.line + 1, mark.column + 1) if mark else (1, 1)


class _Builder:
    """Builds plain Python data from a YAML node tree, recording each node's position and
    rejecting duplicate keys (PyYAML silently keeps the last one). Merge keys (<<) work as in
    YAML: explicit keys override merged ones."""

    def __init__(self, name: str, positions: Positions, limit: int = MAX_NODES) -> None:
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
            message = f"invalid merge key: {e.problem}"
            raise PolicyError(
                [PolicyProblem(self.name, line, col, field_path(loc), message)]
            ) from None
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = str(self.loader.construct_object(key_node, deep=True))
            merged = key_node not in own
            if key in out or (merged and key in own_keys):
                if not merged and key in out:
                    message = "duplicate key; each key may appear once"
                    self.problems.append(
                        PolicyProblem(self.name, *_mark(key_node), field_path((*loc, key)), message)
                    )
                continue
            self.positions[(*loc, key, "<key>")] = _mark(key_node)
            out[key] = self.build(value_node, (*loc, key))
        return out
