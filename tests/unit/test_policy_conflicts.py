"""`policy check` refuses rules that conflict whatever shares are attached, naming every
file:line involved (exit 2, nothing changed); rules that merely could meet pass."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from clirunner import cli_runner
from faketree import make_tree, snapshot

from vfs_agent.commands.cli import main

MAIN = "/etc/vfs-agent/policy.yaml"
DROPIN = "/etc/vfs-agent/policy.d/50-extra.yaml"


def check(root: Path, *args: str) -> tuple[int, list[str]]:
    result = cli_runner().invoke(main, ["--root", str(root), "policy", "check", *args])
    assert "Traceback" not in result.output
    return result.exit_code, result.stderr.splitlines()


CASES = {
    "same path in one file": (
        "version: 1\nmounts:\n  - {tag: a, path: /srv/x}\n  - {tag: b, path: /srv/x}\n",
        None,
        [f"{MAIN}:3:20: mounts[0].path: path /srv/x is also the path of tag 'b' ({MAIN}:4:20)"],
    ),
    "same path across files": (
        "version: 1\nmounts:\n  - {tag: a, path: /srv/x}\n",
        "version: 1\nmounts:\n  - tag: b\n    path: /srv/x\n",
        [f"{DROPIN}:4:11: mounts[0].path: path /srv/x is also the path of tag 'a' ({MAIN}:3:20)"],
    ),
    "written path equals a derived one": (
        "version: 1\nmounts:\n  - {tag: a, path: /mnt/virtiofs/b}\n  - {tag: b}\n",
        None,
        [
            f"{MAIN}:3:20: mounts[0].path: path /mnt/virtiofs/b is also the path of tag 'b' "
            f"({MAIN}:4:11)"
        ],
    ),
    "path is mount_root": (
        "version: 1\ndefaults: {mount_root: /srv/v}\nmounts:\n  - {tag: a, path: /srv/v}\n",
        None,
        [f"{MAIN}:4:20: mounts[0].path: path /srv/v is defaults.mount_root ({MAIN}:2:24)"],
    ),
    "path above another path": (
        "version: 1\nmounts:\n  - {tag: a, path: /srv/x/y}\n  - {tag: b, path: /srv/x}\n",
        None,
        [f"{MAIN}:4:20: mounts[1].path: path /srv/x is above the path of tag 'a' ({MAIN}:3:20)"],
    ),
    "path above a glob's paths": (
        "version: 1\nmounts:\n  - {tag: 'd-*', path: '/srv/d/{tag}'}\n  - {tag: b, path: /srv/d}\n",
        None,
        [f"{MAIN}:4:20: mounts[1].path: path /srv/d is above the paths of tag 'd-*' ({MAIN}:3:24)"],
    ),
    "path above mount_root": (
        "version: 1\ndefaults: {unknown: mount}\nmounts:\n  - {tag: a, path: /mnt}\n",
        None,
        [
            f"{MAIN}:4:20: mounts[0].path: path /mnt is above defaults.mount_root /mnt/virtiofs "
            "(the built-in default)"
        ],
    ),
}


@pytest.mark.parametrize("case", CASES, ids=str)
def test_static_conflicts_are_errors_with_every_position(tmp_path: Path, case: str) -> None:
    main_text, dropin, wanted = CASES[case]
    root = make_tree(
        tmp_path, policy=main_text, dropins={"50-extra.yaml": dropin} if dropin else None
    )
    before = snapshot(root)
    code, lines = check(root)
    assert code == 2, lines
    for want in wanted:
        assert any(line.startswith(want) for line in lines), (want, lines)
    assert len(lines) == len(wanted), lines
    assert snapshot(root) == before
    result = cli_runner().invoke(main, ["--root", str(root), "policy", "check", "--json"])
    data = json.loads(result.stdout)
    assert data["valid"] is False and len(data["problems"]) == len(wanted)


def test_single_file_argument_is_checked_too(tmp_path: Path) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text(CASES["same path in one file"][0])
    code, lines = check(tmp_path, str(policy))
    assert code == 2 and lines[0].startswith(f"{policy}:3:20: mounts[0].path: path /srv/x is")


@pytest.mark.parametrize(
    "text",
    [
        # Two globs with one template: a tag that matches both takes the first rule.
        "version: 1\nmounts:\n  - {tag: 'a-*', path: '/srv/{tag}'}\n"
        "  - {tag: 'b-*', path: '/srv/{tag}'}\n",
        # Globs whose {tag} paths could meet: only when such tags exist (plan reports that).
        "version: 1\nmounts:\n  - {tag: 'a-*', path: '/srv/x{tag}'}\n"
        "  - {tag: 'b-*', path: '/srv/{tag}'}\n",
        # A drop-in overriding a tag's path is not a conflict: the override wins.
        "version: 1\nmounts:\n  - {tag: a, path: /srv/a}\n  - {tag: 'a*', ignore: true}\n",
        # Side by side, and below mount_root but not at it.
        "version: 1\ndefaults: {unknown: mount}\nmounts:\n  - {tag: a, path: /srv/a}\n"
        "  - {tag: b, path: /srv/b}\n  - {tag: c, path: /mnt/virtiofs/sub/c}\n",
    ],
)
def test_rules_that_only_could_meet_pass(tmp_path: Path, text: str) -> None:
    root = make_tree(tmp_path, policy=text)
    code, lines = check(root)
    assert code == 0, lines


def test_a_dropin_override_of_the_same_tag_is_no_conflict(tmp_path: Path) -> None:
    root = make_tree(
        tmp_path,
        policy="version: 1\nmounts:\n  - {tag: a, path: /srv/a}\n  - {tag: b, path: /srv/b}\n",
        dropins={"50-extra.yaml": "version: 1\nmounts:\n  - {tag: a, path: /srv/b}\n"},
    )
    code, lines = check(root)
    assert code == 2  # a now goes to b's path
    wanted = f"{DROPIN}:3:20: mounts[0].path: path /srv/b is also the path of tag 'b' ({MAIN}"
    assert any(line.startswith(wanted) for line in lines), lines
    root2 = make_tree(
        tmp_path,
        name="root2",
        policy="version: 1\nmounts:\n  - {tag: a, path: /srv/a}\n",
        dropins={"50-extra.yaml": "version: 1\nmounts:\n  - {tag: a, path: /srv/c}\n"},
    )
    assert check(root2)[0] == 0
