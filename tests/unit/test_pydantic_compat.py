"""The policy runs on pydantic 1.10 (Debian 12, Ubuntu 24.04) and 2.x (Debian 13, Fedora)
through one adapter, vfs_agent.policy.pydantic_compat. `make unit` runs every unit test twice, in
.venv (2.x) and in .venv-pydantic1 (1.10.4, Debian 12's floor); the policy corpus proves the
same error texts on both, and the golden schema below the same JSON Schema."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pydantic
import pytest
from click.testing import CliRunner

from vfs_agent.commands.cli import main
from vfs_agent.policy import pydantic_compat
from vfs_agent.policy.load import PolicyError, parse_text

GOLDEN_SCHEMA = Path(__file__).resolve().parent.parent / "policies" / "schema.json"


def test_the_run_uses_the_pydantic_major_it_was_asked_for() -> None:
    """`make unit` sets VFS_AGENT_TEST_PYDANTIC for each of its two runs, so a venv that
    quietly upgraded pydantic fails here instead of testing the same major twice."""
    wanted = os.environ.get("VFS_AGENT_TEST_PYDANTIC")
    if wanted is None:
        pytest.skip("VFS_AGENT_TEST_PYDANTIC not set (make unit sets it)")
    assert pydantic.VERSION.split(".")[0] == wanted
    assert int(wanted) == pydantic_compat.MAJOR


def test_policy_schema_matches_the_golden_schema() -> None:
    """The same JSON Schema on pydantic 1.10 and 2.x: tests/policies/schema.json, which is
    also what pydantic 2's own generator printed for the models before the adapter existed."""
    result = CliRunner().invoke(main, ["policy", "schema"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == json.loads(GOLDEN_SCHEMA.read_text(encoding="utf-8"))


def test_an_optional_field_takes_null_in_schema_and_validator() -> None:
    schema = pydantic_compat.json_schema(pydantic_compat_model())
    assert {"type": "null"} in schema["properties"]["path"]["anyOf"]
    parse_text("version: 1\nmounts:\n  - {tag: a, path: null}\n", "p.yaml")


def pydantic_compat_model() -> type[pydantic_compat.BaseModel]:
    from vfs_agent.policy.schema import RuleModel

    return RuleModel


def test_errors_carry_the_input_and_no_root_marker() -> None:
    with pytest.raises(PolicyError) as e:
        parse_text(
            "version: 1\nmounts:\n  - {tag: 'd-*', path: /srv/x}\n  - {tag: b, required: 2}\n",
            "p.yaml",
        )
    lines = [str(p) for p in e.value.problems]
    assert lines == [
        "p.yaml:3:5: mounts[0]: tag 'd-*' is a glob, so its path must contain {tag} "
        "(otherwise every matching tag would go to one path)",
        "p.yaml:4:24: mounts[1].required: 2 is not a boolean; write true or false",
    ]


def test_a_model_is_immutable_and_strict_on_both_majors() -> None:
    parsed = parse_text("version: 1\nmounts: [{tag: a}]\n", "p.yaml")
    with pytest.raises(TypeError):
        parsed.mounts[0].tag = "b"  # type: ignore[misc]
    assert pydantic_compat.fields_set(parsed.mounts[0]) == {"tag"}


def test_the_schema_is_the_same_when_asked_twice() -> None:
    # pydantic caches its schema dict; the adapter must not change the cached one.
    assert pydantic_compat.json_schema(pydantic_compat_model()) == pydantic_compat.json_schema(
        pydantic_compat_model()
    )
