"""The packages: build the .deb and the .rpm once each (packaging/build-*.sh, as `make packages`
does), then check what they hold. A missing build tool fails with the script's message: these
tests are never skipped (the Makefile's HOST_DEBS installs the tools)."""

from __future__ import annotations

import gzip
import re
import subprocess
import tomllib
from pathlib import Path

import pytest
from test_manpage import plain, walk_help

from vfs_agent.policy.document import parse_text
from vfs_agent.policy.schema import to_section
from vfs_agent.policy.types import UnknownTags, merge

REPO = Path(__file__).resolve().parents[2]

# Everything the packages install outside the Python module directory, the same in both.
SYSTEM_FILES = {
    "/usr/bin/vfs-agent": 0o755,
    "/usr/lib/systemd/system-generators/vfs-agent-generator": 0o755,
    "/usr/lib/udev/rules.d/70-vfs-agent.rules": 0o644,
    "/usr/lib/vfs-agent/vfs-agent-tag-id": 0o755,
    "/usr/lib/systemd/system/vfs-agent.service": 0o644,
    "/usr/lib/systemd/system/vfs-agent-cloud-init.service": 0o644,
    "/usr/lib/systemd/system/vfs-agent-prober.socket": 0o644,
    "/usr/lib/systemd/system/vfs-agent-prober.service": 0o644,
    "/etc/vfs-agent/policy.yaml": 0o644,
    "/usr/share/man/man1/vfs-agent.1.gz": 0o644,
    "/usr/share/man/man5/vfs-agent.policy.5.gz": 0o644,
    "/usr/share/man/man8/mount.virtiofs.vfsagent.8.gz": 0o644,
    "/usr/sbin/mount.virtiofs.vfsagent": 0o755,
    "/usr/share/bash-completion/completions/vfs-agent": 0o644,
    "/usr/share/zsh/vendor-completions/_vfs-agent": 0o644,
}
# Where the RPM puts a file the .deb has elsewhere (each distribution's zsh directory).
RPM_PATHS = {
    "/usr/share/zsh/site-functions/_vfs-agent": "/usr/share/zsh/vendor-completions/_vfs-agent"
}
OWN_DIRS = {"/etc/vfs-agent", "/etc/vfs-agent/policy.d", "/usr/lib/vfs-agent"}
# Debian policy puts these in every .deb; an RPM has no counterpart.
DEBIAN_ONLY = {
    "/usr/share/doc/vfs-agent/copyright",
    "/usr/share/doc/vfs-agent/changelog.gz",
    "/usr/share/lintian/overrides/vfs-agent",
}
PYTHON_DIR = re.compile(r"^/usr/lib/python3[^/]*/(dist|site)-packages/")
# What a build left in a checkout would look like.
DROPPINGS = re.compile(r"(^|/)(debian|\.pybuild|rpmbuild|dist)/|\.(deb|rpm|buildinfo|changes)$")

Entry = tuple[str, int, str]  # (path, permission bits, type: "d", "-" or "l")


def _run(*args: str) -> str:
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"{' '.join(args)} failed ({done.returncode}):\n{done.stderr}{done.stdout}")
    return done.stdout


def _status() -> set[str]:
    lines = _run("git", "-C", str(REPO), "status", "--porcelain", "--ignored", "-uall")
    return {line[3:] for line in lines.splitlines()}


def _build(script: str, out: Path) -> Path:
    before = _status()
    built = Path(_run(str(REPO / "packaging" / script), str(out)).strip().splitlines()[-1])
    new = {p for p in _status() - before if DROPPINGS.search(p)}
    assert not new, f"{script} left build output in the checkout: {sorted(new)}"
    return built


def _perms(text: str) -> int:
    bits = 0
    for i, ch in enumerate(text[1:10]):
        if ch != "-":
            bits |= 1 << (8 - i)
    return bits


@pytest.fixture(scope="session")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build("build-deb.sh", tmp_path_factory.mktemp("deb"))


@pytest.fixture(scope="session")
def rpm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build("build-rpm.sh", tmp_path_factory.mktemp("rpm"))


@pytest.fixture(scope="session")
def deb_entries(deb: Path) -> dict[str, Entry]:
    entries = {}
    for line in _run("dpkg-deb", "-c", str(deb)).splitlines():
        fields = line.split(None, 5)
        path = fields[5].split(" -> ")[0].removeprefix(".").rstrip("/") or "/"
        assert fields[1] == "root/root", line
        entries[path] = (path, _perms(fields[0]), fields[0][0].replace("h", "-"))
    return entries


@pytest.fixture(scope="session")
def rpm_entries(rpm: Path) -> dict[str, Entry]:
    fmt = "[%{FILEMODES:perms} %{FILEUSERNAME} %{FILENAMES}\\n]"
    entries = {}
    for line in _run("rpm", "-qp", "--qf", fmt, str(rpm)).splitlines():
        perms, user, path = line.split(" ", 2)
        assert user == "root", line
        path = RPM_PATHS.get(path, path)
        entries[path] = (path, _perms(perms), perms[0])
    return entries


def _version() -> str:
    with (REPO / "pyproject.toml").open("rb") as f:
        return str(tomllib.load(f)["project"]["version"])


def test_deb_holds_every_system_file_with_its_mode(deb_entries: dict[str, Entry]) -> None:
    for path, mode in SYSTEM_FILES.items():
        assert path in deb_entries, f"{path} is missing from the .deb"
        assert deb_entries[path][1:] == (mode, "-"), path
    for path in OWN_DIRS:
        assert deb_entries[path][1:] == (0o755, "d"), path
    modules = {p for p in deb_entries if p.startswith("/usr/lib/python3/dist-packages/")}
    for name in (
        "vfs_agent/commands/cli.py",
        "vfs_agent/commands/cloud_init.py",
        "vfs_agent/data/vfs-agent.service.in",
    ):
        assert f"/usr/lib/python3/dist-packages/{name}" in modules
    assert f"/usr/lib/python3/dist-packages/vfs_agent-{_version()}.dist-info/entry_points.txt" in (
        modules
    )
    assert not [p for p in deb_entries if p.startswith("/usr/local")]


def test_deb_metadata_depends_and_conffiles(deb: Path) -> None:
    info = _run("dpkg-deb", "-f", str(deb), "Package", "Version", "Architecture", "Depends")
    fields = dict(line.split(": ", 1) for line in info.splitlines())
    assert fields["Package"] == "vfs-agent"
    assert fields["Version"] == _version()  # packaging/debian/changelog follows pyproject.toml
    assert fields["Architecture"] == "all"
    depends = {d.strip() for d in fields["Depends"].split(",")}
    for needed in (
        "python3-pydantic (>= 1.10.4)",
        "python3-click (>= 8.1.3)",
        "python3-yaml (>= 6.0)",
        "python3-pyudev (>= 0.24.0)",
        "python3-systemd (>= 235)",
        "kmod",
        "systemd",
        "udev",
    ):
        assert needed in depends, f"Depends lacks {needed}: {fields['Depends']}"
    assert _run("dpkg-deb", "-I", str(deb), "conffiles").split() == ["/etc/vfs-agent/policy.yaml"]


def test_deb_maintainer_scripts(deb: Path) -> None:
    postinst = _run("dpkg-deb", "-I", str(deb), "postinst")
    prerm = _run("dpkg-deb", "-I", str(deb), "prerm")
    postrm = _run("dpkg-deb", "-I", str(deb), "postrm")
    assert "udevadm control --reload" in postinst
    assert "udevadm trigger --subsystem-match=virtio --action=change" in postinst
    assert "systemctl --system daemon-reload" in postinst
    # Compiled before the daemon-reload, so the generator already runs without the validator.
    assert postinst.index("vfs-agent policy compile") < postinst.index("daemon-reload")
    for unit in ("vfs-agent.service", "vfs-agent-cloud-init.service"):
        assert f"deb-systemd-helper enable '{unit}'" in postinst
        assert f"deb-systemd-helper purge '{unit}'" in postrm
    # The daemon starts now; the cloud-init hook only ever runs at boot.
    assert "deb-systemd-invoke $_dh_action 'vfs-agent.service'" in postinst
    assert "deb-systemd-invoke $_dh_action 'vfs-agent-cloud-init.service'" not in postinst
    assert "deb-systemd-invoke stop 'vfs-agent.service'" in prerm
    assert "udevadm control --reload" in postrm
    assert "systemctl --system daemon-reload" in postrm


def test_deb_units_are_rendered_for_usr(deb: Path, tmp_path: Path) -> None:
    _run("dpkg-deb", "-x", str(deb), str(tmp_path))
    for path in SYSTEM_FILES:
        if path.endswith(".gz"):
            continue
        text = (tmp_path / path.lstrip("/")).read_text()
        assert not re.search(r"@(PYTHON|BINDIR|LIBEXECDIR)@", text), path
    unit = (tmp_path / "usr/lib/systemd/system/vfs-agent-cloud-init.service").read_text()
    assert "ExecStart=/usr/bin/vfs-agent cloud-init apply" in unit
    generator = tmp_path / "usr/lib/systemd/system-generators/vfs-agent-generator"
    assert generator.read_text().startswith("#!/usr/bin/python3 ")
    policy = (tmp_path / "etc/vfs-agent/policy.yaml").read_text()
    assert re.search(r"^version: 1$", policy, re.M)
    # Zero-config: the installed policy leaves defaults.unknown at its default, mount.
    assert not re.search(r"^\s+unknown:", policy, re.M)
    assert re.search(r"^  # unknown: mount ", policy, re.M)
    section = to_section("policy.yaml", parse_text(policy, "policy.yaml"))
    assert merge([section]).defaults.unknown is UnknownTags.MOUNT


def test_rpm_files_match_the_deb_outside_the_python_directory(
    deb_entries: dict[str, Entry], rpm_entries: dict[str, Entry]
) -> None:
    def outside(entries: dict[str, Entry]) -> set[Entry]:
        return {
            e
            for path, e in entries.items()
            if not PYTHON_DIR.match(path + "/")
            and path not in DEBIAN_ONLY
            and (e[2] != "d" or path in OWN_DIRS)
        }

    assert outside(rpm_entries) == outside(deb_entries)
    python = {p for p in rpm_entries if PYTHON_DIR.match(p)}
    assert any(p.endswith("/site-packages/vfs_agent/commands/cloud_init.py") for p in python)


def test_rpm_metadata(rpm: Path) -> None:
    version = _run("rpm", "-qp", "--qf", "%{VERSION} %{ARCH}", str(rpm))
    assert version == f"{_version()} noarch"
    requires = _run("rpm", "-qp", "--requires", str(rpm)).splitlines()
    for needed in (
        "python3-pydantic >= 1.10.4",
        "python3-click >= 8.1.3",
        "python3-pyyaml >= 6.0",
        "python3-pyudev >= 0.24.0",
        "python3-systemd >= 235",
        "systemd",
        "kmod",
    ):
        assert needed in requires
    assert _run("rpm", "-qp", "--configfiles", str(rpm)).split() == ["/etc/vfs-agent/policy.yaml"]
    scripts = _run("rpm", "-qp", "--scripts", str(rpm))
    assert "udevadm control --reload" in scripts and "daemon-reload" in scripts
    assert "/usr/bin/vfs-agent policy compile" in scripts


def test_lintian_finds_no_error_and_no_warning(deb: Path) -> None:
    """Overrides only with a reason, in packaging/debian/vfs-agent.lintian-overrides."""
    done = subprocess.run(
        ["lintian", "--pedantic", "--display-info", str(deb)], capture_output=True, text=True
    )
    tags = [line for line in done.stdout.splitlines() if re.match(r"^[EW]: ", line)]
    assert done.returncode == 0 and not tags, done.stdout + done.stderr
    overrides = (REPO / "packaging/debian/vfs-agent.lintian-overrides").read_text()
    for block in overrides.strip().split("\n\n"):
        lines = block.splitlines()
        assert lines[0].startswith("#") and not lines[-1].startswith("#"), block  # a reason


def test_rpmlint_finds_no_error_and_no_warning(rpm: Path) -> None:
    rc = REPO / "packaging/rpm/vfs-agent.rpmlintrc"
    done = subprocess.run(["rpmlint", "-r", str(rc), str(rpm)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert " 0 errors, 0 warnings" in done.stdout, done.stdout


def test_the_packaged_man_pages_and_completions(deb: Path, tmp_path: Path) -> None:
    """The pages in the .deb were generated from this tree's commands and policy keys."""
    _run("dpkg-deb", "-x", str(deb), str(tmp_path))
    man1 = plain(gzip.decompress((tmp_path / "usr/share/man/man1/vfs-agent.1.gz").read_bytes()))
    for path, options in walk_help():
        assert not path or re.search(rf"^vfs-agent {' '.join(path)} ", man1, re.M), path
        for option in options:
            assert option in man1, (path, option)
    man5 = gzip.decompress((tmp_path / "usr/share/man/man5/vfs-agent.policy.5.gz").read_bytes())
    assert b".B mounts[].device_timeout" in man5.replace(b"\\-", b"-")
    man = subprocess.run(
        ["man", "--warnings", "-l", str(tmp_path / "usr/share/man/man1/vfs-agent.1.gz")],
        capture_output=True,
        text=True,
        env={"MANWIDTH": "80", "PATH": "/usr/bin:/bin"},
    )
    assert man.returncode == 0 and not man.stderr, man.stderr
    zsh = (tmp_path / "usr/share/zsh/vendor-completions/_vfs-agent").read_text()
    assert zsh.startswith("#compdef vfs-agent")
