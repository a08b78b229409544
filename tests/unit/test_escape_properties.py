"""Property tests for every place a tag ends up, for any tag of 0..36 bytes:

(a) the derived path stays one component below mount_root, decodes back to the tag, and differs
    for different tags; an empty tag is refused;
(b) the fstab line, parsed back by util-linux (findmnt), gives the same tag and path;
(c) the unit name is exactly `systemd-escape --path --suffix=mount` of the path.

Tags come from the host, so they are arbitrary bytes: text whose UTF-8 fits in 36 bytes, and
raw bytes decoded with surrogateescape (as discovery decodes them). NUL is left out: the kernel
keeps a tag as a C string, so discovery can never return one with NUL in it.
"""

from __future__ import annotations

import json
import posixpath
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, find, given, settings
from hypothesis import strategies as st

from vfs_agent.core import escape
from vfs_agent.core.paths import derived_path
from vfs_agent.core.plan import Action, ActionKind
from vfs_agent.core.render_fstab import render_line, render_lines
from vfs_agent.core.transport import Transport

MAX_TAG_BYTES = 36
TOOL_EXAMPLES = 150  # each example of (b) and (c) runs one process

# Characters that need escaping somewhere (fstab, unit names, paths), weighted in.
SPECIAL = " \t\n\r\x0b\x0c\\#%./-_:'\"$*?[]{}=,;~\x7f\x85\xa0\u2028é日"


def _raw(tag: str) -> bytes:
    return tag.encode("utf-8", "surrogateescape")


text_tags = st.text(
    alphabet=st.one_of(
        st.sampled_from(SPECIAL), st.characters(codec="utf-8", exclude_characters="\0")
    ),
    min_size=1,
    max_size=MAX_TAG_BYTES,
).filter(lambda t: len(_raw(t)) <= MAX_TAG_BYTES)
byte_tags = st.binary(min_size=1, max_size=MAX_TAG_BYTES).map(
    lambda b: b.replace(b"\0", b"").decode("utf-8", "surrogateescape")
)
tags = st.one_of(text_tags, byte_tags).filter(lambda t: t != "")
mount_roots = st.sampled_from(["/mnt/virtiofs", "/srv", "/run/virtiofs", "/mnt/shared dirs"])

# Normalized absolute paths: "/" or components that are not empty, "." or ".." and hold no
# "/" or NUL.
components = st.one_of(
    st.text(
        alphabet=st.one_of(
            st.sampled_from(SPECIAL.replace("/", "")),
            st.characters(codec="utf-8", exclude_characters="/\0"),
        ),
        min_size=1,
        max_size=12,
    ),
    st.binary(min_size=1, max_size=12).map(
        lambda b: b.replace(b"/", b"").replace(b"\0", b"").decode("utf-8", "surrogateescape")
    ),
).filter(lambda c: c not in ("", ".", ".."))
abs_paths = st.lists(components, max_size=5).map(lambda parts: "/" + "/".join(parts))


def test_strategies_reach_the_edges() -> None:
    """The tag strategies cover 36-byte tags, non-UTF-8 bytes and multi-byte text, so the
    properties below are about the whole domain."""
    longest = find(text_tags, lambda t: len(_raw(t)) == MAX_TAG_BYTES)
    assert len(_raw(longest)) == MAX_TAG_BYTES
    undecodable = find(byte_tags, lambda t: any(0xDC80 <= ord(c) <= 0xDCFF for c in t))
    assert _raw(undecodable) != undecodable.encode("utf-8", "replace")
    assert find(text_tags, lambda t: len(t) < len(_raw(t)))  # multi-byte characters


# --- (a) derived paths ------------------------------------------------------------------------


@settings(deadline=None, max_examples=500)
@given(root=mount_roots, tag=tags)
def test_derived_path_is_one_safe_component_below_mount_root(root: str, tag: str) -> None:
    path = derived_path(root, tag)
    component = posixpath.basename(path)

    assert posixpath.normpath(path) == path
    assert posixpath.dirname(path) == root
    assert component not in ("", ".", "..")
    assert "/" not in component and "\0" not in component
    assert not component.startswith(".")  # never hidden
    assert component.isascii() and component.isprintable() and " " not in component
    assert escape.decode_tag(component) == tag


@settings(deadline=None, max_examples=500)
@given(tag=tags)
def test_encode_tag_round_trips(tag: str) -> None:
    encoded = escape.encode_tag(tag)
    assert escape.decode_tag(encoded) == tag
    assert _raw(escape.decode_tag(encoded)) == _raw(tag)


@settings(deadline=None, max_examples=300)
@given(root=mount_roots, many=st.lists(tags, min_size=2, max_size=40, unique=True))
def test_different_tags_give_different_paths(root: str, many: list[str]) -> None:
    # A tag that spells another tag's encoding is the likeliest collision: add those too.
    spelled = [escape.encode_tag(t) for t in many]
    distinct = list(dict.fromkeys(many + [t for t in spelled if len(_raw(t)) <= MAX_TAG_BYTES]))
    paths = [derived_path(root, t) for t in distinct]
    assert len(set(paths)) == len(distinct)


@settings(deadline=None, max_examples=300)
@given(a=tags, b=tags)
def test_no_two_tags_share_a_path(a: str, b: str) -> None:
    assume(a != b)
    assert derived_path("/mnt/virtiofs", a) != derived_path("/mnt/virtiofs", b)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("a b", "a%20b"),  # the escape character itself must be escaped
        (".x", "%2Ex"),
        ("A", "a"),
        ("é", "e\u0301"),  # precomposed vs combining accent
        ("x/y", "x%2Fy"),
    ],
)
def test_look_alike_tags_stay_apart(a: str, b: str) -> None:
    assert derived_path("/mnt/virtiofs", a) != derived_path("/mnt/virtiofs", b)


@pytest.mark.parametrize("tag", ["..", ".", "../escape", "/", "a/../../etc", ".hidden"])
def test_hostile_tags_stay_below_mount_root(tag: str) -> None:
    path = derived_path("/mnt/virtiofs", tag)
    assert posixpath.dirname(path) == "/mnt/virtiofs"
    assert posixpath.normpath(path) == path
    assert escape.decode_tag(posixpath.basename(path)) == tag


def test_an_empty_tag_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        escape.encode_tag("")
    with pytest.raises(ValueError, match="empty"):
        derived_path("/mnt/virtiofs", "")


# --- (b) fstab lines, read back by util-linux --------------------------------------------------


def mount_action(tag: str, path: str, *, required: bool) -> Action:
    return Action(
        kind=ActionKind.MOUNT,
        tag=tag,
        reason="test",
        path=path,
        transport=Transport.VIRTIOFS,
        options=("nosuid", "nodev"),
        required=required,
    )


def findmnt_fstab(fstab: Path) -> list[dict[str, str | None]]:
    """The entries of `fstab` as util-linux parses them (octal escapes decoded)."""
    done = subprocess.run(
        [
            "findmnt",
            "--fstab",
            "--tab-file",
            str(fstab),
            "--json",
            "-o",
            "SOURCE,TARGET,FSTYPE,OPTIONS",
        ],
        capture_output=True,
        check=True,
    )
    # Tags need not be UTF-8; findmnt passes such bytes through.
    parsed = json.loads(done.stdout.decode("utf-8", "surrogateescape"))
    return list(parsed["filesystems"])


@settings(
    deadline=None,
    max_examples=TOOL_EXAMPLES,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    root=mount_roots,
    batch=st.lists(st.tuples(tags, st.booleans()), min_size=1, max_size=25),
)
def test_fstab_lines_parse_back_to_the_same_tag_and_path(
    tmp_path: Path, root: str, batch: list[tuple[str, bool]]
) -> None:
    # A tag that begins with '#' gets no line (persist.share_problem): its line is a comment.
    actions = [
        mount_action(tag, derived_path(root, tag), required=req)
        for tag, req in batch
        if not tag.startswith("#")
    ]
    assume(actions)  # findmnt exits 1 on an fstab without entries
    lines = [render_line(a) for a in actions]
    for line in lines:
        assert "\n" not in line and len(line.split(" ")) == 6, repr(line)
    fstab = tmp_path / "fstab"
    fstab.write_bytes(_raw("# a comment\n" + "\n".join(lines) + "\n"))

    entries = findmnt_fstab(fstab)

    assert len(entries) == len(actions)
    for entry, action in zip(entries, actions, strict=True):
        assert entry["source"] == action.tag
        assert entry["target"] == action.path
        assert entry["fstype"] == "virtiofs"
        wanted = "nosuid,nodev" if action.required else "nosuid,nodev,nofail"
        assert entry["options"] == wanted


def test_fstab_round_trip_of_the_issue_tags(tmp_path: Path) -> None:
    """Example-based, so a failure names the tag: odd tags, and every byte that fstab gives a
    meaning to. (The escaping of each line; which lines are written is persist's rule.)"""
    named = ["media_tag", "data-1", "weird tag#1", "../escape", "a\tb\nc\\d#e", "x#", "\\040"]
    actions = [mount_action(t, derived_path("/mnt/virtiofs", t), required=False) for t in named]
    actions.append(mount_action("odd path", "/mnt/with space/and\\back#hash", required=True))
    fstab = tmp_path / "fstab"
    fstab.write_text("\n".join(map(render_line, actions)) + "\n", encoding="utf-8")

    entries = findmnt_fstab(fstab)

    assert [(e["source"], e["target"]) for e in entries] == [(a.tag, a.path) for a in actions]
    # A newline survives fstab but not the unit systemd-fstab-generator makes of the line;
    # a line that begins with '#' is a comment.
    assert len(render_lines(actions)) == len(actions) - 1
    hashed = mount_action("#x", derived_path("/mnt/virtiofs", "#x"), required=False)
    assert render_lines([hashed]) == []


@pytest.mark.parametrize("tag", ["LABEL=x", "UUID=x", "PARTUUID=x", "PARTLABEL=x", "ID=x"])
def test_a_tag_libmount_takes_for_a_device_tag_is_not_written(tag: str) -> None:
    action = mount_action(tag, derived_path("/mnt/virtiofs", tag), required=False)
    assert render_lines([action]) == []


# --- (c) unit names ---------------------------------------------------------------------------


def systemd_escape_paths(paths: list[str]) -> list[str]:
    """`systemd-escape --path --suffix=mount` of each path, in one call. It prints the names
    space-separated on one line; escaped names never hold a space (it becomes \\x20)."""
    done = subprocess.run(
        ["systemd-escape", "--path", "--suffix=mount", "--", *paths],
        capture_output=True,
        check=True,
    )
    out = done.stdout.decode("ascii")
    assert out.endswith("\n") and out.count("\n") == 1, repr(out)
    return out.rstrip("\n").split(" ")


def test_systemd_escape_batches_as_expected() -> None:
    """The helper itself: several paths, one per name, in order."""
    assert systemd_escape_paths(["/", "/mnt/a b", "/mnt/x-y"]) == [
        "-.mount",
        "mnt-a\\x20b.mount",
        "mnt-x\\x2dy.mount",
    ]


@settings(deadline=None, max_examples=TOOL_EXAMPLES)
@given(
    root=mount_roots,
    tag_batch=st.lists(tags, min_size=1, max_size=20),
    path_batch=st.lists(abs_paths, min_size=1, max_size=20),
)
def test_unit_names_match_systemd_escape(
    root: str, tag_batch: list[str], path_batch: list[str]
) -> None:
    paths = [derived_path(root, t) for t in tag_batch] + path_batch
    expected = systemd_escape_paths(paths)
    assert [escape.mount_unit_name(p) for p in paths] == expected


@pytest.mark.parametrize(
    "path",
    ["/", "/mnt/media", "/.hidden/x", "/mnt/-", "/mnt/a\\b", "/mnt/日本", "/mnt/virtiofs/%2E."],
)
def test_unit_name_examples_match_systemd_escape(path: str) -> None:
    assert escape.mount_unit_name(path) == systemd_escape_paths([path])[0]
