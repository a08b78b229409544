"""`generate fstab` and `generate systemd` against systemd's own reading of the same shares.

For every tag of the property-test tag space and the hostile fixtures:
- the fstab block, turned into units by the host's systemd-fstab-generator (SYSTEMD_FSTAB, a
  temporary output directory), and the units vfs-agent writes are loaded by systemd-analyze
  verify; its debug dump (systemd's parse: whitespace stripped, specifiers resolved) gives
  equal What=, Where=, Type= and Options= for each unit, and both give the tag and the path;
- a share is left out of both outputs, with the same reason, exactly when it is left out of one;
- the device side: the alias the udev helper gives a share, split as systemd splits
  SYSTEMD_ALIAS (on whitespace, unquoted) and escaped by systemd-escape, names the device
  unit that the share's mount unit BindsTo=.
"""

from __future__ import annotations

import io
import json
import os
import shlex
import subprocess
from contextlib import redirect_stdout
from pathlib import Path

import pytest
from click.testing import Result
from clirunner import cli_runner
from faketree import FakeTree
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_escape_properties import tags

from vfs_agent.commands import report
from vfs_agent.commands.cli import main
from vfs_agent.core.escape import mount_unit_name, tag_bytes
from vfs_agent.core.paths import derived_path
from vfs_agent.core.plan import Action, ActionKind
from vfs_agent.core.render_fstab import fstab_problem, render_block
from vfs_agent.core.render_systemd import render_units
from vfs_agent.core.transport import Transport
from vfs_agent.system.generated_files import write_units
from vfs_agent.systemd import udev_tag

FSTAB_GENERATOR = Path("/lib/systemd/system-generators/systemd-fstab-generator")
MOUNT_ROOT = "/mnt/vfs-agent-differential"  # absent on the host: the generator follows links
EXAMPLES = 40  # each runs the generator and systemd-analyze twice

pytestmark = pytest.mark.skipif(
    not FSTAB_GENERATOR.exists(), reason="needs systemd-fstab-generator (Debian: systemd)"
)

HOSTILE_TAGS = [
    "media_tag",
    "weird tag#1",
    "../escape",
    " lead",
    "trail ",
    "\tlead-tab",
    "in\tside",
    "line\nbreak",
    "car\rriage",
    "back\\",
    "\\040",
    "a\\b",
    "pct%x",
    "%%",
    "%n%i",
    'q"uo',
    "'",
    ";semi",
    "#hash",
    "[Unit]",
    "x=y",
    "a\x01b",
    "\x7f",
    "\x0bvt",
    "\x0cff",
    "\x85nel",
    "\xa0nbsp",
    "\u2028ls",
    "Grüße-日本",
    "bad\udcffutf8",
    "\ufffe",
    "non\ufdd0char",
    "plane\U0001fffe",
    "LABEL=x",
    "UUID=1234",
    "PARTUUID=x",
    "/dev/sda",
    "-",
    ".",
    "..",
    "a" * 36,
]
# Explicit rule paths (policy-valid: absolute, normalized, no control characters).
HOSTILE_PATHS = [
    "/srv/with space",
    "/srv/trailing ",
    "/srv/back\\",
    "/srv/pct%d",
    "/srv/semi;colon#hash",
    "/srv/" + "x" * 250,
]


def action(tag: str, path: str, *, required: bool, options: tuple[str, ...]) -> Action:
    return Action(
        kind=ActionKind.MOUNT,
        tag=tag,
        reason="differential",
        path=path,
        transport=Transport.VIRTIOFS,
        options=options,
        required=required,
    )


def systemd_reading(directory: Path) -> dict[str, tuple[str, ...]]:
    """unit name -> (What, Where, Type, Options) as systemd parses the .mount units there."""
    units = sorted(directory.glob("*.mount"))
    if not units:
        return {}
    env = {**os.environ, "SYSTEMD_UNIT_PATH": str(directory), "SYSTEMD_LOG_LEVEL": "debug"}
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *map(str, units)],
        capture_output=True,
        env=env,
        timeout=120,
    )
    output = (done.stdout + done.stderr).decode("utf-8", "surrogateescape")
    names = {u.name for u in units}
    for line in output.split("\n"):
        assert "not UTF-8 clean" not in line and "doesn't match unit name" not in line, line
        if "ailed to load" in line:  # units it pulls in (local-fs.target, ...) are not here
            assert not any(line.startswith(f"{name}:") for name in names), line
    readings: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for line in output.split("\n"):
        if line.startswith("\t-> Unit ") and line.endswith(":"):
            current = readings.setdefault(line[len("\t-> Unit ") : -1], {})
        elif current is not None and line.startswith("\t\t") and ": " in line:
            key, value = line[2:].split(": ", 1)
            current.setdefault(key, value)
        else:
            current = None
    keys = ("What", "Where", "File System Type", "Options")
    return {
        name: tuple(fields.get(k, "") for k in keys)
        for name, fields in readings.items()
        if name in names
    }


def check_both_outputs(tmp_path: Path, actions: list[Action]) -> None:
    # Which shares each output leaves out, and why: the same in both.
    units, skipped = render_units(actions, "differential", bind_device=False, mount_helper=False)
    unit_skips = sorted((s.tag, s.path or "", s.why) for s in skipped)
    fstab_skips = sorted(
        (a.tag, a.path or "", why) for a in actions if (why := fstab_problem(a)) is not None
    )
    assert unit_skips == fstab_skips

    fstab = tmp_path / "fstab"
    fstab.write_bytes(tag_bytes(render_block(actions)))
    generated = tmp_path / "generator"
    generated.mkdir()
    done = subprocess.run(
        [str(FSTAB_GENERATOR), *[str(generated)] * 3],
        env={**os.environ, "SYSTEMD_FSTAB": str(fstab), "SYSTEMD_LOG_LEVEL": "warning"},
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    ours = tmp_path / "ours"
    write_units(ours, units)

    from_fstab = systemd_reading(generated)
    from_units = systemd_reading(ours)
    assert from_units == from_fstab

    kept = [a for a in actions if fstab_problem(a) is None]
    assert sorted(from_units) == sorted(mount_unit_name(a.path or "") for a in kept)
    for a in kept:
        what, where, fstype, options = from_units[mount_unit_name(a.path or "")]
        assert (what, where, fstype) == (a.tag, a.path, "virtiofs")
        wanted = ",".join([*a.options, *([] if a.required else ["nofail"])])
        assert options == (wanted or "n/a")  # how the dump shows no options


def test_the_hostile_tags_and_paths(tmp_path: Path) -> None:
    actions = [
        action(t, derived_path(MOUNT_ROOT, t), required=i % 2 == 0, options=("nosuid", "nodev"))
        for i, t in enumerate(HOSTILE_TAGS)
    ]
    actions += [
        action(f"p{i}", p, required=False, options=("ro",)) for i, p in enumerate(HOSTILE_PATHS)
    ]
    # The raw tag as an explicit path component: what a `{tag}`-less rule path may hold.
    actions += [
        action(f"q{i}", f"/srv/raw/{t}", required=True, options=())
        for i, t in enumerate(HOSTILE_TAGS)
        if "/" not in t and "\0" not in t and t not in (".", "..")
    ]
    check_both_outputs(tmp_path, actions)
    # The control: some of these are left out, most are not.
    kept = [a for a in actions if fstab_problem(a) is None]
    assert 10 < len(actions) - len(kept) < len(kept)


def test_selinux_context_options(tmp_path: Path) -> None:
    options = (
        "nosuid",
        "nodev",
        'context="system_u:object_r:container_file_t:s0:c1,c2"',
        "fscontext=system_u:object_r:nfs_t:s0",
        "defcontext=system_u:object_r:public_content_t:s0",
        "rootcontext=system_u:object_r:var_t:s0",
    )
    actions = [
        action("media_tag", "/srv/media", required=True, options=options),
        action("opt % tag", "/srv/other", required=False, options=options[:3]),
    ]
    check_both_outputs(tmp_path, actions)


@settings(
    deadline=None,
    max_examples=EXAMPLES,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    batch=st.lists(
        st.tuples(tags, st.booleans()), min_size=1, max_size=30, unique_by=lambda x: x[0]
    )
)
def test_the_property_tag_space(tmp_path_factory: pytest.TempPathFactory, batch) -> None:
    tmp_path = tmp_path_factory.mktemp("differential")
    actions = [
        action(t, derived_path(MOUNT_ROOT, t), required=r, options=("nosuid", "nodev"))
        for t, r in batch
    ]
    check_both_outputs(tmp_path, actions)


# --- the device side ------------------------------------------------------------------------


def alias_from_udev(tree: FakeTree, tag: str) -> list[str]:
    """The words systemd takes from SYSTEMD_ALIAS for a share: the helper's output imported
    as udev does (KEY=value lines), put into the rule's alias, split on whitespace and
    unquoted as systemd's extract_first_word(EXTRACT_UNQUOTE) does."""
    device = tree.virtiofs(tag)
    devpath = f"/devices/pci0000:00/0000:00:0{tree._next_index - 1}.0/{device}"
    out = io.StringIO()
    old = os.environ.get("VFS_AGENT_ROOT")
    os.environ["VFS_AGENT_ROOT"] = str(tree.root)
    try:
        with redirect_stdout(out):
            assert udev_tag.main([devpath]) == 0
    finally:
        if old is None:
            del os.environ["VFS_AGENT_ROOT"]
        else:
            os.environ["VFS_AGENT_ROOT"] = old
    (line,) = out.getvalue().splitlines()
    key, value = line.split("=", 1)
    assert key == "VFS_AGENT_TAG_ALIAS"
    return shlex.split(f"/dev/virtiofs/by-tag/{value}")


@pytest.mark.parametrize("tag", HOSTILE_TAGS, ids=ascii)
def test_udev_alias_names_the_device_the_unit_binds_to(tmp_path: Path, tag: str) -> None:
    tree = FakeTree(tmp_path / "root")
    (tmp_path / "root/sys/devices/pci0000:00").mkdir(parents=True)
    words = alias_from_udev(tree, tag)
    assert len(words) == 1  # one alias, never split into several
    device = subprocess.run(
        ["systemd-escape", "--path", "--suffix=device", "--", words[0]],
        capture_output=True,
        check=True,
        text=True,
    ).stdout.strip()
    units, skipped = render_units(
        [action(tag, "/srv/x", required=True, options=())],
        "t",
        bind_device=True,
        mount_helper=True,
    )
    if skipped:  # the tag cannot be a unit at all; its device is still named consistently
        return
    (unit,) = units
    assert f"BindsTo={device}\n" in unit.text
    assert f"{device}.wants/{unit.name}" in {e.relpath for e in unit.extras}


def test_plan_and_both_generate_commands_name_the_same_left_out_shares(tmp_path: Path) -> None:
    tree = FakeTree(tmp_path / "root")
    for tag in ("media_tag", " lead", "#hash", "in\tside", "LABEL=x"):
        tree.virtiofs(tag)
    tree.policy("version: 1\ndefaults: {unknown: mount}\n")
    runner = cli_runner()

    def invoke(*args: str) -> Result:
        result = runner.invoke(main, ["--root", str(tree.root), *args])
        assert result.exit_code == 0, result.output
        return result

    plan = json.loads(invoke("plan", "--json").stdout)
    named = {(s["tag"], s["why"]) for s in plan["not_persistent"]}
    assert {tag for tag, _ in named} == {" lead", "#hash", "LABEL=x"}
    for command in ("systemd", "fstab"):
        stderr = invoke("generate", command).stderr
        assert stderr.count("skipped") == 3
        for tag, why in named:
            assert f"skipped {report.show(tag)}: {why}" in stderr
    assert "in\tside" in invoke("generate", "systemd").stdout
    assert (
        "* no fstab line or unit for ' lead': the tag ' lead' begins or ends"
        in invoke("plan").stdout
    )
