"""The policy file format: pydantic models that validate one YAML document and turn it into
plain policy data (policy/types.py). The JSON Schema of `vfs-agent policy schema` comes from here.

Written against the pydantic 1.10 API, which pydantic_compat provides on 1.10 and 2.x alike."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from vfs_agent.core.escape import has_control, tag_bytes
from vfs_agent.core.mount_options import option_problem
from vfs_agent.core.paths import TAG_PLACEHOLDER, path_problem
from vfs_agent.policy.pydantic_compat import (
    Field,
    StrictBool,
    StrictModel,
    StrictStr,
    conint,
    fields_set,
    root_validator,
    validator,
)
from vfs_agent.policy.types import (
    DEFAULT_MOUNT_ROOT,
    DEFAULT_MOUNT_TIMEOUT,
    DEFAULT_OPTIONS,
    MAX_TAG_BYTES,
    DefaultsPatch,
    FileSection,
    NonEmpty,
    Rule,
    TransportChoice,
    UnknownTags,
    is_glob,
)


def _check_option(option: str) -> str:
    problem = option_problem(option)
    if problem:
        raise ValueError(f"mount option {option!r}: {problem}")
    return option


def _check_mount_root(path: str) -> str:
    if "{" in path or "}" in path:
        raise ValueError(
            f"path {path!r}: mount_root takes no placeholder; the tag is added below it"
        )
    problem = path_problem(path)
    if problem:
        raise ValueError(f"path {path!r} {problem}")
    return path


def _check_rule_path(path: str | None) -> str | None:
    # pydantic 1.10 runs a field's validators on an explicit null too.
    if path is None:
        return None
    rest = path.replace(TAG_PLACEHOLDER, "x")
    if "{" in rest or "}" in rest:
        raise ValueError(f"path {path!r}: the only placeholder is {TAG_PLACEHOLDER}")
    problem = path_problem(rest)
    if problem:
        raise ValueError(f"path {path!r} {problem}")
    return path


def _check_tag_pattern(pattern: str) -> str:
    if not pattern:
        raise ValueError("tag must not be empty")
    if has_control(pattern):
        raise ValueError("tag must not contain control characters")
    if not is_glob(pattern) and len(tag_bytes(pattern)) > MAX_TAG_BYTES:
        raise ValueError(f"tag {pattern!r} is longer than the {MAX_TAG_BYTES} bytes a tag can have")
    return pattern


def _no_bool(value: object) -> object:
    # Literal[1] would accept True and 1.0 (both == 1).
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"unsupported version {value!r}; write 'version: 1'")
    return value


if TYPE_CHECKING:
    DeviceTimeout = int
else:
    DeviceTimeout = conint(strict=True, ge=1, le=3600)


class DefaultsSection(StrictModel):
    """`defaults:` of one file; a key left out keeps the value of earlier files."""

    mount_root: StrictStr = Field(
        DEFAULT_MOUNT_ROOT, description="Tags without an explicit path go to <mount_root>/<tag>."
    )
    options: list[StrictStr] = Field(
        list(DEFAULT_OPTIONS), description="Mount options applied to every mount."
    )
    unknown: UnknownTags = Field(
        UnknownTags.MOUNT, description="What to do with tags that no rule names."
    )
    device_timeout: DeviceTimeout | None = Field(
        None,
        description="Seconds systemd waits at boot for a required share's device before giving "
        "up; unset: systemd's own DefaultDeviceTimeoutSec (90 s).",
    )
    on_nonempty: NonEmpty = Field(
        NonEmpty.WARN,
        description="A mountpoint that already holds files: warn (mount; its files are hidden "
        "while mounted) or refuse (do not mount there).",
    )
    mount_timeout: DeviceTimeout = Field(
        DEFAULT_MOUNT_TIMEOUT,
        description="Seconds the boot waits for the host to answer a virtio-fs share (its "
        "virtiofsd) before its mount unit, and what requires it, fail.",
    )

    _mount_root = validator("mount_root", allow_reuse=True)(_check_mount_root)
    _options = validator("options", each_item=True, allow_reuse=True)(_check_option)


class RuleModel(StrictModel):
    """One entry of `mounts:`."""

    tag: StrictStr = Field(description="Exact tag, or a glob such as 'data-*'.")
    path: StrictStr | None = Field(
        None, description="Absolute mount path; '{tag}' stands for the (encoded) tag."
    )
    options: list[StrictStr] = Field(
        [], description="Options added to (and overriding) the default options."
    )
    required: StrictBool = Field(
        False, description="true: failing to mount is an error; false: nofail, never blocks boot."
    )
    ignore: StrictBool = Field(False, description="true: never mount this tag.")
    transport: TransportChoice = Field(
        TransportChoice.AUTO, description="virtiofs, 9p, or auto (virtiofs when both exist)."
    )
    device_timeout: DeviceTimeout | None = Field(
        None, description="Seconds systemd waits at boot for this share's device."
    )
    on_nonempty: NonEmpty | None = Field(
        None, description="warn or refuse: a mountpoint that already holds files."
    )
    mount_timeout: DeviceTimeout | None = Field(
        None, description="Seconds the boot waits for the host to answer this virtio-fs share."
    )

    _tag = validator("tag", allow_reuse=True)(_check_tag_pattern)
    _path = validator("path", allow_reuse=True)(_check_rule_path)
    _options = validator("options", each_item=True, allow_reuse=True)(_check_option)

    @root_validator(skip_on_failure=True)
    def _consistent(cls, values: dict[str, Any]) -> dict[str, Any]:
        tag, path = values["tag"], values["path"]
        if values["ignore"] and (path or values["options"] or values["required"]):
            raise ValueError("a rule with 'ignore: true' takes no path, options or required")
        if path and is_glob(tag) and TAG_PLACEHOLDER not in path:
            raise ValueError(
                f"tag {tag!r} is a glob, so its path must contain {TAG_PLACEHOLDER} "
                "(otherwise every matching tag would go to one path)"
            )
        return values


class PolicyFile(StrictModel):
    """One policy file."""

    version: Literal[1] = Field(description="Policy format version; must be 1.")
    defaults: DefaultsSection | None = None
    mounts: list[RuleModel] = Field([])

    _version = validator("version", pre=True, allow_reuse=True)(_no_bool)


def to_section(name: str, parsed: PolicyFile) -> FileSection:
    """Plain data from a validated file; only the defaults keys the file wrote are kept."""
    written: dict[str, object] = {}
    if parsed.defaults is not None:
        for key in fields_set(parsed.defaults):
            value = getattr(parsed.defaults, key)
            written[key] = tuple(value) if isinstance(value, list) else value
    defaults = DefaultsPatch(**written)  # type: ignore[arg-type]
    rules = tuple(
        Rule(
            tag=m.tag,
            path=m.path,
            options=tuple(m.options),
            required=m.required,
            ignore=m.ignore,
            transport=m.transport,
            device_timeout=m.device_timeout,
            on_nonempty=m.on_nonempty,
            mount_timeout=m.mount_timeout,
        )
        for m in parsed.mounts
    )
    return FileSection(name, defaults, rules)
