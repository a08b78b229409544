"""pydantic's validation errors worded by vfs-agent: `field: what is wrong; what to write`,
placed at the line of the value (or, for an unknown key, of the key). The text comes from the
error's type and context, never from pydantic's own message, so it is the same under pydantic
1.10 and 2 (policy/pydantic_compat.py hands over the errors in one shape)."""

from __future__ import annotations

import difflib
from typing import Any

from vfs_agent.policy.errors import PolicyProblem
from vfs_agent.policy.pydantic_compat import (
    BaseModel,
    field_description,
    field_model,
    field_names,
)
from vfs_agent.policy.schema import PolicyFile
from vfs_agent.policy.yaml_positions import Loc, Positions, field_path, nearest


def problem_at(err: dict[str, Any], positions: Positions, name: str) -> PolicyProblem:
    """One validation error (pydantic_compat.error_details) as a problem of file `name`."""
    loc: Loc = err["loc"]
    if err["type"] == "value_error.extra":
        line, col = positions.get((*loc, "<key>"), nearest(loc, positions))
        return PolicyProblem(name, line, col, field_path(loc), _unknown_key_message(loc))
    line, col = nearest(loc, positions)
    return PolicyProblem(name, line, col, field_path(loc), _message(err, loc))


def _message(err: dict[str, Any], loc: Loc) -> str:
    """What is wrong and what to write, from the error's type and context."""
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
