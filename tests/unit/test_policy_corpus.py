"""The policy corpus: every invalid policy under tests/policies/invalid/ must be refused by
`vfs-agent policy check` with exactly the problems listed in its .expect file (file:line:col,
field path and message), and every policy under tests/policies/valid/ must pass.

Each .expect line is a substring that must appear in one line of the output, starting at the
position (":line:col: ") because the file name in front depends on where the test copied it.
The number of .expect lines is the number of problems: `--json` must report exactly that many.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result
from faketree import make_tree, snapshot, write_policy

from vfs_agent.commands.cli import main

POLICIES = Path(__file__).resolve().parent.parent / "policies"
INVALID = sorted(POLICIES.glob("invalid/*.yaml"))
VALID = sorted(POLICIES.glob("valid/*.yaml"))

# Corpus files whose expected output the code does not give yet: each is a bug (see the reason).
# strict=True: when the bug is fixed the test passes, fails as XPASS, and the entry must go.
KNOWN_BUGS: dict[str, str] = {}


def short_name(path: Path) -> str:
    """'07-unknown-rule-key.yaml' -> 'unknown-rule-key'."""
    return path.stem.split("-", 1)[1]


def case_params(paths: list[Path]) -> list[Any]:
    params = []
    for path in paths:
        marks = []
        if short_name(path) in KNOWN_BUGS:
            marks.append(pytest.mark.xfail(reason=KNOWN_BUGS[short_name(path)], strict=True))
        params.append(pytest.param(path, id=path.stem, marks=marks))
    return params


def expected_lines(policy: Path) -> list[str]:
    lines = policy.with_suffix(".expect").read_text(encoding="utf-8").splitlines()
    return [line for line in lines if line.strip()]


def copy_policy(src: Path, tmp_path: Path) -> Path:
    """Copy a corpus file where the loader's sshd-style mode checks pass (file 0644, dir 0755),
    whatever the checkout's umask made of the original."""
    directory = tmp_path / "policy"
    directory.mkdir()
    os.chmod(directory, 0o755)
    dst = directory / src.name
    shutil.copyfile(src, dst)
    os.chmod(dst, 0o644)
    return dst


def check(path: Path, *extra: str) -> Result:
    return CliRunner().invoke(main, ["policy", "check", *extra, str(path)])


def output_lines(result: Result) -> list[str]:
    return [line for line in result.output.splitlines() if line.strip()]


# --- the corpus itself ------------------------------------------------------------------------


def test_corpus_is_complete() -> None:
    """At least 30 invalid policies, each with a non-empty .expect file whose lines all carry a
    position; and at least 3 valid ones."""
    assert len(INVALID) >= 30
    assert len(VALID) >= 3
    names = [short_name(p) for p in INVALID]
    assert len(names) == len(set(names)), "two corpus files share a short name"
    for policy in INVALID:
        lines = expected_lines(policy)
        assert lines, f"{policy.name} has no expected problems"
        for line in lines:
            # ": cannot read" is the only problem about the file as a whole (no position).
            assert line.startswith(":") and (line[1].isdigit() or "cannot read" in line), line
    for known in KNOWN_BUGS:
        assert known in names, f"KNOWN_BUGS names {known!r}, which is not in the corpus"


@pytest.mark.parametrize("policy", case_params(INVALID))
def test_invalid_policy_is_refused_with_every_expected_problem(
    policy: Path, tmp_path: Path
) -> None:
    copy = copy_policy(policy, tmp_path)
    expected = expected_lines(policy)

    result = check(copy)

    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"crashed: {result.exception!r}\n{result.output}"
    )
    assert result.exit_code == 2, result.output
    lines = output_lines(result)
    for want in expected:
        assert any(want in line for line in lines), f"missing {want!r} in:\n{result.output}"
    # One output line per problem, each naming the file: nothing more, nothing less.
    assert len(lines) == len(expected), result.output
    assert all(line.startswith(str(copy)) for line in lines), result.output


@pytest.mark.parametrize("policy", case_params(INVALID))
def test_invalid_policy_json_lists_the_same_problems(policy: Path, tmp_path: Path) -> None:
    copy = copy_policy(policy, tmp_path)
    expected = expected_lines(policy)

    result = check(copy, "--json")

    assert result.exit_code == 2, result.output
    report = json.loads(result.stdout)
    assert report["valid"] is False
    problems = report["problems"]
    assert len(problems) == len(expected), json.dumps(problems, indent=2)
    rendered = [
        f":{p['line']}:{p['column']}: {p['field'] + ': ' if p['field'] else ''}{p['message']}"
        if p["line"]
        else f": {p['message']}"
        for p in problems
    ]
    for want in expected:
        assert any(want in line for line in rendered), f"missing {want!r} in {rendered}"
    assert {p["file"] for p in problems} == {str(copy)}


@pytest.mark.parametrize("policy", [pytest.param(p, id=p.stem) for p in VALID])
def test_valid_policy_passes(policy: Path, tmp_path: Path) -> None:
    copy = copy_policy(policy, tmp_path)

    result = check(copy)
    assert result.exit_code == 0, result.output
    assert "policy is valid" in result.output

    as_json = check(copy, "--json")
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.stdout)["valid"] is True


def _keys_missing(schema: dict[str, Any], node: dict[str, Any], data: Any, where: str) -> set[str]:
    """Schema properties that `data` never uses, walking objects, arrays and $refs together."""
    if "$ref" in node:
        node = schema["$defs"][node["$ref"].rsplit("/", 1)[1]]
    for choice in node.get("anyOf", []):
        if "$ref" in choice or choice.get("type") in ("object", "array"):
            return _keys_missing(schema, choice, data, where)
    missing: set[str] = set()
    if "properties" in node:
        items = [data] if isinstance(data, dict) else []
        for key, sub in node["properties"].items():
            present = [item[key] for item in items if key in item]
            if not present:
                missing.add(f"{where}{key}")
            for value in present:
                missing |= _keys_missing(schema, sub, value, f"{where}{key}.")
    elif node.get("type") == "array" and "items" in node:
        # A key of the items is missing only if no item uses it.
        items = data if isinstance(data, list) and data else [{}]
        per_item = [_keys_missing(schema, node["items"], item, f"{where}[].") for item in items]
        missing = set.intersection(*per_item)
    return missing


def test_full_example_uses_every_key_of_the_schema() -> None:
    """valid/01-full-example.yaml shows every key the schema knows (checked against
    `vfs-agent policy schema`, so a new key must be added to the example)."""
    schema_result = CliRunner().invoke(main, ["policy", "schema"])
    assert schema_result.exit_code == 0, schema_result.output
    schema = json.loads(schema_result.stdout)
    full = POLICIES / "valid/01-full-example.yaml"
    data = yaml.safe_load(full.read_text(encoding="utf-8"))

    assert _keys_missing(schema, schema, data, "") == set()
    # The check itself can fail: a policy without defaults misses them, and a key that no rule
    # uses is missing even though other rules have it.
    assert "defaults" in _keys_missing(schema, schema, {"version": 1}, "")
    without = {**data, "mounts": [{"tag": "a"}, {"tag": "b", "path": "/mnt/b"}]}
    assert "mounts.[].transport" in _keys_missing(schema, schema, without, "")
    assert "mounts.[].path" not in _keys_missing(schema, schema, without, "")


def test_a_yaml_merge_key_is_handled_not_a_crash(tmp_path: Path) -> None:
    policy = write_policy(
        tmp_path / "etc/policy.yaml",
        "version: 1\n"
        "mounts:\n"
        "  - &media {tag: media_tag, path: /mnt/media, options: [ro]}\n"
        "  - <<: *media\n"
        "    tag: other\n"
        "    path: /mnt/other\n",
    )
    result = check(policy)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    # Either merged (valid) or refused with a position; never a traceback.
    assert result.exit_code == 0 or (result.exit_code == 2 and ":4:" in result.output)


# --- file modes (sshd StrictModes) ------------------------------------------------------------

GOOD = "version: 1\nmounts:\n  - tag: media_tag\n    path: /mnt/media\n"


def test_a_policy_with_safe_modes_passes(tmp_path: Path) -> None:
    policy = write_policy(tmp_path / "etc/policy.yaml", GOOD)
    result = check(policy)
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("mode", [0o664, 0o646])
def test_a_group_or_world_writable_policy_file_is_refused(tmp_path: Path, mode: int) -> None:
    policy = write_policy(tmp_path / "etc/policy.yaml", GOOD, mode=mode)
    result = check(policy)
    assert result.exit_code == 2, result.output
    assert f"{policy}: the policy file is writable by group or others (chmod go-w)" in (
        result.output
    )
    assert "directory" not in result.output


@pytest.mark.parametrize("dir_mode", [0o775, 0o757])
def test_a_group_or_world_writable_policy_directory_is_refused(
    tmp_path: Path, dir_mode: int
) -> None:
    policy = write_policy(tmp_path / "etc/policy.yaml", GOOD, dir_mode=dir_mode)
    result = check(policy)
    assert result.exit_code == 2, result.output
    assert f"{policy}: the policy directory is writable by group or others (chmod go-w)" in (
        result.output
    )


def test_mode_problems_are_reported_with_the_policy_problems(tmp_path: Path) -> None:
    policy = write_policy(
        tmp_path / "etc/policy.yaml", "version: 1\ndefaults:\n  unknwn: mount\n", mode=0o666
    )
    result = check(policy, "--json")
    assert result.exit_code == 2
    messages = [p["message"] for p in json.loads(result.stdout)["problems"]]
    assert any("chmod go-w" in m for m in messages), messages
    assert any("unknown key 'unknwn'" in m for m in messages), messages


def test_a_policy_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    policy = write_policy(tmp_path / "etc/policy.yaml", GOOD)
    try:
        os.chown(policy, 4242, 4242)
    except PermissionError:
        pytest.skip("needs CAP_CHOWN to give the file to another user")
    result = check(policy)
    assert result.exit_code == 2, result.output
    assert "the policy file must be owned by root (chown root)" in result.output


# --- drop-ins: an invalid one stops mount-all before anything changes -------------------------

MAIN = (
    "version: 1\ndefaults:\n  unknown: mount\nmounts:\n  - tag: media_tag\n    path: /mnt/media\n"
)
BAD_DROPIN = "version: 1\nmounts:\n  - tag: data-1\n    path: /srv/../etc\n"
GOOD_DROPIN = "version: 1\nmounts:\n  - tag: data-1\n    path: /srv/data\n"


def test_an_invalid_dropin_stops_mount_all_and_changes_nothing(tmp_path: Path) -> None:
    root = make_tree(
        tmp_path,
        tags=["media_tag", "data-1", "other"],
        policy=MAIN,
        dropins={"50-data.yaml": BAD_DROPIN},
    )
    before = snapshot(root)

    result = CliRunner().invoke(main, ["--root", str(root), "mount-all"])

    assert result.exit_code == 2, result.output
    assert "/etc/vfs-agent/policy.d/50-data.yaml:4:11: mounts[0].path:" in result.output
    assert "nothing was changed" in result.output
    assert snapshot(root) == before
    for where in ("mnt", "srv", "run"):
        assert not (root / where).exists(), f"{where} was created"


def test_the_same_tree_with_a_valid_dropin_plans_its_mounts(tmp_path: Path) -> None:
    """The control for the test above: the refusal comes from the drop-in alone."""
    root = make_tree(
        tmp_path,
        tags=["media_tag", "data-1", "other"],
        policy=MAIN,
        dropins={"50-data.yaml": GOOD_DROPIN},
    )
    result = CliRunner().invoke(main, ["--root", str(root), "plan", "--json"])
    assert result.exit_code == 0, result.output
    paths = {a["tag"]: a["path"] for a in json.loads(result.stdout)["actions"]}
    assert paths == {
        "media_tag": "/mnt/media",
        "data-1": "/srv/data",
        "other": "/mnt/virtiofs/other",
    }


def test_policy_check_without_file_names_the_invalid_dropin(tmp_path: Path) -> None:
    root = make_tree(
        tmp_path, policy=MAIN, dropins={"10-ok.yaml": GOOD_DROPIN, "50-data.yaml": BAD_DROPIN}
    )
    result = CliRunner().invoke(main, ["--root", str(root), "policy", "check"])
    assert result.exit_code == 2, result.output
    assert "policy.d/50-data.yaml:4:11:" in result.output
    assert "10-ok.yaml" not in result.output
