"""The policy: what the YAML files may say (pydantic models) and the merged result.

Merge rule (documented in the README): files are read in order — the main policy file, then
policy.d/*.yaml in lexical order. `defaults` merge key by key, a later file overriding an earlier
one. Rules are matched last file first and, within one file, top to bottom; the first rule whose
tag pattern matches decides. So a drop-in can override the image's policy for a tag.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, model_validator

from vfs_agent.escape import tag_bytes
from vfs_agent.mount_options import merge_options, option_problem
from vfs_agent.paths import TAG_PLACEHOLDER, path_problem

MAX_TAG_BYTES = 36
GLOB_CHARS = frozenset("*?[")
DEFAULT_MOUNT_ROOT = "/mnt/virtiofs"
DEFAULT_OPTIONS = ("nosuid", "nodev")


class UnknownTags(StrEnum):
    IGNORE = "ignore"
    MOUNT = "mount"


class TransportChoice(StrEnum):
    AUTO = "auto"
    VIRTIOFS = "virtiofs"
    NINEP = "9p"


def _check_option(option: str) -> str:
    problem = option_problem(option)
    if problem:
        raise ValueError(f"mount option {option!r}: {problem}")
    return option


def _check_mount_root(path: str) -> str:
    problem = path_problem(path)
    if problem:
        raise ValueError(f"path {path!r} {problem}")
    return path


def _check_rule_path(path: str) -> str:
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
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in pattern):
        raise ValueError("tag must not contain control characters")
    if not is_glob(pattern) and len(tag_bytes(pattern)) > MAX_TAG_BYTES:
        raise ValueError(f"tag {pattern!r} is longer than the {MAX_TAG_BYTES} bytes a tag can have")
    return pattern


MountOption = Annotated[str, AfterValidator(_check_option)]
TagPattern = Annotated[str, AfterValidator(_check_tag_pattern)]
RulePath = Annotated[str, AfterValidator(_check_rule_path)]
MountRoot = Annotated[str, AfterValidator(_check_mount_root)]

_STRICT = ConfigDict(extra="forbid", frozen=True)


class DefaultsSection(BaseModel):
    """`defaults:` of one file; a key left out keeps the value of earlier files."""

    model_config = _STRICT

    mount_root: MountRoot = Field(
        DEFAULT_MOUNT_ROOT, description="Tags without an explicit path go to <mount_root>/<tag>."
    )
    options: list[MountOption] = Field(
        list(DEFAULT_OPTIONS), description="Mount options applied to every mount."
    )
    unknown: UnknownTags = Field(
        UnknownTags.IGNORE, description="What to do with tags that no rule names."
    )


class Rule(BaseModel):
    """One entry of `mounts:`."""

    model_config = _STRICT

    tag: TagPattern = Field(description="Exact tag, or a glob such as 'data-*'.")
    path: RulePath | None = Field(
        None, description="Absolute mount path; '{tag}' stands for the (encoded) tag."
    )
    options: list[MountOption] = Field(
        [], description="Options added to (and overriding) the default options."
    )
    required: StrictBool = Field(
        False, description="true: failing to mount is an error; false: nofail, never blocks boot."
    )
    ignore: StrictBool = Field(False, description="true: never mount this tag.")
    transport: TransportChoice = Field(
        TransportChoice.AUTO, description="virtiofs, 9p, or auto (virtiofs when both exist)."
    )

    @model_validator(mode="after")
    def _consistent(self) -> Rule:
        if self.ignore and (self.path or self.options or self.required):
            raise ValueError("a rule with 'ignore: true' takes no path, options or required")
        if self.path and is_glob(self.tag) and TAG_PLACEHOLDER not in self.path:
            raise ValueError(
                f"tag {self.tag!r} is a glob, so its path must contain {TAG_PLACEHOLDER} "
                "(otherwise every matching tag would go to one path)"
            )
        return self


class PolicyFile(BaseModel):
    """One policy file."""

    model_config = _STRICT

    version: Literal[1] = Field(description="Policy format version; must be 1.")
    defaults: DefaultsSection | None = None
    mounts: list[Rule] = []


def is_glob(pattern: str) -> bool:
    return any(c in GLOB_CHARS for c in pattern)


@dataclass(frozen=True)
class RuleRef:
    """A rule and where it was written, so every decision can say why."""

    rule: Rule
    file: str
    index: int  # 0-based position in that file's `mounts:`

    def describe(self) -> str:
        return f"rule {self.index + 1} ({self.rule.tag!r}) in {self.file}"


@dataclass(frozen=True)
class Defaults:
    mount_root: str = DEFAULT_MOUNT_ROOT
    options: tuple[str, ...] = DEFAULT_OPTIONS
    unknown: UnknownTags = UnknownTags.IGNORE


@dataclass(frozen=True)
class Policy:
    """The merged policy: defaults plus rules in match order."""

    defaults: Defaults
    rules: tuple[RuleRef, ...]  # in match order: last file first, then top to bottom
    files: tuple[str, ...]  # the files it came from, in read order

    def match(self, tag: str) -> RuleRef | None:
        for ref in self.rules:
            if ref.rule.tag == tag or (
                is_glob(ref.rule.tag) and fnmatch.fnmatchcase(tag, ref.rule.tag)
            ):
                return ref
        return None

    def exact_rules(self) -> tuple[RuleRef, ...]:
        """Rules that name one tag exactly, first match per tag only."""
        seen: set[str] = set()
        out = []
        for ref in self.rules:
            if not is_glob(ref.rule.tag) and ref.rule.tag not in seen:
                seen.add(ref.rule.tag)
                out.append(ref)
        return tuple(out)

    def options_for(self, rule: Rule | None) -> tuple[str, ...]:
        return merge_options(self.defaults.options, rule.options if rule else ())


def merge(files: list[tuple[str, PolicyFile]]) -> Policy:
    """Merge parsed files given in read order (see the module docstring)."""
    defaults = Defaults()
    for _name, parsed in files:
        if parsed.defaults is None:
            continue
        given = parsed.defaults.model_fields_set
        defaults = Defaults(
            mount_root=parsed.defaults.mount_root if "mount_root" in given else defaults.mount_root,
            options=tuple(parsed.defaults.options) if "options" in given else defaults.options,
            unknown=parsed.defaults.unknown if "unknown" in given else defaults.unknown,
        )
    rules = tuple(
        RuleRef(rule, name, index)
        for name, parsed in reversed(files)
        for index, rule in enumerate(parsed.mounts)
    )
    return Policy(defaults, rules, tuple(name for name, _ in files))


def empty_policy() -> Policy:
    return Policy(Defaults(), (), ())
