"""The merged policy as plain data: what plan() and the generator work with.

Validation lives in policy/schema.py (pydantic) and policy/load.py; this module imports neither,
so the boot-time generator can use a compiled policy without loading pydantic.

Merge rule (documented in the README): layers are read in order — the main policy file, then
policy.d/*.yaml in lexical order, then the host's layers and cloud-init's drop-in
(policy/layers.py). `defaults` merge key by key, a later file overriding an earlier
one. Rules are matched last file first and, within one file, top to bottom; the first rule whose
tag pattern matches decides. So a drop-in can override the image's policy for a tag.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from enum import StrEnum
from functools import cached_property

from vfs_agent.core.mount_options import merge_options

MAX_TAG_BYTES = 36
GLOB_CHARS = frozenset("*?[")
DEFAULT_MOUNT_ROOT = "/mnt/virtiofs"
DEFAULT_OPTIONS = ("nosuid", "nodev")
# Seconds the boot waits for the host to answer a virtio-fs share (generated units).
DEFAULT_MOUNT_TIMEOUT = 30
BUILT_IN = "the built-in default"


class UnknownTags(StrEnum):
    IGNORE = "ignore"
    MOUNT = "mount"


class NonEmpty(StrEnum):
    """What to do when a share's mountpoint is a directory that already holds files."""

    WARN = "warn"  # mount anyway (the files are hidden while it is mounted), and say so
    REFUSE = "refuse"  # do not mount there


class TransportChoice(StrEnum):
    AUTO = "auto"
    VIRTIOFS = "virtiofs"
    NINEP = "9p"


def is_glob(pattern: str) -> bool:
    return any(c in GLOB_CHARS for c in pattern)


@dataclass(frozen=True)
class Rule:
    tag: str
    path: str | None = None
    options: tuple[str, ...] = field(default=())
    required: bool = False
    ignore: bool = False
    transport: TransportChoice = TransportChoice.AUTO
    device_timeout: int | None = None  # seconds; None: defaults.device_timeout
    on_nonempty: NonEmpty | None = None  # None: defaults.on_nonempty
    mount_timeout: int | None = None  # seconds; None: defaults.mount_timeout

    def matches(self, tag: str) -> bool:
        return self.tag == tag or (self._glob is not None and self._glob(tag) is not None)

    @cached_property
    def _glob(self) -> Callable[[str], object] | None:
        """The pattern compiled once (fnmatch's own translation), or None for an exact tag."""
        return re.compile(fnmatch.translate(self.tag)).match if is_glob(self.tag) else None


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
    unknown: UnknownTags = UnknownTags.MOUNT
    device_timeout: int | None = None  # None: systemd's DefaultDeviceTimeoutSec (90 s)
    on_nonempty: NonEmpty = NonEmpty.WARN
    mount_timeout: int = DEFAULT_MOUNT_TIMEOUT


@dataclass(frozen=True)
class DefaultsPatch:
    """The `defaults` keys one file wrote; None: not written, keep the earlier value."""

    mount_root: str | None = None
    options: tuple[str, ...] | None = None
    unknown: UnknownTags | None = None
    device_timeout: int | None = None
    on_nonempty: NonEmpty | None = None
    mount_timeout: int | None = None


@dataclass(frozen=True)
class FileSection:
    """One file's contribution: the defaults keys it set, and its rules in order."""

    name: str
    defaults: DefaultsPatch
    rules: tuple[Rule, ...]


@dataclass(frozen=True)
class Policy:
    """The merged policy: defaults plus rules in match order."""

    defaults: Defaults
    rules: tuple[RuleRef, ...]  # in match order: last file first, then top to bottom
    files: tuple[str, ...]  # the layers it came from (file paths or layer names), in read order
    unknown_from: str = BUILT_IN  # the layer whose defaults.unknown holds
    warnings: tuple[str, ...] = ()  # problems of host layers that were ignored

    def match(self, tag: str) -> RuleRef | None:
        """The first rule in match order whose pattern matches `tag` (Rule.matches). An exact
        rule is found by lookup; only the globs before it are tried, so a policy of many exact
        tags costs one dict lookup per share."""
        exact, globs = self._index
        first = exact.get(tag)
        for position, ref in globs:
            if first is not None and position > first:
                break
            if ref.rule.matches(tag):
                return ref
        return self.rules[first] if first is not None else None

    @cached_property
    def _index(self) -> tuple[dict[str, int], list[tuple[int, RuleRef]]]:
        """Position of the first exact rule per tag; the glob rules with their positions."""
        exact: dict[str, int] = {}
        globs: list[tuple[int, RuleRef]] = []
        for position, ref in enumerate(self.rules):
            if is_glob(ref.rule.tag):
                globs.append((position, ref))
            else:
                exact.setdefault(ref.rule.tag, position)
        return exact, globs

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

    def on_nonempty_for(self, rule: Rule | None) -> NonEmpty:
        if rule is not None and rule.on_nonempty is not None:
            return rule.on_nonempty
        return self.defaults.on_nonempty

    def device_timeout_for(self, rule: Rule | None) -> int | None:
        if rule is not None and rule.device_timeout is not None:
            return rule.device_timeout
        return self.defaults.device_timeout

    def mount_timeout_for(self, rule: Rule | None) -> int:
        if rule is not None and rule.mount_timeout is not None:
            return rule.mount_timeout
        return self.defaults.mount_timeout


def merge(files: list[FileSection]) -> Policy:
    """Merge files given in read order (see the module docstring)."""
    defaults = Defaults()
    unknown_from = BUILT_IN
    for section in files:
        patch = section.defaults
        if patch.unknown is not None:
            unknown_from = section.name
        written = {f.name: getattr(patch, f.name) for f in fields(patch)}
        defaults = replace(defaults, **{k: v for k, v in written.items() if v is not None})
    rules = tuple(
        RuleRef(rule, section.name, index)
        for section in reversed(files)
        for index, rule in enumerate(section.rules)
    )
    return Policy(defaults, rules, tuple(section.name for section in files), unknown_from)


def empty_policy() -> Policy:
    return Policy(Defaults(), (), ())
