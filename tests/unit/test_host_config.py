"""`vfs-agent host-config`: what it prints hands the very policy to the guest, by every route."""

from __future__ import annotations

import base64
import json
import shlex
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from clirunner import cli_runner
from faketree import FakeTree

from vfs_agent.commands.cli import main
from vfs_agent.core.plan import ActionKind, plan
from vfs_agent.policy.cmdline import mount_arguments, split
from vfs_agent.policy.load import load_policy
from vfs_agent.system.discovery import discover
from vfs_agent.system.sysroot import SysRoot

SIMPLE = """\
version: 1
mounts:
  - {tag: "my tag:1", path: "/srv/my dir", options: [ro, noatime]}
  - {tag: 'q"uote\\\\', path: /mnt/quote}
  - {tag: media, path: /mnt/media}
"""
TAGS = ["my tag:1", 'q"uote\\', "media", "other"]


def host_config(path: Path, *args: str, code: int = 0):
    result = cli_runner().invoke(main, ["host-config", str(path), *args])
    assert result.exit_code == code, result.output
    return result


def mounts_planned(tree: FakeTree) -> dict[str, tuple[str | None, tuple[str, ...]]]:
    sysroot = SysRoot(tree.root)
    actions = plan(discover(sysroot, pci=False), load_policy(sysroot), [])
    return {a.tag: (a.path, a.options) for a in actions if a.kind is ActionKind.MOUNT}


@pytest.fixture
def policy(tmp_path: Path) -> Path:
    path = tmp_path / "host, dir" / "policy.yaml"
    path.parent.mkdir()
    path.write_text(SIMPLE)
    return path


def test_every_route_carries_the_files_bytes(policy: Path):
    data = json.loads(host_config(policy, "--json").stdout)
    prefix = "io.systemd.credential.binary:vfs-agent.policy="
    smbios = data["smbios_type11"]
    assert smbios.startswith(prefix)
    assert base64.b64decode(smbios.removeprefix(prefix)) == policy.read_bytes()
    xml = ET.fromstring(data["libvirt"]["sysinfo"])
    assert xml.tag == "sysinfo" and xml.get("type") == "smbios"
    assert [e.text for e in xml.findall("./oemStrings/entry")] == [smbios]
    assert ET.fromstring(data["libvirt"]["os"]).attrib == {"mode": "sysinfo"}
    assert data["qemu"]["smbios"] == ["-smbios", f"type=11,value={smbios}"]
    # QEMU's option parser: the directory's comma is doubled.
    fw_cfg = data["qemu"]["fw_cfg"]
    assert fw_cfg == [
        "-fw_cfg",
        f"name=opt/io.systemd.credentials/vfs-agent.policy,file={policy.parent}".replace(
            "host, dir", "host,, dir"
        )
        + "/policy.yaml",
    ]
    name, _, value = data["kernel_cmdline"]["credential"].partition("=")
    assert name == "systemd.set_credential_binary"
    cred_name, _, encoded = value.partition(":")
    assert cred_name == "vfs-agent.policy" and base64.b64decode(encoded) == policy.read_bytes()


def test_the_mount_arguments_give_the_same_plan_as_the_file(policy: Path, tmp_path: Path):
    mounts = json.loads(host_config(policy, "--json").stdout)["kernel_cmdline"]["mounts"]
    assert len(mounts) == 3
    by_file = FakeTree(tmp_path / "by-file")
    by_cmdline = FakeTree(tmp_path / "by-cmdline")
    for tree in (by_file, by_cmdline):
        for tag in TAGS:
            tree.virtiofs(tag)
    by_file.policy(policy.read_text())
    by_cmdline.write("proc/cmdline", "root=/dev/vda " + " ".join(mounts) + " quiet\n")
    assert len(mount_arguments(" ".join(mounts))) == 3
    assert mounts_planned(by_cmdline) == mounts_planned(by_file)
    assert mounts_planned(by_file)["my tag:1"] == (
        "/srv/my dir",
        ("nosuid", "nodev", "ro", "noatime"),
    )
    assert load_policy(SysRoot(by_cmdline.root)).warnings == ()


def test_text_output_pastes_as_shell_words(policy: Path):
    out = host_config(policy).stdout
    lines = [line for line in out.splitlines() if line and not line.startswith("#")]
    smbios = next(line for line in lines if line.startswith("-smbios"))
    assert shlex.split(smbios)[0] == "-smbios"
    cmdline = next(line for line in lines if line.startswith("vfs_agent.mount="))
    assert len(split(cmdline)) == 3  # the kernel splits it into the three arguments


def test_a_policy_with_globs_or_defaults_needs_the_credential(tmp_path: Path):
    path = tmp_path / "p.yaml"
    path.write_text(
        "version: 1\ndefaults: {unknown: ignore}\nmounts:\n"
        '  - {tag: "data-*", path: "/srv/{tag}"}\n  - {tag: a, path: /a, required: true}\n'
    )
    data = json.loads(host_config(path, "--json").stdout)["kernel_cmdline"]
    assert data["mounts"] == []
    assert data["mounts_unusable_because"] == [
        "defaults (unknown) have no command-line form",
        "rule 2 ('a'): 'required', 'device_timeout' and 'mount_timeout' have no command-line form",
    ]
    assert "no vfs_agent.mount= form: defaults (unknown)" in host_config(path).stdout


def test_an_invalid_policy_exits_2_with_its_line(tmp_path: Path):
    path = tmp_path / "bad.yaml"
    path.write_text("version: 1\nmounts:\n  - {tag: a, path: rel}\n")
    result = host_config(path, code=2)
    assert f"{path}:3:" in result.stderr and "is not absolute" in result.stderr


def test_the_readme_libvirt_domain_is_complete_and_its_credential_valid(tmp_path: Path):
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    xml_text = readme.split("```xml\n", 1)[1].split("```", 1)[0]
    domain = ET.fromstring(xml_text)
    backing = domain.find("memoryBacking")
    assert backing is not None and backing.find("access").get("mode") == "shared"  # type: ignore[union-attr]
    assert domain.find("os/smbios").get("mode") == "sysinfo"  # type: ignore[union-attr]
    shares = [
        (fs.find("driver").get("type"), fs.find("target").get("dir"))  # type: ignore[union-attr]
        for fs in domain.findall("devices/filesystem")
    ]
    assert shares == [("virtiofs", "media_tag"), ("virtiofs", "scratch")]
    (entry,) = [e.text or "" for e in domain.findall("sysinfo/oemStrings/entry")]
    policy = tmp_path / "policy.yaml"
    policy.write_bytes(base64.b64decode(entry.split("=", 1)[1]))
    assert json.loads(host_config(policy, "--json").stdout)["smbios_type11"] == entry
    tree = FakeTree(tmp_path / "root")
    tree.virtiofs("media_tag")
    tree.virtiofs("scratch")
    tree.write("run/credentials/@system/vfs-agent.policy", policy.read_bytes(), mode=0o400)
    assert mounts_planned(tree) == {  # what the README says this domain gets
        "media_tag": ("/mnt/media", ("nosuid", "nodev", "ro")),
        "scratch": ("/mnt/virtiofs/scratch", ("nosuid", "nodev")),
    }
