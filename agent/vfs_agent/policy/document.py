"""One policy document to a validated PolicyFile (policy/schema.py), with every problem of the
document reported at once, each at its line: YAML with positions (policy/yaml_positions.py),
then the schema, then the rules the schema cannot state (a tag named twice). Text in, model
out: no file is read here (policy/load.py reads them)."""

from __future__ import annotations

from typing import Any

from vfs_agent.policy.errors import PolicyError, PolicyProblem
from vfs_agent.policy.messages import problem_at
from vfs_agent.policy.pydantic_compat import ValidationError, error_details, validate
from vfs_agent.policy.schema import PolicyFile
from vfs_agent.policy.yaml_positions import Positions, build, compose


def parse_text(text: str, name: str) -> PolicyFile:
    """Parse and validate one policy document named `name` in messages; PolicyError lists
    every problem, sorted by position."""
    node = compose(text, name)
    if node is None:
        raise PolicyError(
            [PolicyProblem(name, 1, 1, "", "the file is empty; it needs at least 'version: 1'")]
        )
    data, positions, duplicates = build(node, name)
    if not isinstance(data, dict):
        line, col = positions[()]
        message = "the policy must be a mapping with 'version: 1'"
        raise PolicyError([*duplicates, PolicyProblem(name, line, col, "", message)])
    problems = list(duplicates)  # keep going: report every problem of the file at once
    try:
        parsed = validate(PolicyFile, data)
    except ValidationError as e:
        problems += [problem_at(err, positions, name) for err in error_details(PolicyFile, e, data)]
    else:
        problems += _duplicate_tags(parsed, positions, name)
    if problems:
        raise PolicyError(sorted(problems, key=lambda p: (p.line, p.column)))
    return parsed


def validate_data(data: dict[str, Any], name: str, column: int) -> PolicyFile:
    """Validate a policy built in code (not parsed from YAML, so every problem is placed at
    line 1, `column`): the kernel command line's rules get the files' checks and messages."""
    try:
        return validate(PolicyFile, data)
    except ValidationError as e:
        positions: Positions = {(): (1, column)}
        details = error_details(PolicyFile, e, data)
        raise PolicyError([problem_at(err, positions, name) for err in details]) from None


def _duplicate_tags(parsed: PolicyFile, positions: Positions, name: str) -> list[PolicyProblem]:
    first: dict[str, int] = {}
    problems = []
    for index, rule in enumerate(parsed.mounts):
        if rule.tag in first:
            line, col = positions[("mounts", index, "tag")]
            message = (
                f"tag {rule.tag!r} is already named by mounts[{first[rule.tag]}]; "
                "merge the two rules into one"
            )
            problems.append(PolicyProblem(name, line, col, f"mounts[{index}].tag", message))
        first.setdefault(rule.tag, index)
    return problems
