"""A virtio-fs device the kernel cannot finish removing (its host daemon died with requests in
flight) holds virtio-fs's global lock, and every new virtio-fs mount(2) waits for it until the
guest reboots. Discovery carries such a removal as data; the planner then holds virtio-fs
mounts back (HELD, with the reason and what to do), so neither mount-all nor the daemon leaves
a mount child in uninterruptible sleep per attempt; the daemon looks again until it ends.

The real kernel's side is proven in tests/guest/test_host_faults.py."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

from click.testing import CliRunner
from faketree import FakeTree
from test_apply import RecordingKernel, apply
from test_daemon import FakeKernel, PipeEvents, run_daemon, wait_for

from vfs_agent.commands import operations as ops
from vfs_agent.commands.cli import main
from vfs_agent.core.observation import Discovery, Mounted, Share
from vfs_agent.core.plan import WANTED, ActionKind, plan
from vfs_agent.core.render_systemd import render_units
from vfs_agent.core.transport import Transport
from vfs_agent.execute.apply import Executors
from vfs_agent.policy.load import parse_text
from vfs_agent.policy.schema import to_section
from vfs_agent.policy.types import merge
from vfs_agent.system.discovery import discover
from vfs_agent.system.sysroot import SysRoot

V = Transport.VIRTIOFS
P9 = Transport.NINEP
REMOVING = ("0000:00:09.0 (virtio7)",)
POLICY = """\
version: 1
mounts:
  - {tag: fresh, path: /mnt/fresh, required: true}
  - {tag: kept, path: /mnt/kept}
  - {tag: dead, path: /mnt/dead}
  - {tag: nine, path: /mnt/nine}
"""


def pol(text: str):
    return merge([to_section("/etc/vfs-agent/policy.yaml", parse_text(text, "policy.yaml"))])


def attached(removing: tuple[str, ...] = ()) -> Discovery:
    shares = (
        Share("dead", V, "virtio3"),
        Share("fresh", V, "virtio1"),
        Share("kept", V, "virtio2"),
        Share("nine", P9, "virtio4"),
    )
    return Discovery(shares, complete=True, removing=removing)


TABLE = [
    Mounted(100, 1, "/mnt/kept", "virtiofs", "kept"),
    Mounted(101, 1, "/mnt/dead", "virtiofs", "dead"),
]


def kinds(actions) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for a in actions:
        out.setdefault(a.tag, []).append(a.kind.value)
    return out


def test_virtio_fs_mounts_are_held_while_a_removal_lasts() -> None:
    dead = frozenset({"/mnt/dead"})
    normal = plan(attached(), pol(POLICY), TABLE, dead=dead)
    assert kinds(normal) == {
        "dead": ["unmount-stale", "mount"],
        "fresh": ["mount"],
        "kept": ["keep"],
        "nine": ["mount"],
    }
    held = plan(attached(REMOVING), pol(POLICY), TABLE, dead=dead)
    # The dead mount is still detached (umount2 with MNT_DETACH does not wait for the
    # removal); 9p and a mount already there are not virtio-fs mounts to make.
    assert kinds(held) == {
        "dead": ["unmount-stale", "held"],
        "fresh": ["held"],
        "kept": ["keep"],
        "nine": ["mount"],
    }
    fresh = next(a for a in held if a.tag == "fresh")
    assert fresh.required and fresh.path == "/mnt/fresh"
    assert fresh.reason.startswith(
        "not mounted: the kernel is removing virtio-fs device 0000:00:09.0 (virtio7)"
    )
    assert fresh.reason.endswith("reboot the guest")


def test_a_held_share_keeps_its_unit_and_fstab_line() -> None:
    """Generators run during a stuck removal too (daemon-reload): a held share is still wanted,
    so its unit must not disappear."""
    held = plan(attached(REMOVING), pol(POLICY), [])
    assert ActionKind.HELD in WANTED
    units, skipped = render_units(held, "test", bind_device=True, mount_helper=True)
    assert not skipped
    assert {u.name for u in units} == {
        "mnt-dead.mount",
        "mnt-fresh.mount",
        "mnt-kept.mount",
        "mnt-nine.mount",
    }


def test_applying_a_held_mount_calls_no_mount_and_fails_only_a_required_share(
    tmp_path: Path,
) -> None:
    kernel = RecordingKernel()
    held = plan(attached(REMOVING), pol(POLICY), [])
    outcomes = apply(held, tmp_path, kernel)
    assert [m[0] for m in kernel.mounts] == ["nine"]
    by_tag = {o.action.tag: o for o in outcomes}
    assert not by_tag["fresh"].ok and by_tag["fresh"].fatal
    assert not by_tag["kept"].ok and not by_tag["kept"].fatal  # optional: a warning
    assert "reboot the guest" in by_tag["fresh"].message


def removing_device(tree: FakeTree, address: str = "0000:00:09.0", virtio: str = "virtio7") -> Path:
    """A PCI virtio-fs function that has let go of its driver while its virtio device is still
    below it (already gone from /sys/bus/virtio and /sys/fs/virtiofs): a removal in progress."""
    pci = tree.root / f"sys/devices/pci0000:00/{address}"
    (pci / virtio).mkdir(parents=True)
    (pci / "vendor").write_text("0x1af4\n")
    (pci / "device").write_text("0x105a\n")
    (tree.root / "sys/bus/pci/devices").mkdir(parents=True, exist_ok=True)
    (tree.root / f"sys/bus/pci/devices/{address}").symlink_to(pci)
    return pci


def test_discovery_carries_the_removal_as_data(tmp_path: Path) -> None:
    tree = FakeTree(tmp_path / "root")
    tree.virtiofs("alive")
    removing_device(tree)
    found = discover(SysRoot(tree.root))
    assert found.removing == REMOVING
    assert [s.tag for s in found.shares] == ["alive"]
    [problem] = found.problems
    assert problem.startswith("virtio-fs device 0000:00:09.0 (virtio7) is being removed;")


def test_plan_status_and_mount_all_say_why_and_what_to_do(tmp_path: Path) -> None:
    tree = FakeTree(tmp_path / "root")
    tree.policy(POLICY)
    tree.virtiofs("fresh")
    removing_device(tree)
    root = ["--root", str(tree.root)]
    planned = CliRunner().invoke(main, [*root, "plan", "--json"])
    assert planned.exit_code == 0, planned.output
    [fresh] = [a for a in json.loads(planned.output)["actions"] if a["tag"] == "fresh"]
    assert fresh["action"] == "held" and "reboot the guest" in fresh["reason"]
    text = CliRunner().invoke(main, [*root, "plan"])
    assert "held" in text.output and "reboot the guest" in text.output

    status = CliRunner().invoke(main, [*root, "status", "--json"])
    [share] = [s for s in json.loads(status.output)["shares"] if s["tag"] == "fresh"]
    assert share["health"] == "not-mounted"
    assert "is removing virtio-fs device 0000:00:09.0 (virtio7)" in share["detail"]

    kernel = RecordingKernel()
    sysroot = SysRoot(tree.root)
    run = Executors.pick(sysroot, dry_run=False, kernel=kernel)
    outcomes = ops.mount_all(ops.Context(sysroot), run)
    assert kernel.mounts == []
    assert [o.fatal for o in outcomes if o.action.tag == "fresh"] == [True]
    # mount TAG by hand: the same reason at once, not a mount(2) that waits for the removal.
    by_hand = ops.mount_one(ops.Context(sysroot), "fresh", "/mnt/by-hand", run)
    assert kernel.mounts == [] and not by_hand[0].ok
    assert "reboot the guest" in by_hand[0].message


def test_the_daemon_looks_again_and_mounts_once_the_removal_ends(tmp_path: Path) -> None:
    """No uevent is sure to come when a removal ends, so the daemon looks again by itself."""
    tree = FakeTree(tmp_path / "root")
    tree.policy(POLICY)
    tree.virtiofs("fresh")
    pci = removing_device(tree)
    events, kernel = PipeEvents(), FakeKernel(tree)
    daemon_log: list[str] = []

    def script() -> None:
        time.sleep(1.5)  # the start-up reconcile and at least one look again: all held
        daemon_log.extend(kernel.calls)
        shutil.rmtree(pci)  # the removal ends
        os.unlink(tree.root / "sys/bus/pci/devices/0000:00:09.0")
        wait_for(lambda: "mount fresh /mnt/fresh" in kernel.calls, timeout=10)
        os.kill(os.getpid(), signal.SIGTERM)

    run_daemon(tree, events, kernel, script)
    assert daemon_log == []  # nothing was tried while the removal lasted
    assert kernel.calls == ["mount fresh /mnt/fresh"]
