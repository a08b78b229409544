"""Conflicts visible in the policy itself, before any share is attached (`policy check`).

plan() finds a conflict only when the shares are there; these are certain from the rules alone:
- two rules (different tags) that give one path, written or derived below mount_root;
- a rule path equal to defaults.mount_root, where the shares without a path go;
- a rule path above another rule's path, above a glob's `{tag}` paths, or above mount_root:
  the share mounted there would hide the other mount, or hold its mountpoint.
Globs whose `{tag}` paths merely could meet are fine: tags are encoded injectively, and a tag
that two rules match takes the first one. Every problem names each file:line involved.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

from vfs_agent.core.paths import TAG_PLACEHOLDER, derived_path, is_below
from vfs_agent.policy.load import Loc, PolicyError, PolicyProblem, file_positions
from vfs_agent.policy.types import Policy, RuleRef, UnknownTags, is_glob
from vfs_agent.system.sysroot import SysRoot

Positions = dict[str, dict[Loc, tuple[int, int]]]  # file -> YAML location -> (line, column)


@dataclass(frozen=True)
class _Claim:
    """Where a rule mounts: exactly `path`, or (`below`) somewhere strictly below it."""

    ref: RuleRef
    path: str
    below: bool


def check_conflicts(sysroot: SysRoot, policy: Policy) -> None:
    """Raise PolicyError listing every static conflict of a policy loaded from `sysroot`."""
    # Host layers (the credential, the kernel command line) have no file to point into.
    positions = {name: file_positions(sysroot, name) for name in policy.files if name[:1] == "/"}
    problems = static_conflicts(policy, positions)
    if problems:
        raise PolicyError(sorted(problems, key=lambda p: (p.file, p.line, p.column)))


def static_conflicts(policy: Policy, positions: Positions) -> list[PolicyProblem]:
    """Every certain conflict between the rules of `policy` (see the module docstring)."""
    root = policy.defaults.mount_root
    root_site = _root_site(policy, positions)
    claims = _claims(policy)
    # Something is mounted below mount_root: unknown tags, or a rule without a path.
    derives = policy.defaults.unknown is UnknownTags.MOUNT or any(
        not c.ref.rule.path for c in claims
    )
    problems = []
    for i, claim in enumerate(claims):
        if claim.below:
            continue

        def report(message: str, claim: _Claim = claim) -> None:
            problems.append(_problem(claim.ref, positions, message))

        if claim.path == root:
            report(
                f"path {claim.path} is defaults.mount_root ({root_site}), where the shares "
                "without a path are mounted; choose a path outside it or below it"
            )
        elif derives and is_below(root, claim.path):
            report(
                f"path {claim.path} is above defaults.mount_root {root} ({root_site}); the "
                "share mounted there would hide the shares mounted below it"
            )
        for j, other in enumerate(claims):
            if j == i or other.ref.rule.tag == claim.ref.rule.tag:
                continue
            if not other.ref.rule.path and claim.path in (root, *_parents(root)):
                continue  # reported above, against mount_root
            there = _where(other.ref, positions)
            if not other.below and other.path == claim.path:
                if j > i:  # reported once, at the later of the two
                    report(
                        f"path {claim.path} is also the path of tag {other.ref.rule.tag!r} "
                        f"({there}); one path can hold one share"
                    )
            elif is_below(other.path, claim.path) or (other.below and other.path == claim.path):
                what = "the paths of" if other.below else "the path of"
                report(
                    f"path {claim.path} is above {what} tag {other.ref.rule.tag!r} ({there}); "
                    "the share mounted there would hide that mount"
                )
    return problems


def _parents(path: str) -> list[str]:
    out = []
    while path not in ("/", ""):
        path = posixpath.dirname(path)
        out.append(path)
    return out


def _claims(policy: Policy) -> list[_Claim]:
    """The mounts each rule that can apply asks for (the first rule naming a tag wins)."""
    exact = set(policy.exact_rules())
    claims = []
    for ref in policy.rules:
        rule = ref.rule
        if rule.ignore or (not is_glob(rule.tag) and ref not in exact):
            continue
        if rule.path is None:
            if is_glob(rule.tag):
                claims.append(_Claim(ref, policy.defaults.mount_root, True))
            else:
                claims.append(
                    _Claim(ref, derived_path(policy.defaults.mount_root, rule.tag), False)
                )
        elif TAG_PLACEHOLDER in rule.path:
            # Every path it gives is below the directory that holds the first {tag}.
            head = rule.path[: rule.path.index(TAG_PLACEHOLDER)] + "x"
            claims.append(_Claim(ref, posixpath.dirname(head), True))
        else:
            claims.append(_Claim(ref, rule.path, False))
    return claims


def _field(ref: RuleRef) -> str:
    return "path" if ref.rule.path else "tag"


def _position(ref: RuleRef, positions: Positions) -> tuple[int, int]:
    return positions.get(ref.file, {}).get(("mounts", ref.index, _field(ref)), (0, 0))


def _where(ref: RuleRef, positions: Positions) -> str:
    line, column = _position(ref, positions)
    return f"{ref.file}:{line}:{column}" if line else ref.file


def _root_site(policy: Policy, positions: Positions) -> str:
    for name in reversed(policy.files):
        where = positions.get(name, {}).get(("defaults", "mount_root"))
        if where:
            return f"{name}:{where[0]}:{where[1]}"
    return "the built-in default"


def _problem(ref: RuleRef, positions: Positions, message: str) -> PolicyProblem:
    line, column = _position(ref, positions)
    return PolicyProblem(ref.file, line, column, f"mounts[{ref.index}].{_field(ref)}", message)
