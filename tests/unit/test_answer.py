"""The wait for a virtio-fs share's host to answer before its generated mount unit runs
(answer.py, render_systemd.py): the deadline, what it says, the record status reads, and the
units. A real dead virtiofsd needs a guest: tests/guest/test_dead_backend_boot.py."""

from __future__ import annotations

import errno
import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from faketree import FakeTree

from vfs_agent.commands.cli import main
from vfs_agent.core.observation import Discovery, Share
from vfs_agent.core.plan import plan
from vfs_agent.core.render_systemd import render_units
from vfs_agent.core.transport import Transport
from vfs_agent.policy.load import parse_text
from vfs_agent.policy.schema import to_section
from vfs_agent.policy.types import merge
from vfs_agent.system import answer

POLICY = """\
version: 1
defaults: {mount_timeout: 12}
mounts:
  - {tag: fast, path: /srv/fast, required: true, mount_timeout: 3}
  - {tag: "odd tag%", path: /srv/odd}
  - {tag: nine, path: /srv/nine}
"""


def units() -> dict[str, str]:
    policy = merge([to_section("/etc/vfs-agent/policy.yaml", parse_text(POLICY, "p.yaml"))])
    shares = (
        Share("fast", Transport.VIRTIOFS, "virtio1"),
        Share("odd tag%", Transport.VIRTIOFS, "virtio2"),
        Share("nine", Transport.NINEP, "virtio3"),
    )
    rendered, skipped = render_units(
        plan(Discovery(shares, True), policy, []), "t", bind_device=True
    )
    assert not skipped
    files = {u.name: u.text for u in rendered}
    files.update({e.relpath: e.text for u in rendered for e in u.extras if e.link_to is None})
    return files


def test_every_virtio_fs_unit_waits_for_its_host_with_its_own_timeout() -> None:
    files = units()
    fast = files["srv-fast.mount"]
    assert "Requires=vfs-agent-answer@srv-fast.service\n" in fast
    assert "After=vfs-agent-answer@srv-fast.service\n" in fast
    waits = files["vfs-agent-answer@srv-fast.service"]
    assert waits.endswith(f" -I -m vfs_agent.system.answer {b'fast'.hex()} 3\n")  # the rule's 3 s
    assert "TimeoutStartSec=33s\n" in waits and "KillMode=process\n" in waits
    assert "Before=srv-fast.mount\n" in waits
    # defaults.mount_timeout; the tag in hex, so nothing in it reaches the command line.
    odd = files["vfs-agent-answer@srv-odd.service"]
    assert odd.endswith(f" {b'odd tag%'.hex()} 12\n")
    assert "Description=Wait for the host to answer virtio-fs share odd tag%%\n" in odd
    # 9p has no FUSE_INIT to wait for.
    assert "vfs-agent-answer@srv-nine.service" not in files
    assert "Requires=" not in files["srv-nine.mount"]


def test_a_host_that_never_answers_fails_after_the_timeout(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(answer, "MOUNTPOINT", str(tmp_path / "mnt"))
    monkeypatch.setattr(answer, "UNANSWERED_DIR", str(tmp_path / "unanswered"))
    monkeypatch.setattr(answer, "_probe", lambda tag: time.sleep(60) or 0)  # a dead virtiofsd
    started = time.monotonic()
    assert answer.main([b"dead".hex(), "1"]) == 1
    assert time.monotonic() - started < 5
    err = capsys.readouterr().err
    assert err.startswith("Share 'dead' is not usable: its host did not answer within 1 s")
    assert (tmp_path / "unanswered" / b"dead".hex()).read_text() == "1\n"
    # It answers later (the host is back): the record goes.
    monkeypatch.setattr(answer, "_probe", lambda tag: 0)
    assert answer.main([b"dead".hex(), "1"]) == 0
    assert not (tmp_path / "unanswered" / b"dead".hex()).exists()


def test_a_mount_error_is_explained(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(answer, "MOUNTPOINT", str(tmp_path / "mnt"))
    monkeypatch.setattr(answer, "_probe", lambda tag: errno.ENOENT)
    assert answer.main([b"gone".hex(), "5"]) == 1
    assert "the kernel has no virtio-fs share with tag 'gone'" in capsys.readouterr().err
    assert answer.main(["not hex", "5"]) == 2


def test_status_reports_a_share_whose_host_did_not_answer(tmp_path: Path) -> None:
    tree = FakeTree(tmp_path / "root")
    tree.policy("version: 1\nmounts:\n  - {tag: dead, path: /srv/dead, required: true}\n")
    tree.virtiofs("dead")
    tree.virtiofs("alive")
    tree.write(f"run/vfs-agent/unanswered/{b'dead'.hex()}", "30\n")
    tree.write("run/vfs-agent/unanswered/not-hex", "30\n")  # ignored
    result = CliRunner().invoke(main, ["--root", str(tree.root), "status", "--json"])
    assert result.exit_code == 0, result.output
    shares = {s["tag"]: s for s in json.loads(result.output)["shares"]}
    assert shares["dead"]["health"] == "unresponsive"
    assert shares["dead"]["detail"].startswith(
        "its host did not answer within 30 s when it was to be mounted on /srv/dead"
    )
    assert shares["alive"]["health"] == "not-mounted"


def test_mount_timeout_is_validated(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\ndefaults: {mount_timeout: 0}\n")
    result = CliRunner().invoke(main, ["policy", "check", str(bad)])
    assert result.exit_code == 2
    assert "defaults.mount_timeout" in result.output


def test_a_share_no_longer_wanted_loses_its_wait_unit(tmp_path: Path) -> None:
    tree = FakeTree(tmp_path / "root")
    tree.policy("version: 1\nmounts:\n  - {tag: a, path: /srv/a}\n  - {tag: b, path: /srv/b}\n")
    out = tmp_path / "units"
    out.mkdir()
    (out / "vfs-agent-answer@srv-hand.service").write_text("[Service]\n")  # not ours
    root = ["--root", str(tree.root)]
    assert (
        CliRunner().invoke(main, [*root, "generate", "systemd", "--output", str(out)]).exit_code
        == 0
    )
    assert (out / "vfs-agent-answer@srv-b.service").exists()
    tree.policy("version: 1\nmounts:\n  - {tag: a, path: /srv/a}\n")
    assert (
        CliRunner().invoke(main, [*root, "generate", "systemd", "--output", str(out)]).exit_code
        == 0
    )
    assert sorted(p.name for p in out.glob("*.service")) == [
        "vfs-agent-answer@srv-a.service",
        "vfs-agent-answer@srv-hand.service",
    ]
