"""`vfs-agent generate systemd --output DIR` on a fake tree, checked by systemd itself:

- `systemd-analyze verify` accepts every unit (syntax, Where= matching the unit name) and, in
  its debug dump, reads back What= as the tag and Where= as the planned path;
- each file name is `systemd-escape --path --suffix=mount` of its Where= (after undoing %%);
- the local-fs.target.wants/ links exist; optional shares are not ordered before
  local-fs.target (the boot never waits for them), required ones are;
- a later run with a share gone removes exactly what was generated for it, and never touches
  a file vfs-agent did not write.

systemd-analyze runs with SYSTEMD_UNIT_PATH set to the output directory only, so it loads our
units and nothing from the host's unit directories.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from faketree import FakeTree, make_tree, run_generator, snapshot

from vfs_agent.commands.cli import main
from vfs_agent.core.escape import encode_tag
from vfs_agent.core.render_systemd import exec_word
from vfs_agent.systemd.installed import RULE_NAME

LONG_TAG = "abcdefghijklmnopqrstuvwxyz0123456789"
TAGS = ["media_tag", "data-1", "weird tag#1", "../escape", LONG_TAG, "Grüße-日本"]
POLICY = """\
version: 1
defaults:
  unknown: mount
mounts:
  - tag: media_tag
    path: /mnt/media
    required: true
"""
# Where each tag must be mounted: the explicit path, or <mount_root>/<encoded tag>.
EXPECTED_WHERE = {
    "media_tag": "/mnt/media",
    "data-1": "/mnt/virtiofs/data-1",
    "weird tag#1": "/mnt/virtiofs/weird%20tag%231",
    "../escape": "/mnt/virtiofs/%2E.%2Fescape",
    LONG_TAG: f"/mnt/virtiofs/{LONG_TAG}",
    "Grüße-日本": "/mnt/virtiofs/Gr%C3%BC%C3%9Fe-%E6%97%A5%E6%9C%AC",
}
BIND_MODES = [pytest.param([], id="default"), pytest.param(["--bind-device"], id="bind-device")]


def generate(root: Path, out: Path, *extra: str) -> Result:
    return CliRunner().invoke(
        main, ["--root", str(root), "generate", "systemd", *extra, "--output", str(out)]
    )


def unit_settings(path: Path) -> dict[str, str]:
    """Key=value lines of a unit file, with systemd's %% specifier escaping undone."""
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, value = line.split("=", 1)
            out[key] = value.replace("%%", "%")
    return out


def systemd_escape(paths: list[str], suffix: str) -> list[str]:
    done = subprocess.run(
        ["systemd-escape", "--path", f"--suffix={suffix}", "--", *paths],
        capture_output=True,
        check=True,
        text=True,
    )
    return done.stdout.split()


def verify(directory: Path, units: list[Path], *, debug: bool = False) -> tuple[int, str]:
    """systemd-analyze verify, loading units from `directory` only. Returns (rc, output)."""
    env = {**os.environ, "SYSTEMD_UNIT_PATH": str(directory)}
    if debug:
        env["SYSTEMD_LOG_LEVEL"] = "debug"
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *map(str, units)],
        capture_output=True,
        env=env,
    )
    return done.returncode, (done.stdout + done.stderr).decode("utf-8", "replace")


def dumped_units(dump: str) -> dict[str, list[str]]:
    """The per-unit sections of systemd-analyze's debug dump: unit name -> its lines."""
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in dump.splitlines():
        match = re.fullmatch(r"\t-> Unit (.+):", line)
        if match:
            current = sections.setdefault(match.group(1), [])
        elif current is not None and line.startswith("\t\t"):
            current.append(line.strip())
        else:
            current = None
    return sections


def dump_value(lines: list[str], key: str) -> list[str]:
    return [line.split(": ", 1)[1] for line in lines if line.startswith(f"{key}: ")]


@pytest.fixture
def generated(tmp_path: Path, request: pytest.FixtureRequest) -> tuple[Path, Path, list[str]]:
    extra: list[str] = getattr(request, "param", [])
    root = make_tree(tmp_path, tags=TAGS, policy=POLICY)
    out = tmp_path / "units"
    result = generate(root, out, *extra)
    assert result.exit_code == 0, result.output
    assert "skipped" not in result.output, result.output
    return root, out, extra


# --- systemd accepts what we wrote ------------------------------------------------------------


def test_verify_really_checks_names_and_keys(tmp_path: Path) -> None:
    """The control: this invocation does reject a unit whose name does not match Where=, and
    does report an unknown key, so a clean run below means something."""
    bad = tmp_path / "bad"
    bad.mkdir()
    unit = bad / "mnt-x.mount"
    unit.write_text("[Mount]\nWhat=x\nWhere=/mnt/y\nType=virtiofs\nBogus=1\n")
    rc, output = verify(bad, [unit])
    assert rc != 0
    assert "Where= setting doesn't match unit name" in output
    assert "Unknown key 'Bogus'" in output


@pytest.mark.parametrize("generated", BIND_MODES, indirect=True)
def test_systemd_analyze_verify_accepts_the_units(generated: tuple[Path, Path, list[str]]) -> None:
    _root, out, _extra = generated
    units = sorted(out.glob("*.mount"))
    assert len(units) == len(TAGS)

    rc, output = verify(out, units)

    problems = [
        line
        for line in output.splitlines()
        if re.search(r"Unknown|Failed|Invalid|Refusing|bad", line, re.IGNORECASE)
        or any(u.name in line for u in units)
    ]
    assert rc == 0, output
    assert problems == [], output


@pytest.mark.parametrize("generated", BIND_MODES, indirect=True)
def test_systemd_reads_back_each_tag_and_path(generated: tuple[Path, Path, list[str]]) -> None:
    """systemd's own parse (the debug dump of verify) gives What=<tag>, Where=<planned path>,
    and orders only the required share before local-fs.target."""
    _root, out, _extra = generated
    units = sorted(out.glob("*.mount"))
    rc, dump = verify(out, units, debug=True)
    assert rc == 0, dump[-3000:]
    sections = dumped_units(dump)

    seen = {}
    for unit in units:
        lines = sections[unit.name]
        (what,) = dump_value(lines, "What")
        (where,) = dump_value(lines, "Where")
        seen[what] = where
        ordered_before_boot = "local-fs.target" in " ".join(dump_value(lines, "Before"))
        required = what == "media_tag"
        assert ordered_before_boot == required, (unit.name, lines)
        options = dump_value(lines, "Options")[0].split(",")
        assert ("nofail" in options) == (not required)
        assert {"nosuid", "nodev"} <= set(options)
    assert seen == EXPECTED_WHERE


@pytest.mark.parametrize("generated", BIND_MODES, indirect=True)
def test_unit_file_names_are_systemd_escape_of_where(
    generated: tuple[Path, Path, list[str]],
) -> None:
    _root, out, _extra = generated
    units = sorted(out.glob("*.mount"))
    wheres = [unit_settings(u)["Where"] for u in units]

    assert [u.name for u in units] == systemd_escape(wheres, "mount")
    assert sorted(wheres) == sorted(EXPECTED_WHERE.values())
    assert {unit_settings(u)["What"] for u in units} == set(TAGS)


@pytest.mark.parametrize("generated", BIND_MODES, indirect=True)
def test_the_boot_starts_required_and_unbound_units_and_devices_start_bound_ones(
    generated: tuple[Path, Path, list[str]],
) -> None:
    """local-fs.target wants a unit that is required or has no device to follow; a unit bound to
    its device is wanted by that device (an absent optional share costs the boot nothing)."""
    _root, out, extra = generated
    bound = "--bind-device" in extra
    for unit in out.glob("*.mount"):
        settings = unit_settings(unit)
        required = "nofail" not in settings["Options"].split(",")
        boot_link = out / "local-fs.target.wants" / unit.name
        assert boot_link.is_symlink() == (required or not bound), unit.name
        if boot_link.is_symlink():
            assert os.readlink(boot_link) == f"../{unit.name}"
            assert boot_link.resolve() == unit.resolve()
        if bound:
            device_link = out / f"{settings['BindsTo']}.wants" / unit.name
            assert os.readlink(device_link) == f"../{unit.name}"


def after(path: Path) -> list[str]:
    """Every After= value of a unit file."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return [line.split("=", 1)[1] for line in lines if line.startswith("After=")]


@pytest.mark.parametrize("writer", ["generate systemd", "generator"])
def test_bound_units_name_the_escaped_device_alias(tmp_path: Path, writer: str) -> None:
    """With --bind-device, every unit and its answer wait name systemd's unit for
    /dev/virtiofs/by-tag/<encoded>: bound to it and ordered after it (waiting for the share),
    in every unit `generate systemd` writes (they outlive the boot) and in the generator's (for
    this boot) for a share not attached yet. For an attached one the generator's unit is only
    stopped with its device (StopPropagatedFrom=): mounted without waiting for udev's coldplug,
    as an fstab line is."""
    absent = "absent_tag"
    policy = POLICY + f"  - {{tag: {absent}, path: /srv/absent, required: true}}\n"
    root = make_tree(tmp_path, tags=TAGS, policy=policy)
    out = tmp_path / "units"
    if writer == "generator":
        (root / "usr/lib/udev/rules.d").mkdir(parents=True)
        (root / f"usr/lib/udev/rules.d/{RULE_NAME}").write_text("# installed\n")
        out.mkdir()
        assert run_generator(root, out).returncode == 0
    else:
        assert generate(root, out, "--bind-device").exit_code == 0
    units = sorted(out.glob("*.mount"))
    aliases = [f"/dev/virtiofs/by-tag/{encode_tag(unit_settings(u)['What'])}" for u in units]
    devices = systemd_escape(aliases, "device")
    waiting = []
    for unit, device in zip(units, devices, strict=True):
        answer = out / f"vfs-agent-answer@{unit.name.removesuffix('.mount')}.service"
        for path in (unit, answer) if answer.exists() else (unit,):  # none for a too long path
            settings = unit_settings(path)
            if settings.get("BindsTo") == device:
                assert device in after(path), path.name
                assert "StopPropagatedFrom" not in settings, path.name
            else:
                assert settings["StopPropagatedFrom"] == device, path.name
                assert "BindsTo" not in settings and device not in after(path), path.name
        if unit_settings(unit).get("BindsTo") == device:
            waiting.append(unit_settings(unit)["What"])
        if answer.exists():
            assert unit_settings(unit).get("BindsTo") == unit_settings(answer).get("BindsTo")
    everyone = sorted(unit_settings(u)["What"] for u in units)
    assert sorted(waiting) == (everyone if writer == "generate systemd" else [absent])


def test_without_bind_device_units_do_not_wait_for_devices(
    generated: tuple[Path, Path, list[str]],
) -> None:
    """The fake tree has no udev rule, so by default no unit binds to a device unit."""
    _root, out, _extra = generated
    for unit in out.glob("*.mount"):
        assert "BindsTo" not in unit_settings(unit), unit.read_text()


# --- a later run: removes exactly what is gone, never touches foreign files -------------------


def add_foreign_files(out: Path, tmp_path: Path) -> list[Path]:
    """A hand-written unit, and an enabled vendor unit (a .wants link to a unit that lives in
    another directory, as `systemctl enable` makes for units under /usr/lib/systemd/system)."""
    foreign = out / "srv-handmade.mount"
    foreign.write_text("[Mount]\nWhat=/dev/vdb\nWhere=/srv/handmade\nType=ext4\n")
    (out / "local-fs.target.wants/srv-handmade.mount").symlink_to("../srv-handmade.mount")
    vendor = tmp_path / "vendor/tmp.mount"
    vendor.parent.mkdir()
    vendor.write_text("[Mount]\nWhat=tmpfs\nWhere=/tmp\nType=tmpfs\n")
    (out / "local-fs.target.wants/tmp.mount").symlink_to(vendor)
    return [
        foreign,
        out / "local-fs.target.wants/srv-handmade.mount",
        out / "local-fs.target.wants/tmp.mount",
    ]


@pytest.mark.parametrize("generated", BIND_MODES, indirect=True)
def test_a_removed_share_loses_its_unit_and_nothing_else(
    generated: tuple[Path, Path, list[str]], tmp_path: Path
) -> None:
    root, out, extra = generated
    foreign = add_foreign_files(out, tmp_path)
    before = snapshot(out)
    gone = "mnt-virtiofs-data\\x2d1.mount"
    assert (out / gone).exists()

    FakeTree(root).set_tags([t for t in TAGS if t != "data-1"])
    result = generate(root, out, *extra)

    assert result.exit_code == 0, result.output
    assert f"removed {out / gone}" in result.output
    assert not (out / gone).exists()
    assert not (out / "local-fs.target.wants" / gone).is_symlink()
    after = snapshot(out)
    # Everything else is byte for byte what it was: other units, their links, foreign files.
    removed = set(before) - set(after)
    assert all("data\\x2d1" in name for name in removed), removed
    assert set(after) <= set(before)
    assert all(after[name] == before[name] for name in after), "a kept file changed"
    for path in foreign:
        assert str(path.relative_to(out)) in after
    # And what is left of ours is exactly what a fresh run without the share writes.
    fresh = tmp_path / "fresh"
    assert generate(root, fresh, *extra).exit_code == 0
    ours = {
        k: v for k, v in after.items() if not any(k == str(f.relative_to(out)) for f in foreign)
    }
    assert ours == snapshot(fresh)


def test_a_second_identical_run_changes_nothing(
    generated: tuple[Path, Path, list[str]],
) -> None:
    root, out, _extra = generated
    before = snapshot(out)
    result = generate(root, out)
    assert result.exit_code == 0, result.output
    assert "removed" not in result.output
    assert snapshot(out) == before


def test_a_hand_written_file_with_a_generated_name_is_never_overwritten(tmp_path: Path) -> None:
    root = make_tree(tmp_path, tags=TAGS, policy=POLICY)
    out = tmp_path / "units"
    out.mkdir()
    mine = out / "mnt-media.mount"
    text = "# mine\n[Mount]\nWhat=media_tag\nWhere=/mnt/media\nType=virtiofs\nOptions=ro\n"
    mine.write_text(text)

    result = generate(root, out)

    assert result.exit_code == 1, result.output
    assert "not generated by vfs-agent; not overwriting it" in result.output
    assert mine.read_text() == text
    assert not (out / "local-fs.target.wants/mnt-media.mount").exists()


def test_a_generated_unit_edited_by_hand_is_kept(
    generated: tuple[Path, Path, list[str]],
) -> None:
    """Once someone removes the generated mark, the file is theirs: neither rewritten while the
    share is wanted, nor removed when it is gone."""
    root, out, _extra = generated
    unit = out / "mnt-media.mount"
    edited = unit.read_text().split("\n", 1)[1].replace("Options=", "Options=ro,")
    unit.write_text(edited)

    assert generate(root, out).exit_code == 1
    assert unit.read_text() == edited

    FakeTree(root).set_tags([t for t in TAGS if t != "media_tag"])
    policy = root / "etc/vfs-agent/policy.yaml"
    policy.write_text("version: 1\ndefaults:\n  unknown: mount\n")
    result = generate(root, out)
    assert result.exit_code == 0, result.output
    assert unit.read_text() == edited
    assert "mnt-media.mount" not in result.output


VENDOR_UNIT = "/usr/lib/systemd/system/vfs-agent-test-vendor.mount"


def test_a_foreign_link_to_a_unit_elsewhere_survives(tmp_path: Path) -> None:
    if Path(VENDOR_UNIT).exists():
        pytest.skip(f"{VENDOR_UNIT} exists on this host")
    root = make_tree(tmp_path, tags=TAGS, policy=POLICY)
    out = root / "etc/systemd/system"
    (root / VENDOR_UNIT.lstrip("/")).parent.mkdir(parents=True)
    (root / VENDOR_UNIT.lstrip("/")).write_text("[Mount]\nWhat=tmpfs\nWhere=/x\nType=tmpfs\n")
    link = out / "local-fs.target.wants/vfs-agent-test-vendor.mount"
    link.parent.mkdir(parents=True)
    link.symlink_to(VENDOR_UNIT)

    assert generate(root, out).exit_code == 0

    assert link.is_symlink(), "the image's enabled vendor unit lost its link"


def test_a_foreign_empty_directory_survives(tmp_path: Path) -> None:
    root = make_tree(tmp_path, tags=TAGS, policy=POLICY)
    out = tmp_path / "units"
    for name in ("getty.target.wants", "ssh.service.d"):
        (out / name).mkdir(parents=True)

    assert generate(root, out).exit_code == 0

    assert (out / "getty.target.wants").is_dir()
    assert (out / "ssh.service.d").is_dir()


@pytest.mark.parametrize("name", ["plain", "with space", "cost $HOME", "100%", "semi;colon"])
def test_exec_word_gives_systemd_back_the_interpreters_path(tmp_path: Path, name: str) -> None:
    """systemd itself reads the word (the interpreter of the answer waits): an executable
    whose path needs quoting or '%' doubled is found by `systemd-analyze verify`, which
    complains about a command it cannot find. ('$' is not expanded in a command's name, and
    systemd refuses a quote or a backslash there whatever the quoting.)"""
    program = tmp_path / name / "prog"
    program.parent.mkdir()
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    unit = tmp_path / "units" / "exec-word.service"
    unit.parent.mkdir()
    unit.write_text(
        "[Unit]\nDefaultDependencies=no\n[Service]\nType=oneshot\n"
        f"ExecStart={exec_word(str(program))} arg\n"
    )
    rc, output = verify(unit.parent, [unit])
    assert rc == 0 and "exec-word.service" not in output, output
