"""The host's policy layers: the systemd credential vfs-agent.policy and vfs_agent.mount= on the
kernel command line; their order against the image's files and cloud-init's drop-in; invalid
ones reported and left out; the compiled cache, the generator, plan and status."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from clirunner import cli_runner
from faketree import FakeTree, run_generator

from vfs_agent.commands.cli import main
from vfs_agent.core.plan import ActionKind, plan
from vfs_agent.policy.cmdline import escape_field, mount_arguments, parse_value, split
from vfs_agent.policy.compiled import load as load_cached
from vfs_agent.policy.layers import CMDLINE_LAYER, CREDENTIAL_LAYER
from vfs_agent.policy.load import PolicyError, load_policy
from vfs_agent.system.discovery import discover
from vfs_agent.system.sysroot import SysRoot

CRED_DIR = "run/credentials/@system"
CREDENTIAL = """\
version: 1
defaults: {mount_root: /srv/host}
mounts:
  - {tag: media_tag, path: /mnt/from-credential, options: [ro]}
  - {tag: cmd_tag, path: /mnt/cred-cmd}
"""


def credential(tree: FakeTree, text: str, directory: str = CRED_DIR) -> None:
    tree.write(f"{directory}/vfs-agent.policy", text, mode=0o400)


def cmdline(tree: FakeTree, text: str) -> None:
    tree.write("proc/cmdline", text + "\n")


@pytest.fixture
def tree(fake_tree: FakeTree) -> FakeTree:
    tree = fake_tree
    for tag in ("media_tag", "cmd_tag", "other", "ci_tag"):
        tree.virtiofs(tag)
    cmdline(tree, "BOOT_IMAGE=/vmlinuz root=/dev/vda ro quiet")
    return tree


def planned(tree: FakeTree) -> dict[str, tuple[str | None, str | None]]:
    """tag -> (path, deciding layer) of every share the plan mounts."""
    sysroot = SysRoot(tree.root)
    actions = plan(discover(sysroot, pci=False), load_policy(sysroot), [])
    return {a.tag: (a.path, a.source_file) for a in actions if a.kind is ActionKind.MOUNT}


# -- the kernel command line syntax ------------------------------------------------------------


def test_split_follows_the_kernels_quoting():
    text = 'a=1  "vfs_agent.mount=my tag:/srv/my dir" b="x y" c'
    assert split(text) == [
        (1, "a=1"),
        (6, "vfs_agent.mount=my tag:/srv/my dir"),
        (43, "b=x y"),
        (51, "c"),
    ]


def test_mount_arguments_accept_dash_or_underscore_and_repeat():
    args = mount_arguments("vfs_agent.mount=a:/a vfs-agent.mount=b:/b vfs_agent.mountx=c:/c x=1")
    assert [(a.column, a.value) for a in args] == [(1, "a:/a"), (22, "b:/b")]


@pytest.mark.parametrize(
    ("value", "tag", "path", "options"),
    [
        ("media:/mnt/media", "media", "/mnt/media", ()),
        ("media:/mnt/media:ro,noatime", "media", "/mnt/media", ("ro", "noatime")),
        ("a\\x3ab:/srv/a\\x3ab", "a:b", "/srv/a:b", ()),
        ("my\\x20tag:/srv/my\\x20dir", "my tag", "/srv/my dir", ()),
        ("back\\x5cslash:/x", "back\\slash", "/x", ()),
        ("\\xc3\\xbc:/srv/\\xc3\\xbc", "ü", "/srv/ü", ()),
        ("ü:/srv/ü", "ü", "/srv/ü", ()),
    ],
)
def test_values_and_escapes(value: str, tag: str, path: str, options: tuple[str, ...]):
    spec = parse_value(value)
    assert (spec.tag, spec.path, spec.options) == (tag, path, options)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "no value"),
        ("media", "no ':' between the tag and the path"),
        ("a:/b:ro:x", "more than two ':'"),
        (":/b", "the tag is empty"),
        ("a:", "the path is empty"),
        ("a:/b:", "an empty mount option"),
        ("a:/b:ro,,rw", "an empty mount option"),
        ("a\\n:/b", "has a backslash that is not \\xHH"),
        ("a\\x4:/b", "has a backslash that is not \\xHH"),
        ("\\xff:/b", "is not UTF-8"),
    ],
)
def test_bad_values_say_what_to_write(value: str, message: str):
    with pytest.raises(ValueError) as info:
        parse_value(value)
    assert message in str(info.value)


@pytest.mark.parametrize("text", ["a:b", "we ird\t#1", 'q"uote\\', "ü:x", "\x01"])
def test_escape_field_round_trips(text: str):
    assert parse_value(f"{escape_field(text)}:/p").tag == text
    escaped = escape_field(text)
    assert not any(c in escaped for c in ': "\t')


# -- layers and their order --------------------------------------------------------------------


def test_credential_sits_above_the_image_files(tree: FakeTree):
    tree.policy("version: 1\nmounts:\n  - {tag: media_tag, path: /mnt/image}\n")
    tree.policy("version: 1\ndefaults: {mount_root: /srv/dropin}\n", "policy.d/10-local.yaml")
    credential(tree, CREDENTIAL)
    policy = load_policy(SysRoot(tree.root))
    assert policy.files == (
        "/etc/vfs-agent/policy.yaml",
        "/etc/vfs-agent/policy.d/10-local.yaml",
        CREDENTIAL_LAYER,
    )
    assert policy.warnings == ()
    got = planned(tree)
    assert got["media_tag"] == ("/mnt/from-credential", CREDENTIAL_LAYER)
    assert got["other"] == ("/srv/host/other", "the built-in default")  # mount_root: credential


def test_cmdline_sits_above_the_credential_and_below_cloud_init(tree: FakeTree):
    credential(tree, CREDENTIAL)
    cmdline(
        tree,
        'root=/dev/vda "vfs_agent.mount=cmd_tag:/mnt/from cmdline:ro" '
        "vfs_agent.mount=ci_tag:/mnt/ci-cmdline vfs_agent.mount=other:/mnt/o\\x3ather",
    )
    tree.policy(
        "version: 1\nmounts:\n  - {tag: ci_tag, path: /mnt/ci}\n", "policy.d/50-cloud-init.yaml"
    )
    tree.policy("version: 1\ndefaults: {unknown: ignore}\n", "policy.d/90-late.yaml")
    policy = load_policy(SysRoot(tree.root))
    assert policy.files == (
        "/etc/vfs-agent/policy.d/90-late.yaml",  # an image file, though it sorts after 50-
        CREDENTIAL_LAYER,
        CMDLINE_LAYER,
        "/etc/vfs-agent/policy.d/50-cloud-init.yaml",
    )
    got = planned(tree)
    assert got == {
        "media_tag": ("/mnt/from-credential", CREDENTIAL_LAYER),
        "cmd_tag": ("/mnt/from cmdline", CMDLINE_LAYER),
        "other": ("/mnt/o:ther", CMDLINE_LAYER),
        "ci_tag": ("/mnt/ci", "/etc/vfs-agent/policy.d/50-cloud-init.yaml"),
    }
    sysroot = SysRoot(tree.root)
    actions = plan(discover(sysroot, pci=False), policy, [])
    cmd = next(a for a in actions if a.tag == "cmd_tag")
    assert cmd.options == ("nosuid", "nodev", "ro")
    assert cmd.rule == f"rule 1 ('cmd_tag') in {CMDLINE_LAYER}"


def test_an_invalid_credential_is_reported_by_line_and_ignored(tree: FakeTree):
    tree.policy("version: 1\nmounts:\n  - {tag: media_tag, path: /mnt/image}\n")
    credential(tree, "version: 1\nmounts:\n  - tag: media_tag\n    path: relative\n")
    policy = load_policy(SysRoot(tree.root))  # no PolicyError: the boot goes on
    assert policy.warnings == (
        f"{CREDENTIAL_LAYER}:4:11: mounts[0].path: path 'relative' is not absolute",
        f"{CREDENTIAL_LAYER}: invalid, ignoring it; the other policy layers still apply.",
    )
    assert policy.files == ("/etc/vfs-agent/policy.yaml",)
    assert planned(tree)["media_tag"] == ("/mnt/image", "/etc/vfs-agent/policy.yaml")


def test_a_credential_that_is_not_yaml_or_utf8_is_ignored(tree: FakeTree):
    credential(tree, b"\xff\xfe")
    policy = load_policy(SysRoot(tree.root))
    assert policy.warnings[0].startswith(f"{CREDENTIAL_LAYER}: cannot read ")
    credential(tree, "version: 1\nmounts: [")
    assert load_policy(SysRoot(tree.root)).warnings[0].startswith(f"{CREDENTIAL_LAYER}:2:")


def test_invalid_file_still_fails_while_host_layers_only_warn(tree: FakeTree):
    tree.policy("version: 2\n")
    credential(tree, CREDENTIAL)
    with pytest.raises(PolicyError):
        load_policy(SysRoot(tree.root))


def test_bad_cmdline_arguments_are_each_reported_and_left_out(tree: FakeTree):
    text = (
        "quiet vfs_agent.mount=media_tag vfs_agent.mount=cmd_tag:relative "
        "vfs_agent.mount=other:/proc/x vfs_agent.mount=cmd_tag:/mnt/ok:nofail "
        "vfs_agent.mount=ci_tag:/mnt/ci vfs_agent.mount=ci_tag:/mnt/again"
    )
    cmdline(tree, text)
    policy = load_policy(SysRoot(tree.root))
    col = {v: text.index(v) + 1 for v in text.split()}
    w = policy.warnings
    assert len(w) == 5, w
    assert w[0] == (
        f"kernel command line:1:{col['vfs_agent.mount=media_tag']}: vfs_agent.mount=media_tag: "
        "no ':' between the tag and the path; write vfs_agent.mount=TAG:PATH[:OPTIONS], "
        "with \\x3a for a ':' in TAG or PATH; ignoring this argument."
    )
    assert "vfs_agent.mount=cmd_tag:relative: path: path 'relative' is not absolute" in w[1]
    assert "vfs_agent.mount=other:/proc/x: path: " in w[2]
    assert "mount option 'nofail'" in w[3]
    assert f"tag 'ci_tag' is already given by the argument at column {col[text.split()[5]]}" in w[4]
    assert planned(tree) == {
        "media_tag": ("/mnt/virtiofs/media_tag", "the built-in default"),
        "cmd_tag": ("/mnt/virtiofs/cmd_tag", "the built-in default"),
        "other": ("/mnt/virtiofs/other", "the built-in default"),
        "ci_tag": ("/mnt/ci", CMDLINE_LAYER),
    }


def test_explicit_policy_reads_no_host_layer(tree: FakeTree, tmp_path: Path):
    credential(tree, CREDENTIAL)
    cmdline(tree, "vfs_agent.mount=cmd_tag:/x")
    path = tree.policy("version: 1\n", "policy.d/only.yaml")
    policy = load_policy(SysRoot(tree.root), "/etc/vfs-agent/policy.d/only.yaml")
    assert policy.files == ("/etc/vfs-agent/policy.d/only.yaml",) and path.exists()


# -- the compiled cache and the generator ------------------------------------------------------


def test_the_cache_is_stale_when_a_host_layer_changes(tree: FakeTree):
    sysroot = SysRoot(tree.root)
    credential(tree, CREDENTIAL)
    load_policy(sysroot, save_compiled=True)
    cached = load_cached(sysroot)
    assert cached is not None and cached.files == (CREDENTIAL_LAYER,)
    credential(tree, CREDENTIAL.replace("/mnt/from-credential", "/mnt/changed"))
    assert load_cached(sysroot) is None
    load_policy(sysroot, save_compiled=True)
    cmdline(tree, "quiet vfs_agent.mount=other:/mnt/o")
    assert load_cached(sysroot) is None
    load_policy(sysroot, save_compiled=True)
    cmdline(tree, "quiet splash vfs_agent.mount=other:/mnt/o")  # another argument moved it
    assert load_cached(sysroot) is None
    load_policy(sysroot, save_compiled=True)
    assert load_cached(sysroot) is not None
    os.unlink(tree.root / CRED_DIR / "vfs-agent.policy")
    assert load_cached(sysroot) is None


def test_the_cache_keeps_the_warnings(tree: FakeTree):
    sysroot = SysRoot(tree.root)
    credential(tree, "version: 3\n")
    fresh = load_policy(sysroot, save_compiled=True)
    cached = load_cached(sysroot)
    assert cached is not None and cached.warnings == fresh.warnings != ()


def test_generator_reads_credentials_directory_and_logs_bad_layers(tree: FakeTree, tmp_path: Path):
    credential(tree, CREDENTIAL, directory="run/creds-of-generator")
    cmdline(tree, "vfs_agent.mount=other:/srv/o vfs_agent.mount=bad")
    out = tmp_path / "out"
    env = {"CREDENTIALS_DIRECTORY": "/run/creds-of-generator"}
    done = run_generator(tree.root, out, env=env)
    assert done.returncode == 0, done.stderr
    units = sorted(p.name for p in out.glob("*.mount"))
    assert units == [
        "mnt-cred\\x2dcmd.mount",
        "mnt-from\\x2dcredential.mount",
        "srv-host-ci_tag.mount",
        "srv-o.mount",
    ]
    kmsg = (tree.root / "kmsg").read_text()
    assert "<3>vfs-agent-generator: kernel command line:1:30: vfs_agent.mount=bad: no ':'" in kmsg
    # Without $CREDENTIALS_DIRECTORY: systemd's /run/credentials/@system, which has none here.
    out = tmp_path / "out2"
    done = run_generator(tree.root, out, env={})
    assert sorted(p.name for p in out.glob("*.mount")) == [
        "mnt-virtiofs-ci_tag.mount",
        "mnt-virtiofs-cmd_tag.mount",
        "mnt-virtiofs-media_tag.mount",
        "srv-o.mount",
    ]


def test_generator_logs_an_invalid_credential_and_still_writes_units(
    tree: FakeTree, tmp_path: Path
):
    credential(tree, "version: 1\nmounts:\n  - {tag: media_tag, pth: /x}\n")
    out = tmp_path / "out"
    done = run_generator(tree.root, out, env={"CREDENTIALS_DIRECTORY": f"/{CRED_DIR}"})
    assert done.returncode == 0
    kmsg = (tree.root / "kmsg").read_text()
    assert f"<3>vfs-agent-generator: {CREDENTIAL_LAYER}:3:22: mounts[0].pth: unknown key" in kmsg
    assert f"{CREDENTIAL_LAYER}: invalid, ignoring it" in kmsg
    assert len(list(out.glob("*.mount"))) == 4  # zero-config goes on


# -- plan, status and policy check say it ------------------------------------------------------


def test_plan_status_and_check_name_the_layers(tree: FakeTree):
    credential(tree, CREDENTIAL)
    cmdline(tree, "vfs_agent.mount=cmd_tag:/mnt/c vfs_agent.mount=oops")

    def run(*args: str) -> tuple[str, str]:
        result = cli_runner().invoke(main, ["--root", str(tree.root), *args])
        assert result.exit_code == 0, result.output
        return result.stdout, result.stderr

    out, err = run("plan", "--json")
    data = json.loads(out)
    assert data["policy_files"] == [CREDENTIAL_LAYER, CMDLINE_LAYER]
    layers = {a["tag"]: a["layer"] for a in data["actions"]}
    assert layers == {
        "media_tag": CREDENTIAL_LAYER,
        "cmd_tag": CMDLINE_LAYER,
        "other": "the built-in default",
        "ci_tag": "the built-in default",
    }
    assert "vfs_agent.mount=oops" in data["policy_warnings"][0]
    assert "warning: kernel command line:1:32: vfs_agent.mount=oops" in err
    out, _ = run("status", "--json")
    status = {s["tag"]: s["layer"] for s in json.loads(out)["shares"]}
    assert status == layers
    out, _ = run("status")
    assert CMDLINE_LAYER in out and "DECIDED BY" in out
    out, err = run("policy", "check")
    assert f"policy is valid: {CREDENTIAL_LAYER}, {CMDLINE_LAYER}" in out
    assert "vfs_agent.mount=oops" in err


def test_globs_and_hostile_bytes_on_the_command_line(tree: FakeTree):
    tree.virtiofs("data-1")
    tree.write(
        "proc/cmdline",
        b"vfs_agent.mount=data-*:/srv/data/{tag} vfs_agent.mount=\xff\x1b[2J:/x "
        b"vfs_agent.mount=data-*:/srv/one\n",
    )
    policy = load_policy(SysRoot(tree.root))
    assert len(policy.warnings) == 2
    assert (
        "vfs_agent.mount=\\udcff\\x1b[2J:/x: the tag '\\udcff\\x1b[2J' is not UTF-8"
        in (policy.warnings[0])
    )
    assert "must contain {tag}" in policy.warnings[1]
    assert all(w.isprintable() for w in policy.warnings)
    assert planned(tree)["data-1"] == ("/srv/data/data-1", CMDLINE_LAYER)
