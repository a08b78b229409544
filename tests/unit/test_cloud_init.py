"""`vfs-agent cloud-init apply` against a fake `cloud-init query`, a fake system tree and a
recording mounter: no cloud-init, systemctl or mount(2) on the host."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from faketree import FakeTree, write_policy
from test_apply import RecordingKernel
from test_cloud_config import BROKEN

from vfs_agent.commands import cloud_init
from vfs_agent.commands import operations as ops
from vfs_agent.commands.cli import main
from vfs_agent.commands.cloud_init import DROPIN, apply
from vfs_agent.commands.install import Layout
from vfs_agent.execute.apply import Executors
from vfs_agent.policy import cloud_config
from vfs_agent.policy.cloud_config import CloudInitError
from vfs_agent.policy.document import parse_text
from vfs_agent.policy.load import PolicyError, load_file, load_policy
from vfs_agent.system import cloud_init as cloud_init_edges
from vfs_agent.system.sysroot import SysRoot
from vfs_agent.system.tools import ToolError

USER_DATA = """\
#cloud-config
runcmd:
  - [sh, -c, "findmnt -t virtiofs > /run/shares.txt"]
vfs_agent:
  version: 1
  defaults:
    options: [nosuid, nodev, noatime]
  mounts:
    - tag: media_tag
      path: /mnt/media
      options: [ro]
"""

REPO = Path(__file__).resolve().parents[2]


def query_json(user_data: str | None, combined: dict[str, Any] | str | None = "parse") -> str:
    """What `cloud-init query --all` prints as root: keys sorted, merged config included."""
    merged = yaml.safe_load(user_data) if combined == "parse" and user_data else combined
    data = {"combined_cloud_config": merged, "userdata": user_data, "v1": {"cloud_name": "nocloud"}}
    return json.dumps(data, sort_keys=True)


class Out:
    def __init__(self) -> None:
        self.infos: list[str] = []
        self.errors: list[str] = []

    def info(self, message: str) -> None:
        self.infos.append(message)

    def error(self, message: str) -> None:
        self.errors.append(message)


class Harness:
    """One boot's worth of edges: the query answer, systemctl calls, mounts."""

    def __init__(self, tree: FakeTree) -> None:
        self.tree = tree
        self.ctx = ops.Context(SysRoot(tree.root))
        self.mounter = RecordingKernel()
        self.systemctl: list[list[str]] = []
        self.out = Out()

    def run(self, answer: str | Exception) -> int:
        def query() -> str:
            if isinstance(answer, Exception):
                raise answer
            return answer

        def systemctl(args: list[str]) -> str | None:
            self.systemctl.append(args)
            return None

        self.out = Out()
        self.systemctl = []
        return apply(
            self.ctx,
            query=query,
            systemctl=systemctl,
            mount_all=lambda ctx: ops.mount_all(
                ctx, Executors.pick(ctx.sysroot, dry_run=False, kernel=self.mounter)
            ),
            out=self.out,
        )

    @property
    def dropin(self) -> Path:
        return self.tree.root / DROPIN.lstrip("/")


@pytest.fixture
def boot(tmp_path: Path) -> Harness:
    tree = FakeTree(tmp_path / "root")
    tree.virtiofs("media_tag")
    tree.virtiofs("other")
    return Harness(tree)


def test_valid_key_writes_the_dropin_and_mounts_its_shares(boot: Harness) -> None:
    assert boot.run(query_json(USER_DATA)) == 0
    assert boot.out.errors == []
    st = os.stat(boot.dropin)
    assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o644, os.geteuid())
    assert stat.S_IMODE(os.stat(boot.dropin.parent).st_mode) == 0o755
    text = boot.dropin.read_text()
    assert text.startswith("# Written at every boot by 'vfs-agent cloud-init apply'")
    # Schema order again, although cloud-init query sorts the keys.
    assert list(yaml.safe_load(text)) == ["version", "defaults", "mounts"]
    assert yaml.safe_load(text) == yaml.safe_load(USER_DATA)["vfs_agent"]
    # The drop-in passes `policy check` (modes included) and joins the default policy files.
    load_file(boot.ctx.sysroot, DROPIN)
    assert DROPIN in load_policy(boot.ctx.sysroot).files
    # media_tag where the drop-in says; "other" by the zero-config default (unknown: mount).
    assert [(m[0], m[2]) for m in boot.mounter.mounts] == [
        ("media_tag", "virtiofs"),
        ("other", "virtiofs"),
    ]
    assert boot.mounter.mounts[0][1] == str(boot.tree.root / "mnt/media")
    assert boot.mounter.mounts[1][1] == str(boot.tree.root / "mnt/virtiofs/other")
    assert any("wrote /etc/vfs-agent/policy.d/50-cloud-init.yaml" in m for m in boot.out.infos)
    assert boot.systemctl == [
        ["daemon-reload"],
        ["try-reload-or-restart", "--no-block", "vfs-agent.service"],
    ]
    assert not [p for p in boot.dropin.parent.iterdir() if p.name.startswith(".")]


def test_a_second_boot_with_the_same_user_data_rewrites_nothing(boot: Harness) -> None:
    boot.run(query_json(USER_DATA))
    before = os.stat(boot.dropin)
    assert boot.run(query_json(USER_DATA)) == 0
    assert os.stat(boot.dropin).st_ino == before.st_ino
    assert boot.systemctl == []
    assert any("is up to date" in m for m in boot.out.infos)


def test_invalid_key_exits_0_writes_nothing_and_says_where(boot: Harness) -> None:
    assert boot.run(query_json(BROKEN)) == 0
    assert not boot.dropin.exists()
    assert boot.mounter.mounts == [] and boot.systemctl == []
    # The messages of `policy check`, placed at the lines of the user-data.
    policy_text = yaml.safe_dump(yaml.safe_load(BROKEN)["vfs_agent"], sort_keys=False)
    with pytest.raises(PolicyError) as check:
        parse_text(policy_text, "x")
    expected = {(p.field, p.message) for p in check.value.problems}
    assert len(boot.out.errors) == len(expected) + 1
    assert boot.out.errors[:-1] == [
        "cloud-config vfs_agent:6:13: mounts[0].path: "
        + next(m for f, m in expected if f == "mounts[0].path"),
        "cloud-config vfs_agent:7:7: mounts[0].requird: "
        + next(m for f, m in expected if f == "mounts[0].requird"),
        "cloud-config vfs_agent:9:21: mounts[1].options[1]: "
        + next(m for f, m in expected if f == "mounts[1].options[1]"),
    ]
    assert "did you mean 'required'?" in boot.out.errors[1]
    assert boot.out.errors[-1].startswith("invalid vfs_agent key in the cloud-config user-data")
    assert "did not write /etc/vfs-agent/policy.d/50-cloud-init.yaml" in boot.out.errors[-1]


def test_invalid_key_keeps_the_dropin_of_an_earlier_boot(boot: Harness) -> None:
    boot.run(query_json(USER_DATA))
    before = boot.dropin.read_bytes()
    assert boot.run(query_json(BROKEN)) == 0
    assert boot.dropin.read_bytes() == before
    assert (
        "kept /etc/vfs-agent/policy.d/50-cloud-init.yaml from an earlier boot"
        in (boot.out.errors[-1])
    )


def test_merged_value_without_plain_user_data_shows_field_paths(boot: Harness) -> None:
    merged = {"vfs_agent": {"version": 2, "mounts": [{"tag": ""}]}}
    assert boot.run(query_json("Content-Type: multipart/mixed; ...", merged)) == 0
    assert boot.out.errors[:-1] == [
        "cloud-config vfs_agent: version: unsupported version 2; write 'version: 1'",
        "cloud-config vfs_agent: mounts[0].tag: tag must not be empty",
    ]


@pytest.mark.parametrize("value", [None, [1, 2], "yes", {}])
def test_a_key_that_is_not_a_policy_mapping_is_reported(boot: Harness, value: Any) -> None:
    assert boot.run(query_json(None, {"vfs_agent": value})) == 0
    assert not boot.dropin.exists()
    assert boot.out.errors[0].startswith("cloud-config vfs_agent: ")
    assert len(boot.out.errors) >= 2


def test_absent_key_removes_the_dropin_of_an_earlier_boot(boot: Harness) -> None:
    boot.run(query_json(USER_DATA))
    assert boot.run(query_json("#cloud-config\nruncmd: [true]\n")) == 0
    assert not boot.dropin.exists()
    assert boot.systemctl == [
        ["daemon-reload"],
        ["try-reload-or-restart", "--no-block", "vfs-agent.service"],
    ]
    # media_tag and (zero-config) other, mounted once, at the first boot only
    assert [m[0] for m in boot.mounter.mounts] == ["media_tag", "other"]
    assert boot.run(query_json(None, {})) == 0
    assert boot.out.infos == [
        "the cloud-config has no vfs_agent key and there is no policy; nothing to do"
    ]
    assert boot.systemctl == []


WRITE_FILES_POLICY = "version: 1\nmounts:\n  - {tag: media_tag, path: /mnt/media}\n"


def test_a_policy_from_write_files_is_applied_without_a_key(boot: Harness) -> None:
    """cloud-init's write_files put a file into policy.d before this runs: the generator reruns
    (daemon-reload), the share is mounted, the daemon rereads the policy; at the next boot,
    with the same files, only mount-all runs (idempotent)."""
    write_policy(boot.tree.root / "etc/vfs-agent/policy.d/60-shares.yaml", WRITE_FILES_POLICY)
    assert boot.run(query_json("#cloud-config\nruncmd: [true]\n")) == 0
    # media_tag where the file says; the other share where zero-config puts it.
    assert [m[1] for m in boot.mounter.mounts] == [
        str(boot.tree.root / "mnt/media"),
        str(boot.tree.root / "mnt/virtiofs/other"),
    ]
    assert boot.systemctl == [
        ["daemon-reload"],
        ["try-reload-or-restart", "--no-block", "vfs-agent.service"],
    ]
    assert not boot.out.errors
    # The next boot: the generator ran after the files were written, so no reload.
    generator = boot.tree.root / "run/systemd/generator"
    generator.mkdir(parents=True)
    later = time.time() + 10
    os.utime(generator, (later, later))
    assert boot.run(query_json("#cloud-config\nruncmd: [true]\n")) == 0
    assert boot.systemctl == []
    # A file written after the generator ran (write_files in this boot): reload again.
    policy = boot.tree.root / "etc/vfs-agent/policy.d/60-shares.yaml"
    os.utime(policy, (later + 1, later + 1))
    assert boot.run(query_json("#cloud-config\nruncmd: [true]\n")) == 0
    assert boot.systemctl[0] == ["daemon-reload"]


def test_a_broken_policy_from_write_files_is_reported_and_the_boot_goes_on(
    boot: Harness,
) -> None:
    broken = "version: 1\nmounts:\n  - tag: media_tag\n    path: relative/oops\n"
    name = "/etc/vfs-agent/policy.d/60-shares.yaml"
    write_policy(boot.tree.root / name.lstrip("/"), broken)
    assert boot.run(query_json("#cloud-config\nruncmd: [true]\n")) == 0
    assert (
        boot.out.errors[0] == f"{name}:4:11: mounts[0].path: path 'relative/oops' is not absolute"
    )
    assert "no share was mounted" in boot.out.errors[-1]
    assert boot.mounter.mounts == [] and boot.systemctl == []


def test_cloud_init_query_failure_changes_nothing(boot: Harness) -> None:
    boot.run(query_json(USER_DATA))
    before = boot.dropin.read_bytes()
    assert boot.run(CloudInitError("cloud-init query --all exited 1: no instance data")) == 0
    assert boot.run("not json") == 0
    assert boot.dropin.read_bytes() == before
    assert boot.out.errors[0].startswith("cannot read the cloud-config: cloud-init query printed")


def test_old_cloud_init_falls_back_to_plain_cloud_config_user_data(boot: Harness) -> None:
    assert boot.run(query_json(USER_DATA, None)) == 0
    assert boot.dropin.exists()
    assert boot.run(query_json("#!/bin/sh\necho hi\n", None)) == 0
    assert "combined_cloud_config needs cloud-init 23.3" in boot.out.errors[0]
    assert boot.dropin.exists()  # nothing changed


def test_a_required_share_that_fails_makes_the_unit_fail(boot: Harness) -> None:
    data = {"vfs_agent": {"version": 1, "mounts": [{"tag": "missing", "required": True}]}}
    assert boot.run(query_json(None, data)) == 1
    assert boot.dropin.exists()


def test_an_invalid_main_policy_is_reported_and_fails(boot: Harness) -> None:
    boot.tree.policy("version: 7\n")
    assert boot.run(query_json(USER_DATA)) == 1
    assert boot.out.errors[-1] == "the policy is invalid: no share was mounted"


def test_a_failed_write_leaves_the_old_dropin_and_no_temporary_file(
    boot: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    boot.run(query_json(USER_DATA))
    before = boot.dropin.read_bytes()

    def broken_replace(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    other = query_json(None, {"vfs_agent": {"version": 1}})
    assert boot.run(other) == 1
    assert boot.out.errors == [
        f"cannot update {DROPIN}: No space left on device; nothing was changed"
    ]
    assert boot.dropin.read_bytes() == before
    assert sorted(p.name for p in boot.dropin.parent.iterdir()) == ["50-cloud-init.yaml"]


def test_boot_reporter_appends_to_cloud_init_output_log(tmp_path: Path) -> None:
    tree = FakeTree(tmp_path)
    log = tree.write("var/log/cloud-init-output.log", "Cloud-init v. 25.1 finished\n")
    reporter = cloud_init_edges.BootReporter(SysRoot(tmp_path))
    reporter.error("cloud-config vfs_agent: version: this key is required")
    reporter.info("wrote it")
    assert log.read_text().splitlines()[1:] == [
        "vfs-agent: error: cloud-config vfs_agent: version: this key is required",
        "vfs-agent: wrote it",
    ]


def test_cli_wiring(boot: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cloud_init, "run_query", lambda: query_json(BROKEN))
    root = ["--root", str(boot.tree.root)]
    result = CliRunner().invoke(main, [*root, "cloud-init", "apply"])
    assert result.exit_code == 0, result.output
    assert not boot.dropin.exists()
    result = CliRunner().invoke(main, [*root, "--policy", "/x.yaml", "cloud-init", "apply"])
    assert result.exit_code == 2
    assert "drop --policy" in result.output


def test_the_unit_is_ordered_inside_cloud_init_and_installed_everywhere() -> None:
    layout = Layout("/usr", "/usr/bin/python3", "/usr/bin")
    dests = [dest for _, dest, _ in layout.files()]
    assert "/usr/lib/systemd/system/vfs-agent-cloud-init.service" in dests
    unit = layout.render("vfs-agent-cloud-init.service.in")
    lines = unit.splitlines()
    for line in (
        "After=cloud-config.target cloud-config.service",
        "Before=cloud-final.service",
        "ConditionPathExists=!/etc/cloud/cloud-init.disabled",
        "Type=oneshot",
        "ExecStart=/usr/bin/vfs-agent cloud-init apply",
        "WantedBy=cloud-init.target",
    ):
        assert line in lines
    # Ordering only: a Requires=/Wants= on cloud-init's units could pull them in or fail us.
    assert not [line for line in lines if line.startswith(("Requires=", "Wants=", "BindsTo="))]
    assert "@" not in unit


def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    bindir = Path(sys.executable).parent  # where this venv's vfs-agent command is
    assert (bindir / "vfs-agent").exists()
    layout = Layout("/usr", sys.executable, str(bindir))
    unit = tmp_path / "vfs-agent-cloud-init.service"
    unit.write_text(layout.render("vfs-agent-cloud-init.service.in"))
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        env={**os.environ, "SYSTEMD_UNIT_PATH": f"{tmp_path}:"},  # trailing ':' adds the defaults
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(
    "example", sorted((REPO / "packaging/cloud-init/examples").glob("*.yaml")), ids=lambda p: p.name
)
def test_shipped_examples_are_valid(example: Path) -> None:
    user_data = example.read_text()
    assert user_data.startswith("#cloud-config\n")
    config = yaml.safe_load(user_data)
    if "vfs_agent" in config:
        text, problems = cloud_config.dropin_text(config["vfs_agent"], user_data)
        assert problems == [] and text is not None
        return
    policies = [f for f in config["write_files"] if f["path"].startswith("/etc/vfs-agent/")]
    assert policies
    for entry in policies:
        assert entry["path"].endswith(".yaml") and entry["permissions"] == "0644"
        parse_text(entry["content"], entry["path"])


def test_deeply_nested_user_data_is_a_positioned_error_not_a_traceback() -> None:
    deep = "#cloud-config\nvfs_agent:\n  version: 1\n  mounts: " + "[" * 3000 + "]" * 3000 + "\n"
    with pytest.raises(CloudInitError, match=r"user-data:4:\d+: nested deeper than 64 levels"):
        cloud_config.cloud_config(json.dumps({"userdata": deep}))
    value: Any = "x"
    for _ in range(200):  # merged config from cloud-init: already parsed, still too deep
        value = [value]
    text, problems = cloud_config.dropin_text({"version": 1, "mounts": value}, None)
    assert text is None and "nested deeper than 64 levels" in str(problems[0])
    with pytest.raises(CloudInitError, match="nested too deeply"):
        cloud_config.cloud_config("[" * 100_000 + "]" * 100_000)


# -- the edges (system/cloud_init.py) ---------------------------------------------------------


def fake_tool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, script: str) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    tool = bindir / name
    tool.write_text(f"#!/bin/sh\n{script}\n")
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")


def test_the_query_and_systemctl_run_as_tools(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    answer = query_json(USER_DATA)
    fake_tool(
        tmp_path, monkeypatch, "cloud-init", f"[ \"$*\" = 'query --all' ] && cat <<'E'\n{answer}\nE"
    )
    assert json.loads(cloud_init_edges.run_query()) == json.loads(answer)
    fake_tool(tmp_path, monkeypatch, "cloud-init", "echo 'no instance data' >&2; exit 1")
    with pytest.raises(
        ToolError, match=r"^cloud-init query --all failed: exit status 1: no instance data$"
    ):
        cloud_init_edges.run_query()
    fake_tool(tmp_path, monkeypatch, "systemctl", 'echo "$*" >> "$0.log"')
    assert cloud_init_edges.run_systemctl(["daemon-reload"]) is None
    assert (tmp_path / "bin/systemctl.log").read_text() == "daemon-reload\n"
    fake_tool(tmp_path, monkeypatch, "systemctl", "echo 'Access denied' >&2; exit 1")
    assert cloud_init_edges.run_systemctl(["daemon-reload"]) == (
        "systemctl daemon-reload failed: exit status 1: Access denied"
    )


def test_a_failed_reload_is_reported_once_and_the_boot_goes_on(boot: Harness) -> None:
    out = Out()
    code = apply(
        boot.ctx,
        query=lambda: query_json(USER_DATA),
        systemctl=lambda args: f"systemctl {' '.join(args)} failed: Access denied",
        mount_all=lambda ctx: ops.mount_all(
            ctx, Executors.pick(ctx.sysroot, dry_run=False, kernel=boot.mounter)
        ),
        out=out,
    )
    assert code == 0
    assert out.errors == [
        "systemctl daemon-reload failed: Access denied (going on)",
        "systemctl try-reload-or-restart --no-block vfs-agent.service failed: Access denied "
        "(going on)",
    ]


@pytest.mark.parametrize("mode", [0o666, 0o600, 0o664])
def test_a_dropin_with_another_mode_is_rewritten_with_the_policy_modes(
    boot: Harness, mode: int
) -> None:
    boot.run(query_json(USER_DATA))
    os.chmod(boot.dropin, mode)
    assert boot.run(query_json(USER_DATA)) == 0
    assert stat.S_IMODE(os.stat(boot.dropin).st_mode) == 0o644
    assert any(f"wrote {DROPIN}" in m for m in boot.out.infos)
    load_file(boot.ctx.sysroot, DROPIN)  # passes the policy's StrictModes again


def test_a_symlinked_dropin_keeps_its_link_and_gets_the_new_text(boot: Harness) -> None:
    boot.run(query_json(USER_DATA))
    real = boot.dropin.parent / "real-cloud-init.yml"  # not *.yaml: not read as a file itself
    boot.dropin.rename(real)
    boot.dropin.symlink_to(real.name)
    other = {"vfs_agent": {"version": 1, "mounts": [{"tag": "other", "path": "/mnt/o"}]}}
    assert boot.run(query_json(None, other)) == 0
    assert boot.dropin.is_symlink()
    assert yaml.safe_load(real.read_text()) == other["vfs_agent"]
    assert boot.run(query_json(None, other)) == 0  # the same text behind the link: unchanged
    assert any("is up to date" in m for m in boot.out.infos)


def test_policy_files_without_a_key_are_compiled_for_the_generator(boot: Harness) -> None:
    from vfs_agent.policy import compiled as policy_cache

    write_policy(boot.tree.root / "etc/vfs-agent/policy.d/60-shares.yaml", WRITE_FILES_POLICY)
    code = apply(
        boot.ctx,
        query=lambda: query_json("#cloud-config\nruncmd: [true]\n"),
        systemctl=lambda args: None,
        mount_all=lambda ctx: [],  # mount-all compiles too: here only cloud-init apply does
        out=Out(),
    )
    assert code == 0
    cached = policy_cache.load(boot.ctx.sysroot)
    assert cached is not None and cached.files == ("/etc/vfs-agent/policy.d/60-shares.yaml",)
