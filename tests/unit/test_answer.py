"""The wait for a virtio-fs share's host to answer before its generated mount unit runs
(answer.py, render_systemd.py): the units, the shell each runs and the one prober that answers
them all, the deadlines, what they say, the record status reads. Only the probe itself is a fake
here; a real dead virtiofsd needs a guest: tests/guest/test_dead_backend_boot.py."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from faketree import FakeTree

from vfs_agent.commands.cli import main
from vfs_agent.commands.install import Layout
from vfs_agent.core.observation import Discovery, Share
from vfs_agent.core.plan import plan
from vfs_agent.core.render_systemd import (
    ANSWER_SCRIPT,
    BOOT_SHARES_VARIABLE,
    exec_word,
    mount_helper_script,
    prober_dropin,
    render_units,
)
from vfs_agent.core.transport import Transport
from vfs_agent.policy.load import parse_text
from vfs_agent.policy.schema import to_section
from vfs_agent.policy.types import merge
from vfs_agent.system import answer
from vfs_agent.systemd.installed import MOUNT_HELPER

REPO = Path(__file__).resolve().parents[2]

POLICY = """\
version: 1
defaults: {mount_timeout: 12}
mounts:
  - {tag: fast, path: /srv/fast, required: true, mount_timeout: 3}
  - {tag: "odd tag%", path: /srv/odd}
  - {tag: nine, path: /srv/nine}
"""


def units(*, mount_helper: bool = False) -> dict[str, str]:
    policy = merge([to_section("/etc/vfs-agent/policy.yaml", parse_text(POLICY, "p.yaml"))])
    shares = (
        Share("fast", Transport.VIRTIOFS, "virtio1"),
        Share("odd tag%", Transport.VIRTIOFS, "virtio2"),
        Share("nine", Transport.NINEP, "virtio3"),
    )
    rendered, skipped = render_units(
        plan(Discovery(shares, True), policy, []),
        "t",
        bind_device=True,
        mount_helper=mount_helper,
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
    python = exec_word(sys.executable, argument=True)
    # The rule's 3 s; the tag in hex, so nothing in it reaches the command line.
    assert waits.endswith(f"' vfs-agent-answer {b'fast'.hex()} 3 {python}\n")
    assert "ExecStart=/bin/sh -c 'd=/run/vfs-agent/answers; " in waits
    assert "TimeoutStartSec=33s\n" in waits and "KillMode=process\n" in waits
    assert "Before=srv-fast.mount\n" in waits
    # The prober is started with the waits, not only by the first request.
    assert "Wants=vfs-agent-prober.socket vfs-agent-prober.service\n" in waits
    assert "After=vfs-agent-prober.socket\n" in waits
    # Not the journal, which a unit would wait for at boot: the kernel log.
    assert "StandardOutput=null\nStandardError=file:/dev/kmsg\n" in waits
    odd = files["vfs-agent-answer@srv-odd.service"]
    assert odd.endswith(f" {b'odd tag%'.hex()} 12 {python}\n")  # defaults.mount_timeout
    assert "Description=Wait for the host to answer virtio-fs share odd tag%%\n" in odd
    # 9p has no FUSE_INIT to wait for.
    assert "vfs-agent-answer@srv-nine.service" not in files
    assert "Requires=" not in files["srv-nine.mount"]


def test_with_the_mount_helper_each_virtio_fs_unit_waits_in_its_own_mount() -> None:
    files = units(mount_helper=True)
    assert not [name for name in files if name.startswith("vfs-agent-answer@")]
    fast = files["srv-fast.mount"]
    assert "Requires=" not in fast
    assert "Wants=vfs-agent-prober.socket vfs-agent-prober.service\n" in fast
    assert "After=vfs-agent-prober.socket\n" in fast
    assert "Type=virtiofs.vfsagent\n" in fast
    # The rule's 3 s, and 30 s more for the mount itself (systemd's default would be 90 s).
    assert "TimeoutSec=33s\n" in fast
    assert f"Environment=VFS_AGENT_TAG_HEX={b'fast'.hex()} VFS_AGENT_WAIT=3\n" in fast
    odd = files["srv-odd.mount"]
    assert f"Environment=VFS_AGENT_TAG_HEX={b'odd tag%'.hex()} VFS_AGENT_WAIT=12\n" in odd
    # 9p has no FUSE_INIT to wait for: mounted by mount(8) itself.
    nine = files["srv-nine.mount"]
    assert "Type=9p\n" in nine and "Environment=" not in nine and "Wants=" not in nine


class Helper:
    """The mount helper as mount(8) runs it, on the test's prober, with a `mount` that records
    its arguments (one per line) instead of mounting."""

    def __init__(self, tmp_path: Path, prober: Prober) -> None:
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        self.mounted = tmp_path / "mount-args"
        fake_mount = bin_dir / "mount"
        fake_mount.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" >{self.mounted}\n')
        fake_mount.chmod(0o755)
        self.kmsg = tmp_path / "helper-kmsg"
        script = mount_helper_script("/nonexistent/python3")
        for old, new in (
            (f"d={answer.ANSWERS_DIR};", f"d={prober.dir};"),
            ("PATH=/usr/sbin:/usr/bin:/sbin:/bin", f"PATH={bin_dir}:/usr/bin:/bin"),
            ("2>/dev/kmsg", f"2>{self.kmsg}"),
        ):
            assert script.count(old) == 1, old
            script = script.replace(old, new)
        self.path = tmp_path / "mount.virtiofs.vfsagent"
        self.path.write_text(script)
        self.path.chmod(0o755)

    def run(self, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.path), *args],
            env={"PATH": "/usr/bin:/bin", **env},
            capture_output=True,
            text=True,
            timeout=60,
        )


def test_the_mount_helper_waits_then_mounts_as_virtiofs_with_mounts_arguments(
    tmp_path: Path, prober: Prober
) -> None:
    helper = Helper(tmp_path, prober)
    tag = "-odd tag"  # a tag that looks like an option stays the spec
    env = {"VFS_AGENT_TAG_HEX": tag.encode().hex(), "VFS_AGENT_WAIT": "5"}
    # What libmount passes a helper (mount(8)'s EXTERNAL HELPERS).
    args = [tag, "/srv/x y", "-s", "-o", "rw,nosuid,nodev", "-N", "1234", "-t", "virtiofs.vfsagent"]
    done = helper.run(args, env)
    assert done.returncode == 0, done.stderr
    assert helper.mounted.read_text().splitlines() == [
        "-i",
        "-t",
        "virtiofs",
        "-s",
        "-o",
        "rw,nosuid,nodev",
        "-N",
        "1234",
        "--",
        tag,
        "/srv/x y",
    ]


def test_the_mount_helper_fails_the_mount_when_the_host_does_not_answer(
    tmp_path: Path, prober: Prober
) -> None:
    helper = Helper(tmp_path, prober)
    env = {"VFS_AGENT_TAG_HEX": b"dead".hex(), "VFS_AGENT_WAIT": "2"}
    started = time.monotonic()
    done = helper.run(["dead", "/srv/dead", "-o", "rw", "-t", "virtiofs.vfsagent"], env)
    assert done.returncode == 32  # mount(8)'s "mount failure"
    assert time.monotonic() - started >= 2
    assert not helper.mounted.exists()
    record = helper.kmsg.read_text()
    assert record.startswith("<3>vfs-agent-answer["), record
    assert "Share 'dead' is not usable: its host did not answer within 2 s" in record


def test_the_mount_helper_refuses_to_run_without_what_its_units_give_it(
    tmp_path: Path, prober: Prober
) -> None:
    helper = Helper(tmp_path, prober)
    for args, env in (
        (["share", "/srv/x"], {}),
        (["share", "/srv/x"], {"VFS_AGENT_TAG_HEX": "7368617265"}),
        (["share"], {"VFS_AGENT_TAG_HEX": "7368617265", "VFS_AGENT_WAIT": "5"}),
    ):
        done = helper.run(args, env)
        assert done.returncode == 1, (args, env)
        assert "run by mount(8) for the mount units vfs-agent generates" in done.stderr
    assert not helper.mounted.exists()


def test_the_shell_the_prober_and_its_socket_agree_on_the_fifos() -> None:
    socket = (REPO / "systemd/vfs-agent-prober.socket.in").read_text()
    assert f"ListenFIFO={answer.ANSWERS_DIR}/request\n" in socket
    assert ANSWER_SCRIPT.startswith(f"d={answer.ANSWERS_DIR}; ")
    assert "'" not in ANSWER_SCRIPT and "\\" not in ANSWER_SCRIPT  # one single-quoted word


def test_systemd_analyze_verify_accepts_the_probers_units(tmp_path: Path) -> None:
    layout = Layout("/usr", sys.executable, str(Path(sys.executable).parent))
    units = []
    for name in ("vfs-agent-prober.socket", "vfs-agent-prober.service"):
        assert f"/usr/lib/systemd/system/{name}" in [dest for _, dest, _ in layout.files()]
        units.append(tmp_path / name)
        units[-1].write_text(layout.render(f"{name}.in"))
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *map(str, units)],
        capture_output=True,
        text=True,
        env={**os.environ, "SYSTEMD_UNIT_PATH": f"{tmp_path}:"},  # trailing ':' adds the defaults
    )
    assert done.returncode == 0 and not done.stderr.strip(), done.stdout + done.stderr
    assert "StandardInput=socket\n" in units[1].read_text()  # the request FIFO on stdin


# The prober as systemd runs it (the request FIFO on stdin), its directories moved into the
# test's and a fake probe: a tag starting with "dead" never answers, "gone" is not attached,
# any other answers after 0.2 s.
PROBER = """
import errno, os, sys, time
from vfs_agent.system import answer
answer.ANSWERS_DIR, answer.MOUNTPOINT, answer.UNANSWERED_DIR = sys.argv[1:4]
def probe(tag):
    if tag.startswith("dead"):
        time.sleep(600)
    time.sleep(0.2)
    return errno.ENOENT if tag == "gone" else 0
answer._probe = probe
early = answer.boot_shares(os.environ.get(answer.BOOT_SHARES_VARIABLE, ""))
sys.exit(answer.serve(0, idle=float(sys.argv[4]), early=early, fresh=float(sys.argv[5])))
"""


class Prober:
    def __init__(
        self,
        tmp_path: Path,
        idle: float = 30,
        boot_shares: str = "",
        fresh: float = answer.EARLY_FRESH_SECONDS,
    ) -> None:
        self.dir = tmp_path / "answers"
        self.dir.mkdir()
        self.unanswered = tmp_path / "unanswered"
        self.kmsg = tmp_path / "kmsg"  # the prober's kernel log
        fifo = self.dir / "request"
        os.mkfifo(fifo, 0o600)
        self.fifo_fd = os.open(fifo, os.O_RDWR | os.O_CLOEXEC)  # as systemd holds it
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                PROBER,
                str(self.dir),
                str(tmp_path / "mnt"),
                str(self.unanswered),
                str(idle),
                str(fresh),
            ],
            stdin=self.fifo_fd,
            env={
                **os.environ,
                "VFS_AGENT_KMSG": str(self.kmsg),
                answer.BOOT_SHARES_VARIABLE: boot_shares,
            },
            start_new_session=True,  # its late children go with it (os.killpg)
        )

    def wait(self, tag: str, seconds: int) -> subprocess.Popen[str]:
        """One share's wait as its generated unit runs it: the shell, on this prober."""
        script = ANSWER_SCRIPT.replace(f"d={answer.ANSWERS_DIR};", f"d={self.dir};", 1)
        return subprocess.Popen(
            [
                "/bin/sh",
                "-c",
                script,
                "vfs-agent-answer",
                tag.encode().hex(),
                str(seconds),
                "/nonexistent/python3",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        os.close(self.fifo_fd)


@pytest.fixture
def prober(tmp_path: Path) -> Iterator[Prober]:
    running = Prober(tmp_path)
    yield running
    running.stop()


def test_one_prober_answers_many_waits_at_once_each_by_its_own_deadline(
    prober: Prober,
) -> None:
    started = time.monotonic()
    waits = {tag: prober.wait(tag, 5) for tag in [f"share{i}" for i in range(12)] + ["dead"]}
    healthy = {tag: w.wait(timeout=30) for tag, w in waits.items() if tag != "dead"}
    healthy_took = time.monotonic() - started
    assert set(healthy.values()) == {0}
    # 12 probes of 0.2 s each, answered together, and not held up by the dead host's 5 s.
    assert healthy_took < 4, healthy_took
    assert waits["dead"].wait(timeout=30) == 1
    assert time.monotonic() - started >= 5
    err = waits["dead"].stderr.read()  # type: ignore[union-attr]
    # One kernel log record: level, name, the shell's PID, the prober's verdict.
    expected = f"<3>vfs-agent-answer[{waits['dead'].pid}]: Share 'dead' is not usable: its host"
    assert err.startswith(f"{expected} did not answer within 5 s"), err
    assert (prober.unanswered / b"dead".hex()).read_text() == "5\n"  # for `status`
    assert sorted(p.name for p in prober.dir.iterdir()) == ["request"]  # answer FIFOs removed


def test_the_prober_explains_a_mount_error_and_clears_an_old_record(prober: Prober) -> None:
    prober.unanswered.mkdir()
    (prober.unanswered / b"share".hex()).write_text("30\n")  # its host did not answer before
    gone, share = prober.wait("gone", 5), prober.wait("share", 5)
    assert gone.wait(timeout=30) == 1
    assert "the kernel has no virtio-fs share with tag 'gone'" in gone.stderr.read()  # type: ignore[union-attr]
    assert share.wait(timeout=30) == 0
    assert not (prober.unanswered / b"share".hex()).exists()


def test_the_prober_probes_the_boot_shares_at_once_and_answers_each_first_wait_from_it(
    tmp_path: Path,
) -> None:
    """The generator's drop-in names the shares attached at boot: the prober probes them as it
    starts, so their waits, which come later, find the verdict ready; a second wait for the
    same share (a replug) gets a probe of its own; a dead host's deadline runs from the early
    probe's start; a bad word is logged and left out."""
    words = f"{b'share1'.hex()}:5 {b'dead'.hex()}:3 zz:5 {b'share2'.hex()}:0 {b'gone'.hex()}:5"
    prober = Prober(tmp_path, boot_shares=words)
    try:
        time.sleep(1.5)  # the early probes (0.2 s each) are done
        started = time.monotonic()
        assert prober.wait("share1", 5).wait(timeout=30) == 0
        early = time.monotonic() - started
        started = time.monotonic()
        assert prober.wait("share1", 5).wait(timeout=30) == 0
        probed = time.monotonic() - started
        assert early < 0.2 <= probed, (early, probed)  # the fake probe takes 0.2 s
        # An early probe that failed ('gone': not attached then) is not handed on: probed anew.
        started = time.monotonic()
        assert prober.wait("gone", 5).wait(timeout=30) == 1
        assert time.monotonic() - started >= 0.2
        started = time.monotonic()
        dead = prober.wait("dead", 5)
        assert dead.wait(timeout=30) == 1
        assert time.monotonic() - started < 3  # 3 s from the prober's start, not 5 from now
        assert "did not answer within 3 s" in dead.stderr.read()  # type: ignore[union-attr]
        log = prober.kmsg.read_text()
        assert log.count("ignored a share to probe at boot") == 2, log
    finally:
        prober.stop()


def test_an_early_success_that_waited_too_long_for_its_first_request_is_probed_anew(
    tmp_path: Path,
) -> None:
    """A boot share whose first request comes long after the early probe (its unit started late)
    gets a probe of its own: a host that answered then may have died since."""
    prober = Prober(tmp_path, boot_shares=f"{b'late'.hex()}:5 {b'soon'.hex()}:5", fresh=1.0)
    try:
        time.sleep(0.6)  # the early probes (0.2 s each) are done, and still fresh
        started = time.monotonic()
        assert prober.wait("soon", 5).wait(timeout=30) == 0
        assert time.monotonic() - started < 0.2  # handed on
        time.sleep(1.0)  # now older than a second
        started = time.monotonic()
        assert prober.wait("late", 5).wait(timeout=30) == 0
        assert time.monotonic() - started >= 0.2  # probed anew: the fake probe takes 0.2 s
    finally:
        prober.stop()


def test_only_the_probers_first_start_in_a_boot_probes_the_boot_shares(tmp_path: Path) -> None:
    marker = tmp_path / "boot-shares-probed"
    assert answer.first_start(str(marker)) is True
    assert marker.exists()
    assert answer.first_start(str(marker)) is False  # the socket started it again later
    assert answer.first_start(str(tmp_path / "gone" / "marker")) is False  # no directory
    assert answer.BOOT_PROBED.startswith("/run/")  # empty at every boot


def test_the_generator_names_the_shares_attached_at_boot_to_the_prober() -> None:
    policy = merge([to_section("/etc/vfs-agent/policy.yaml", parse_text(POLICY, "p.yaml"))])
    shares = (
        Share("fast", Transport.VIRTIOFS, "virtio1"),
        Share("nine", Transport.NINEP, "virtio3"),
    )
    actions = plan(Discovery(shares, True), policy, [])
    rendered, _ = render_units(actions, "t", bind_device=True, mount_helper=True, this_boot=True)
    dropin = prober_dropin(rendered, frozenset({"fast", "nine"}))
    assert dropin is not None and dropin.relpath == (
        "vfs-agent-prober.service.d/50-vfs-agent-boot-shares.conf"
    )
    # Only the attached virtio-fs share ("odd tag%" is absent, 9p has no wait).
    assert dropin.text.endswith(f'\nEnvironment="VFS_AGENT_BOOT_SHARES={b"fast".hex()}:3"\n')
    # A kernel without /sys/fs/virtiofs: the plan treats the named tags as present, but only
    # what discovery saw is probed in advance.
    assert prober_dropin(rendered, frozenset()) is None
    assert BOOT_SHARES_VARIABLE == answer.BOOT_SHARES_VARIABLE
    # Units that outlive the boot, or wait in units of their own, give the prober nothing.
    for kw in (
        {"mount_helper": True, "this_boot": False},
        {"mount_helper": False, "this_boot": True},
    ):
        rendered, _ = render_units(actions, "t", bind_device=True, **kw)
        assert prober_dropin(rendered, frozenset({"fast"})) is None


def test_the_prober_ignores_garbage_and_exits_when_idle(tmp_path: Path) -> None:
    prober = Prober(tmp_path, idle=1)
    try:
        os.write(prober.fifo_fd, b"not-hex 5 1\n66 0 1\n66 5 x\n\xff\n")
        assert prober.process.wait(timeout=30) == 0  # idle for 1 s after the garbage
        log = prober.kmsg.read_text()
        assert log.count("<4>vfs-agent-prober: ignored a request") == 4, log
    finally:
        prober.stop()


def test_a_wait_without_the_prober_waits_by_itself(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The shell's fallback, `python3 -m vfs_agent.system.answer TAG_HEX SECONDS`, when no
    prober socket is installed: the same verdicts, for one share."""
    monkeypatch.setattr(answer, "MOUNTPOINT", str(tmp_path / "mnt"))
    monkeypatch.setattr(answer, "UNANSWERED_DIR", str(tmp_path / "unanswered"))
    monkeypatch.setattr(answer, "_probe", lambda tag: time.sleep(60) or 0)  # a dead virtiofsd
    kmsg = tmp_path / "kmsg"
    monkeypatch.setenv("VFS_AGENT_KMSG", str(kmsg))
    started = time.monotonic()
    assert answer.main([b"dead".hex(), "1"]) == 1
    assert time.monotonic() - started < 5
    err = kmsg.read_text()
    assert err.startswith(
        "<3>vfs-agent-answer: Share 'dead' is not usable: its host did not answer within 1 s"
    )
    assert (tmp_path / "unanswered" / b"dead".hex()).read_text() == "1\n"
    monkeypatch.setattr(answer, "_probe", lambda tag: 0)  # the host is back: the record goes
    assert answer.main([b"dead".hex(), "1"]) == 0
    assert not (tmp_path / "unanswered" / b"dead".hex()).exists()
    monkeypatch.setattr(answer, "_probe", lambda tag: errno.ENOENT)
    assert answer.main([b"gone".hex(), "5"]) == 1
    assert "the kernel has no virtio-fs share with tag 'gone'" in kmsg.read_text()
    for bad in (["not hex", "5"], [b"x".hex(), "0"], [b"x".hex(), "5", "123"]):
        assert answer.main(bad) == 2


def test_the_shell_falls_back_to_its_own_wait_without_the_socket(tmp_path: Path) -> None:
    """No request FIFO: the shell runs the interpreter it was given, with the tag and the
    seconds (a usage error here shows that it got them, in order)."""
    script = ANSWER_SCRIPT.replace(f"d={answer.ANSWERS_DIR};", f"d={tmp_path};", 1)
    done = subprocess.run(
        ["/bin/sh", "-c", script, "vfs-agent-answer", "zz", "7", sys.executable],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "not a tag in hex: 'zz'" in done.stderr


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


def test_installing_the_mount_helper_moves_the_waits_into_the_mount_units(tmp_path: Path) -> None:
    """`generate systemd` finds the helper where mount(8) looks (under --root), and a unit
    directory written before it was installed loses its wait units."""
    tree = FakeTree(tmp_path / "root")
    tree.policy("version: 1\nmounts:\n  - {tag: a, path: /srv/a}\n")
    out = tmp_path / "units"
    out.mkdir()
    generate = ["--root", str(tree.root), "generate", "systemd", "--output", str(out)]
    assert CliRunner().invoke(main, generate).exit_code == 0
    assert (out / "vfs-agent-answer@srv-a.service").exists()
    assert "Type=virtiofs\n" in (out / "srv-a.mount").read_text()

    tree.write(MOUNT_HELPER.lstrip("/"), "#!/bin/sh\n", mode=0o755)
    done = CliRunner().invoke(main, generate)
    assert done.exit_code == 0, done.output
    assert f"removed {out}/vfs-agent-answer@srv-a.service" in done.output
    assert not list(out.glob("*.service"))
    unit = (out / "srv-a.mount").read_text()
    assert "Type=virtiofs.vfsagent\n" in unit and "VFS_AGENT_WAIT=30" in unit

    # Asked for, the wait goes back into a unit of its own, with the helper there.
    assert CliRunner().invoke(main, [*generate, "--no-mount-helper"]).exit_code == 0
    assert (out / "vfs-agent-answer@srv-a.service").exists()
    assert "Type=virtiofs\n" in (out / "srv-a.mount").read_text()


def test_the_mount_helper_is_installed_where_mount_finds_it(tmp_path: Path) -> None:
    """mount(8) looks in /sbin only: a package puts the helper in /usr/sbin (/sbin where /usr
    is merged), a wheel install in /sbin itself; either way with the layout's interpreter."""
    assert MOUNT_HELPER == "/sbin/mount.virtiofs.vfsagent"
    for prefix, where in (("/usr", "/usr/sbin"), ("/usr/local", "/sbin")):
        layout = Layout(prefix, "/opt/py/bin/python3", f"{prefix}/bin")
        (helper,) = [
            (t, mode) for t, dest, mode in layout.files() if dest == where + MOUNT_HELPER[5:]
        ]
        assert helper[1] == 0o755
        assert layout.render(helper[0]) == mount_helper_script("/opt/py/bin/python3")
    assert " /opt/py/bin/python3; d=/run/vfs-agent/answers;" in mount_helper_script(
        "/opt/py/bin/python3"
    )
