"""The one place that knows which pydantic major is installed.

Debian 12 and Ubuntu 24.04 package pydantic 1.10, Debian 13 and Fedora package 2.x. The policy
models are written once, against the 1.10 API, and run on pydantic 1.10 directly and on 2.x
through its bundled `pydantic.v1` (the same 1.10 code, shipped by pydantic 2 for this purpose).
So there is one validator, one set of error types and one JSON Schema on both: the error texts
of `policy check` and the output of `policy schema` cannot drift between distributions.

Everything else imports the pydantic names it needs from here, plus the helpers that hide the
remaining API surface (`validate`, `error_details`, `json_schema`, `field_*`, `fields_set`).

Limit, for maintainers: pydantic 3 will drop `pydantic.v1`, and pydantic 2.12 does not support
`pydantic.v1` on Python 3.14. pyproject pins pydantic < 3; when a release vfs-agent supports
ships Python 3.14, this module is where a native 2.x path goes (the rest of the code only
sees the names and helpers above, and tests/policies/ plus tests/policies/schema.json say
what must stay the same).
"""

from __future__ import annotations

import copy
import enum
from typing import TYPE_CHECKING, Any, TypeVar

import pydantic as _installed

MAJOR = int(_installed.VERSION.split(".", 1)[0])

if TYPE_CHECKING or MAJOR >= 2:
    from pydantic.v1 import (
        BaseModel,
        Field,
        StrictBool,
        StrictInt,
        StrictStr,
        ValidationError,
        conint,
        root_validator,
        validator,
    )
    from pydantic.v1.errors import DictError
    from pydantic.v1.fields import SHAPE_SINGLETON
else:  # pragma: no cover - exercised by the pydantic 1.10 test run (.venv-pydantic1)
    from pydantic import (  # type: ignore[assignment, no-redef]
        BaseModel,
        Field,
        StrictBool,
        StrictInt,
        StrictStr,
        ValidationError,
        conint,
        root_validator,
        validator,
    )
    from pydantic.errors import DictError  # type: ignore[no-redef]
    from pydantic.fields import SHAPE_SINGLETON  # type: ignore[no-redef]

__all__ = [
    "MAJOR",
    "BaseModel",
    "Field",
    "StrictBool",
    "StrictInt",
    "StrictModel",
    "StrictStr",
    "ValidationError",
    "conint",
    "error_details",
    "field_description",
    "field_model",
    "field_names",
    "fields_set",
    "json_schema",
    "root_validator",
    "validate",
    "validator",
]

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """Unknown keys are errors, instances are immutable, and a nested model takes a mapping
    only (pydantic 1.10 would also turn a list of pairs, even `[]`, into one)."""

    class Config:
        extra = "forbid"
        allow_mutation = False

    @classmethod
    def validate(cls: type[M], value: Any) -> M:
        if not isinstance(value, dict | cls):
            raise DictError()
        return super().validate(value)


def validate(model: type[M], data: Any) -> M:
    """`model` built from plain data; raises ValidationError."""
    return model.parse_obj(data)


def field_names(model: type[BaseModel]) -> list[str]:
    """The model's keys in declaration order."""
    return list(model.__fields__)


def field_description(model: type[BaseModel], name: str) -> str | None:
    field = model.__fields__.get(name)
    return field.field_info.description if field is not None else None


def field_model(model: type[BaseModel], name: str) -> type[BaseModel] | None:
    """The nested model a field holds (directly, in a list or optional), if any."""
    field = model.__fields__.get(name)
    inner = field.type_ if field is not None else None
    return inner if isinstance(inner, type) and issubclass(inner, BaseModel) else None


def fields_set(instance: BaseModel) -> set[str]:
    """The keys the input actually wrote (not filled in from defaults)."""
    return set(instance.__fields_set__)


def error_details(
    model: type[BaseModel], error: ValidationError, data: Any
) -> list[dict[str, Any]]:
    """Each error as {loc, type, msg, ctx, input}. `loc` drops pydantic's `__root__` (a
    whole-model check is reported at the model itself), `input` is the value found at `loc` in
    `data` (pydantic 1.10 does not report it), and a null where a value is needed becomes the
    type error of that value (`type_error.list` for a list, ...), as for any other wrong type."""
    out = []
    for err in error.errors():
        loc = tuple(part for part in err["loc"] if part != "__root__")
        kind, ctx = err["type"], err.get("ctx", {})
        if kind == "type_error.none.not_allowed":
            kind, ctx = _type_error(model, loc)
        out.append(
            {"loc": loc, "type": kind, "msg": err["msg"], "ctx": ctx, "input": _value_at(data, loc)}
        )
    return out


# StrictBool is an int subclass in pydantic 1.10: it comes first.
_TYPE_ERRORS = {
    StrictBool: "value_error.strictbool",
    bool: "value_error.strictbool",
    str: "type_error.str",
    int: "type_error.integer",
}


def _type_error(model: type[BaseModel], loc: tuple[Any, ...]) -> tuple[str, dict[str, Any]]:
    """The error type a wrong value at `loc` gets (from the field's declared type)."""
    field = None
    item = False
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            item = True
            continue
        is_model = isinstance(current, type) and issubclass(current, BaseModel)
        field = current.__fields__.get(part) if is_model else None
        if field is None:
            return "type_error.none.not_allowed", {}
        current, item = field.type_, False
    if field is None:
        return "type_error.dict", {}
    if field.shape != SHAPE_SINGLETON and not item:
        return "type_error.list", {}
    inner = field.type_
    if isinstance(inner, type) and issubclass(inner, BaseModel):
        return "type_error.dict", {}
    if isinstance(inner, type) and issubclass(inner, enum.Enum):
        return "type_error.enum", {"enum_values": list(inner)}
    for base, kind in _TYPE_ERRORS.items():
        if isinstance(inner, type) and issubclass(inner, base):
            return kind, {}
    return "type_error.none.not_allowed", {}


def _value_at(data: Any, loc: tuple[Any, ...]) -> Any:
    for part in loc:
        if (isinstance(data, dict) and part in data) or (
            isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data)
        ):
            data = data[part]
        else:
            return None
    return data


def json_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON Schema in the shape of JSON Schema 2020-12 (and of pydantic 2's own
    output, which `policy schema` printed before): definitions under `$defs`, a field that
    takes null as `anyOf [..., {"type": "null"}]` with `default: null`, a one-value Literal as
    `const`, a plain `$ref` where pydantic 1.10 wraps it in `allOf`."""
    # A copy: pydantic caches the dict it returns, and the steps below change it.
    schema: dict[str, Any] = copy.deepcopy(model.schema(ref_template="#/$defs/{model}"))
    defs = schema.pop("definitions", {})
    models = {m.__name__: m for m in _models(model)}
    for name, node in [(model.__name__, schema), *defs.items()]:
        if name in models:
            _nullable(models[name], node)
        if node.get("description") == "An enumeration.":
            del node["description"]
    if defs:
        schema["$defs"] = defs
    result: dict[str, Any] = _tidy(schema)
    return result


def _models(model: type[BaseModel]) -> list[type[BaseModel]]:
    """The model and every model nested in it."""
    found = [model]
    for field in model.__fields__.values():
        inner = field.type_
        if isinstance(inner, type) and issubclass(inner, BaseModel) and inner not in found:
            found += _models(inner)
    return found


def _nullable(model: type[BaseModel], node: dict[str, Any]) -> None:
    for name, field in model.__fields__.items():
        prop = node.get("properties", {}).get(name)
        if prop is None or not field.allow_none or field.required:
            continue
        keep = {k: prop.pop(k) for k in ("title", "description") if k in prop}
        inner = prop.pop("allOf")[0] if len(prop.get("allOf", [])) == 1 else dict(prop)
        prop.clear()
        prop.update({"anyOf": [inner, {"type": "null"}], "default": None, **keep})


def _tidy(node: Any) -> Any:
    if isinstance(node, list):
        return [_tidy(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _tidy(value) for key, value in node.items()}
    if len(out.get("allOf", [])) == 1 and "$ref" in out["allOf"][0]:
        out["$ref"] = out.pop("allOf")[0]["$ref"]
    if len(out.get("enum", [])) == 1 and "type" in out and "items" not in out:
        out["const"] = out.pop("enum")[0]
    return out
