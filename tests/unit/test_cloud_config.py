"""The pure part of `cloud-init apply` (policy/cloud_config.py): cloud-init's answer to the
merged cloud-config, the `vfs_agent` key to the drop-in's text, key order, error positions.
No file, no process: data in, data out."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from vfs_agent.policy.cloud_config import (
    HEADER,
    SOURCE,
    CloudInitError,
    cloud_config,
    dropin_text,
    nesting_depth,
    place,
    schema_ordered,
    user_data_marks,
)
from vfs_agent.policy.document import parse_text
from vfs_agent.policy.errors import PolicyProblem

USER_DATA = """\
#cloud-config
packages: [jq]
vfs_agent:
  version: 1
  defaults:
    on_nonempty: refuse
    mount_root: /srv/shares
  mounts:
    - path: /mnt/médias
      tag: média
      options: [ro]
    - tag: "data-*"
      path: "/srv/data/{tag}"
"""


def value_of(user_data: str) -> Any:
    return yaml.safe_load(user_data)["vfs_agent"]


# -- cloud-init's answer ----------------------------------------------------------------------


def test_the_merged_config_wins_and_the_user_data_comes_along() -> None:
    merged = {"vfs_agent": {"version": 1}, "runcmd": []}
    answer = json.dumps({"combined_cloud_config": merged, "userdata": USER_DATA})
    assert cloud_config(answer) == (merged, USER_DATA)


def test_user_data_that_is_not_text_gives_no_positions() -> None:
    answer = json.dumps({"combined_cloud_config": {}, "userdata": {"gzip": "..."}})
    assert cloud_config(answer) == ({}, None)


def test_old_cloud_init_reads_a_plain_cloud_config() -> None:
    config, userdata = cloud_config(json.dumps({"userdata": USER_DATA}))
    assert config["vfs_agent"] == value_of(USER_DATA) and userdata == USER_DATA
    assert cloud_config(json.dumps({"userdata": None})) == ({}, None)
    assert cloud_config(json.dumps({"userdata": "#cloud-config\n"})) == ({}, "#cloud-config\n")


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        ("", "printed no JSON"),
        ("[1, 2]", "no JSON object"),
        (json.dumps({"userdata": "#!/bin/sh\ntrue\n"}), "not a plain #cloud-config"),
        (json.dumps({"userdata": "#cloud-config\na: [\n"}), "is not valid YAML"),
    ],
)
def test_what_cloud_init_says_that_cannot_be_used(answer: str, why: str) -> None:
    with pytest.raises(CloudInitError, match=why):
        cloud_config(answer)


# -- the drop-in's text -----------------------------------------------------------------------


def test_a_valid_key_becomes_a_drop_in_that_passes_policy_check() -> None:
    text, problems = dropin_text(value_of(USER_DATA), USER_DATA)
    assert problems == [] and text is not None
    assert text.startswith(HEADER)
    assert "/mnt/médias" in text  # UTF-8 as written, not \xe9 escapes
    assert yaml.safe_load(text) == value_of(USER_DATA)
    parsed = parse_text(text, "drop-in")
    assert [rule.tag for rule in parsed.mounts] == ["média", "data-*"]


def test_keys_follow_the_schema_whatever_order_they_came_in() -> None:
    text, _ = dropin_text(value_of(USER_DATA), USER_DATA)
    assert text is not None
    data = yaml.safe_load(text)
    assert list(data) == ["version", "defaults", "mounts"]
    assert list(data["defaults"]) == ["mount_root", "on_nonempty"]
    assert [list(m) for m in data["mounts"]] == [["tag", "path", "options"], ["tag", "path"]]


def test_unknown_keys_go_last_and_other_shapes_are_left_alone() -> None:
    value = {"zzz": 1, "mounts": ["not a mapping", {"x": 1, "tag": "t"}], "version": 1}
    assert schema_ordered(value) == {
        "version": 1,
        "mounts": ["not a mapping", {"tag": "t", "x": 1}],
        "zzz": 1,
    }
    assert list(schema_ordered(value)) == ["version", "mounts", "zzz"]
    assert list(schema_ordered(value)["mounts"][1]) == ["tag", "x"]
    assert schema_ordered([1, 2]) == [1, 2]
    assert schema_ordered({"defaults": "text"}) == {"defaults": "text"}


BROKEN = """\
#cloud-config
vfs_agent:
  version: 1
  mounts:
    - tag: media_tag
      path: relative/path
      requird: true
    - tag: other
      options: [ro, "exec,suid"]
"""


def test_problems_are_placed_at_their_line_in_the_user_data() -> None:
    text, problems = dropin_text(value_of(BROKEN), BROKEN)
    assert text is None
    where = {p.field: (p.file, p.line, p.column) for p in problems}
    assert where["mounts[0].path"] == (SOURCE, 6, 13)  # the value
    assert where["mounts[0].requird"] == (SOURCE, 7, 7)  # the unknown key itself
    assert where["mounts[1].options[1]"][1:] == (9, 21)
    # The words are those of `policy check` for the same document.
    assert any("did you mean 'required'?" in p.message for p in problems)


def test_a_value_merged_from_elsewhere_has_field_paths_but_no_lines() -> None:
    merged = {"version": 1, "mounts": [{"tag": "x", "path": "relative"}]}
    text, problems = dropin_text(merged, BROKEN)  # not the value the user-data holds
    assert text is None
    assert [(p.line, p.column, p.field) for p in problems] == [(0, 0, "mounts[0].path")]
    assert str(problems[0]).startswith(f"{SOURCE}: mounts[0].path: ")


@pytest.mark.parametrize("value", [None, "yes", [1], {}, {"version": 1, "mounts": "x"}])
def test_anything_but_a_valid_policy_mapping_is_a_problem(value: Any) -> None:
    text, problems = dropin_text(value, None)
    assert text is None and problems
    assert all(p.file == SOURCE for p in problems)


def test_nesting_is_measured_without_recursion_and_refused_past_the_limit() -> None:
    assert nesting_depth("x") == 0
    assert nesting_depth({"a": [1, {"b": []}]}) == 4
    deep: Any = []
    for _ in range(100_000):  # far past Python's recursion limit
        deep = [deep]
    assert nesting_depth(deep) == 65  # counting stops a level past the limit
    text, problems = dropin_text({"version": 1, "mounts": deep}, None)
    assert text is None and "nested deeper than 64 levels" in problems[0].message


def test_an_alias_bomb_in_the_user_data_costs_no_positions_and_no_time() -> None:
    bomb = "#cloud-config\nvfs_agent: &a [" + ", ".join(["x"] * 20) + "]\n"
    for level in range(8):  # 20**8 nodes if expanded
        bomb += (
            f"l{level}: &b{level} ["
            + ", ".join([f"*{'a' if level == 0 else f'b{level - 1}'}"] * 20)
            + "]\n"
        )
    loaded = yaml.safe_load(bomb)
    assert user_data_marks(loaded["vfs_agent"], bomb) is not None  # the key itself is small
    big = "#cloud-config\nx: &a [" + ", ".join(["y"] * 200) + "]\n"
    big += "vfs_agent: {mounts: [" + ", ".join(["*a"] * 100) + "]}\n"  # 20,000 nodes
    assert user_data_marks(yaml.safe_load(big)["vfs_agent"], big) is None


def test_a_problem_moves_to_the_nearest_enclosing_value() -> None:
    marks = ({"mounts": (4, 3), "mounts[0]": (5, 7), "mounts[0].tag": (5, 12)}, {"x": (2, 2)})
    problem = PolicyProblem(SOURCE, 9, 9, "mounts[0].options[3]", "bad option")
    assert (place(problem, marks).line, place(problem, marks).column) == (5, 7)
    unknown = PolicyProblem(SOURCE, 9, 9, "x", "unknown key 'x'; allowed keys here: version")
    assert (place(unknown, marks).line, place(unknown, marks).column) == (2, 2)
    assert (place(problem, None).line, place(problem, None).column) == (0, 0)
    nowhere = PolicyProblem(SOURCE, 9, 9, "defaults.options", "bad")
    assert (place(nowhere, marks).line, place(nowhere, marks).column) == (0, 0)
