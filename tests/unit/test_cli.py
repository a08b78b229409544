import json
from pathlib import Path

import pytest
from clirunner import cli_runner
from faketree import FakeTree

from vfs_agent.commands.cli import main
from vfs_agent.core.render_fstab import BLOCK_BEGIN, BLOCK_END

POLICY = """\
version: 1
defaults:
  unknown: mount
mounts:
  - tag: media_tag
    path: /mnt/media
    options: [ro]
"""
TAGS = ["media_tag", "data-1", "weird tag#1", "../escape"]


@pytest.fixture
def tree(fake_tree: FakeTree) -> FakeTree:
    root = fake_tree
    for tag in TAGS:
        root.virtiofs(tag)
    root.policy(POLICY)
    return root


def run(tree: FakeTree, *args: str, code: int = 0):
    result = cli_runner().invoke(main, ["--root", str(tree.root), *args])
    assert result.exit_code == code, result.output + result.stderr
    return result


def test_plan_json_covers_every_tag_with_confined_paths(tree: FakeTree):
    data = json.loads(run(tree, "plan", "--json").stdout)
    paths = {a["tag"]: a["path"] for a in data["actions"]}
    assert paths == {
        "media_tag": "/mnt/media",
        "data-1": "/mnt/virtiofs/data-1",
        "weird tag#1": "/mnt/virtiofs/weird%20tag%231",
        "../escape": "/mnt/virtiofs/%2E.%2Fescape",
    }
    assert {a["action"] for a in data["actions"]} == {"mount"}
    assert data["policy_files"] == ["/etc/vfs-agent/policy.yaml"]


def test_plan_text_says_why(tree: FakeTree):
    out = run(tree, "plan").stdout
    assert "path from rule 1 ('media_tag') in /etc/vfs-agent/policy.yaml" in out
    assert "defaults.unknown is 'mount'" in out


def test_status_reports_health_from_the_mount_table(tree: FakeTree):
    tree.mounted(("virtiofs", "media_tag", "/mnt/media"), ("virtiofs", "data-1", "/elsewhere"))
    data = json.loads(run(tree, "status", "--json").stdout)
    health = {s["tag"]: s["health"] for s in data["shares"]}
    assert health == {
        "media_tag": "mounted",
        "data-1": "mounted-elsewhere",
        "weird tag#1": "not-mounted",
        "../escape": "not-mounted",
    }
    assert data["kernel"]["virtiofs"] == "missing"


def test_mount_all_dry_run_changes_nothing(tree: FakeTree):
    out = run(tree, "mount-all", "--dry-run").stdout
    assert "would mount 'media_tag' on /mnt/media" in out
    assert not (tree.root / "mnt").exists()
    assert not (tree.root / "run/vfs-agent").exists()


def test_mount_all_with_an_absent_required_share_exits_1(tree: FakeTree):
    tree.policy("version: 1\nmounts:\n  - {tag: missing, path: /srv/m, required: true}\n")
    result = run(tree, "mount-all", "--dry-run", "--json", code=1)
    [outcome] = [o for o in json.loads(result.stdout)["outcomes"] if o["tag"] == "missing"]
    assert outcome["action"] == "absent" and not outcome["ok"]


def test_invalid_policy_exits_2_and_names_the_place(tree: FakeTree):
    tree.policy("version: 1\nmounts:\n  - tag: media_tag\n    pth: /mnt/x\n")
    result = run(tree, "mount-all", code=2)
    assert (
        "/etc/vfs-agent/policy.yaml:4:5: mounts[0].pth: unknown key 'pth'; did you mean 'path'?"
        in result.stderr
    )
    assert "nothing was changed" in result.stderr
    assert not (tree.root / "mnt").exists()


def test_generate_fstab_output_keeps_every_other_byte(tree: FakeTree, tmp_path: Path):
    fstab = tmp_path / "fstab"
    original = (
        b"# /etc/fstab\nUUID=abc / ext4 errors=remount-ro 0 1\n\n#trailing comment without newline"
    )
    fstab.write_bytes(original)
    run(tree, "generate", "fstab", "--output", str(fstab))
    first = fstab.read_bytes()
    assert first.startswith(original + b"\n" + BLOCK_BEGIN.encode())
    assert (
        b"weird\\040tag#1 /mnt/virtiofs/weird%20tag%231 virtiofs nosuid,nodev,nofail 0 0" in first
    )
    # A second run with another policy replaces only the block.
    fstab.write_bytes(first + b"/dev/vdb /data ext4 defaults 0 2\n")
    tree.policy(
        "version: 1\ndefaults: {unknown: ignore}\n"
        "mounts:\n  - {tag: media_tag, path: /mnt/m2, required: true}\n"
    )
    run(tree, "generate", "fstab", "--output", str(fstab))
    text = fstab.read_bytes()
    assert (
        text
        == original
        + (
            f"\n{BLOCK_BEGIN}\nmedia_tag /mnt/m2 virtiofs nosuid,nodev 0 0\n{BLOCK_END}\n"
            "/dev/vdb /data ext4 defaults 0 2\n"
        ).encode()
    )


def test_generate_systemd_prints_units_named_by_systemd_escape(tree: FakeTree):
    out = run(tree, "generate", "systemd").stdout
    assert "# mnt-virtiofs-weird\\x2520tag\\x25231.mount" in out
    assert "What=weird tag#1\nWhere=/mnt/virtiofs/weird%%20tag%%231\nType=virtiofs" in out


def test_kernel_exit_code_follows_usability(tree: FakeTree):
    run(tree, "kernel", code=1)
    tree.kernel("6.12.0", filesystems="nodev\tvirtiofs\n")
    data = json.loads(run(tree, "kernel", "--json").stdout)
    assert data["usable"] and data["virtiofs"] == "built-in"


def test_policy_schema_is_json_schema(tree: FakeTree):
    schema = json.loads(run(tree, "policy", "schema").stdout)
    assert schema["properties"]["version"]["const"] == 1
    assert "additionalProperties" in json.dumps(schema)


def test_mount_one_refuses_a_forbidden_path(tree: FakeTree):
    result = run(tree, "mount", "media_tag", "/etc/x", "--dry-run", code=1)
    assert "inside /etc" in result.stdout


def test_umount_of_something_not_mounted_explains(tree: FakeTree):
    result = run(tree, "umount", "media_tag", code=1)
    assert "share 'media_tag' is not mounted" in result.stderr


def test_reports_write_nothing_but_mount_all_compiles_the_policy(tmp_path: Path):
    root = FakeTree(tmp_path / "root")  # no shares attached: mount-all mounts nothing
    root.policy("version: 1\nmounts:\n  - {tag: media_tag, path: /mnt/media}\n")
    for args in (["plan"], ["status"], ["mount-all", "--dry-run"], ["generate", "fstab"]):
        run(root, *args)
        assert not (root.root / "var").exists(), args
    run(root, "mount-all")
    assert (root.root / "var/lib/vfs-agent/policy.json").is_file()


def test_an_unexpected_error_is_one_line_and_vv_adds_its_traceback(
    tree: FakeTree, monkeypatch: pytest.MonkeyPatch
):
    def fail(*args: object) -> None:
        raise RuntimeError("the kernel said something new")

    monkeypatch.setattr("vfs_agent.system.kernel_features.kernel_report", fail)
    quiet = run(tree, "kernel", code=1)
    assert quiet.stderr == "vfs-agent: error: RuntimeError: the kernel said something new\n"
    loud = run(tree, "-vv", "kernel", code=1)
    assert "Traceback (most recent call last):" in loud.stderr
    assert loud.stderr.endswith("vfs-agent: error: RuntimeError: the kernel said something new\n")
