"""vfs-agent in a real guest (fast boot, Debian 13 kernel 6.12): mount-all, idempotence,
hostile tags, status and kernel reports, fstab and units, PCI discovery, 9p, unplug."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.guest.conftest import BootGuest
from tests.guestlib.vm import VM, VMConfig
from vfs_agent.core.escape import encode_tag

pytestmark = pytest.mark.guest

LONG_TAG = "t" * 36
TAGS = {
    "media_tag": "media",
    "weird tag#1": "weird",
    LONG_TAG: "long",
    "ünïcødé-täg": "unicode",
    "..": "dotdot",
    "ro-1": "ro1",
}
NINEP_TAG = "ninep_share"
POLICY = """\
version: 1
defaults:
  unknown: mount
mounts:
  - tag: media_tag
    path: /mnt/media
    options: [noatime]
    required: true
  - tag: "ro-*"
    path: "/srv/ro/{tag}"
    options: [ro]
"""
EXPECTED_PATHS = {
    "media_tag": "/mnt/media",
    "ro-1": "/srv/ro/ro-1",
    **{t: f"/mnt/virtiofs/{encode_tag(t)}" for t in ("weird tag#1", LONG_TAG, "ünïcødé-täg", "..")},
}


def mounts(guest: VM) -> list[tuple[str, str, str, str]]:
    """(fstype, source, target, options) of the guest's share mounts, as util-linux reads
    /proc/self/mountinfo (an oracle independent of vfs-agent's own parser)."""
    result = guest.run("findmnt --json --list -o FSTYPE,SOURCE,TARGET,OPTIONS -t virtiofs,9p")
    if result.rc == 1 and not result.stdout:
        return []  # findmnt: nothing found
    rows = json.loads(result.stdout)["filesystems"]
    return [(r["fstype"], r["source"], r["target"], r["options"]) for r in rows]


def requests_to_removed_devices(guest: VM) -> int:
    """How many FUSE requests went to a removed virtio-fs device this boot: the kernel logs each
    ("virtio_fs_enqueue_req() failed -107")."""
    result = guest.run("dmesg | grep -c 'virtio_fs_enqueue_req() failed'")
    return int(result.stdout.strip() or 0)


def vfs(guest: VM, *args: str, check: bool = True, timeout: float = 120) -> dict:
    result = guest.run(["vfs-agent", *args, "--json"], timeout=timeout)
    if check:
        assert result.rc == 0, str(result)
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def share_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("agent-shares")
    dirs = {name: root / name for name in [*TAGS.values(), "ninep", "hot"]}
    for path in dirs.values():
        path.mkdir()
    return dirs


@pytest.fixture(scope="module")
def guest(boot_guest: BootGuest, share_dirs: dict[str, Path]) -> Iterator[VM]:
    config = VMConfig(
        mode="fast",
        name="agent-fast",
        shares=[(tag, share_dirs[name]) for tag, name in TAGS.items()],
        shares_9p=[(NINEP_TAG, share_dirs["ninep"])],
    )
    vm = boot_guest(config)
    vm.put_file("/etc/vfs-agent/policy.yaml", POLICY)
    vm.run("chmod 755 /etc/vfs-agent", check=True)
    yield vm
    vm.shutdown()


def test_kernel_report_agrees_with_the_guest_kernel(guest: VM) -> None:
    report = vfs(guest, "kernel")
    assert report["release"] == guest.run("uname -r", check=True).stdout.strip()
    filesystems = guest.get_file("/proc/filesystems").decode()
    assert ("\tvirtiofs" in filesystems) == (report["virtiofs"] in ("built-in", "loaded"))
    assert report["virtiofs"] == "built-in"  # Debian 13's 6.12 has it built in
    assert report["usable"] and report["sysfs_tags"]
    fs_devices = guest.run("grep -l 0x001a /sys/bus/virtio/devices/*/device | wc -l").stdout
    assert len(report["virtiofs_devices"]) == int(fs_devices) == len(TAGS)
    assert len(report["ninep_devices"]) == 1


def test_plan_then_mount_all_mounts_every_share_where_the_policy_says(guest: VM) -> None:
    plan = vfs(guest, "plan")
    planned = {a["tag"]: a["path"] for a in plan["actions"] if a["action"] == "mount"}
    assert planned == {**EXPECTED_PATHS, NINEP_TAG: f"/mnt/virtiofs/{NINEP_TAG}"}
    assert guest.run("ls /mnt/virtiofs 2>/dev/null").stdout == ""  # plan changed nothing

    outcomes = vfs(guest, "mount-all")["outcomes"]
    assert all(o["ok"] and o["changed"] for o in outcomes), outcomes
    table = {(src, target): (fstype, opts) for fstype, src, target, opts in mounts(guest)}
    for tag, path in EXPECTED_PATHS.items():
        fstype, opts = table[(tag, path)]
        assert fstype == "virtiofs"
        options = opts.split(",")
        assert "nosuid" in options and "nodev" in options, (tag, opts)
    assert "noatime" in table[("media_tag", "/mnt/media")][1].split(",")
    assert "ro" in table[("ro-1", "/srv/ro/ro-1")][1].split(",")
    assert table[(NINEP_TAG, f"/mnt/virtiofs/{NINEP_TAG}")][0] == "9p"


def test_hostile_tags_are_mounted_one_level_below_mount_root(guest: VM) -> None:
    listing = guest.run(
        ["python3", "-c", "import os, json; print(json.dumps(os.listdir('/mnt/virtiofs')))"]
    )
    names = set(json.loads(listing.stdout))
    for tag in ("weird tag#1", LONG_TAG, "ünïcødé-täg", ".."):
        assert encode_tag(tag) in names
    assert not any(n in (".", "..") or "/" in n for n in names)
    assert guest.run("ls -a /mnt | grep -c '^escape'").stdout.strip() == "0"


def test_files_written_in_the_guest_appear_on_the_host(
    guest: VM, share_dirs: dict[str, Path]
) -> None:
    guest.run("echo from-guest > /mnt/media/hello.txt && sync", check=True)
    assert (share_dirs["media"] / "hello.txt").read_text() == "from-guest\n"
    (share_dirs["weird"] / "from-host.txt").write_text("from-host\n")
    path = f"/mnt/virtiofs/{encode_tag('weird tag#1')}/from-host.txt"
    assert guest.get_file(path) == b"from-host\n"
    assert guest.run("touch /srv/ro/ro-1/x").rc != 0  # read-only as the policy says


def test_a_second_mount_all_changes_nothing(guest: VM) -> None:
    before = mounts(guest)
    outcomes = vfs(guest, "mount-all")["outcomes"]
    assert not any(o["changed"] for o in outcomes)
    assert {o["action"] for o in outcomes} == {"keep"}
    assert mounts(guest) == before


def test_status_reports_every_share_mounted(guest: VM) -> None:
    status = vfs(guest, "status")
    health = {s["tag"]: s["health"] for s in status["shares"]}
    assert health == {tag: "mounted" for tag in [*TAGS, NINEP_TAG]}
    assert sorted(t for t in health if t != NINEP_TAG) == guest.virtiofs_tags()
    assert status["discovery_complete"] is True


def test_pci_config_window_gives_the_same_tags_as_sysfs(guest: VM) -> None:
    result = guest.run(["python3", "-m", "vfs_agent.system.pci_config"], check=True)
    data = json.loads(result.stdout)
    pci = sorted(
        bytes.fromhex(s["tag_hex"]).decode(errors="surrogateescape") for s in data["shares"]
    )
    assert pci == guest.virtiofs_tags()
    assert data["problems"] == []
    # Each share maps to the same virtio device through both sources.
    script = (
        "import glob, json, os\n"
        "print(json.dumps({open(p + '/tag', 'rb').read()[:-1].hex():"
        " os.path.basename(os.readlink(p + '/device')) for p in glob.glob('/sys/fs/virtiofs/*')}))"
    )
    sysfs = json.loads(guest.run(["python3", "-c", script], check=True).stdout)
    assert {s["tag_hex"]: s["device"] for s in data["shares"]} == sysfs


def test_generated_units_pass_systemd_analyze_verify(guest: VM) -> None:
    guest.run(
        "rm -rf /tmp/units && vfs-agent generate systemd --bind-device --output /tmp/units",
        check=True,
    )
    names = guest.run("cd /tmp/units && ls *.mount", check=True).stdout.split()
    assert len(names) == len(TAGS) + 1
    result = guest.run(
        "cd /tmp/units && SYSTEMD_UNIT_PATH=/tmp/units: systemd-analyze verify --man=no *.mount",
        timeout=120,
    )
    assert result.rc == 0, str(result)


def test_a_busy_policy_path_keeps_its_unit_and_fstab_line(guest: VM) -> None:
    """Generated outputs depend on the policy and the shares, not on what is mounted now: a
    tmpfs over a share's path (the share mounted under it or not) changes no unit and no
    fstab line, and `generate systemd` removes nothing."""
    generate = (
        "vfs-agent generate systemd --bind-device --output /tmp/busy-units"
        " && vfs-agent generate fstab --output /tmp/busy-fstab"
    )
    listing = "cd /tmp/busy-units && find . ! -type d -printf '%p %l\\n' | sort && cat *.mount"
    guest.run(f"rm -rf /tmp/busy-units && touch /tmp/busy-fstab && {generate}", check=True)
    units = guest.run(listing, check=True).stdout
    fstab = guest.get_file("/tmp/busy-fstab")
    assert "mnt-media.mount" in units and b" /mnt/media virtiofs " in fstab
    guest.run("mkdir -p /mnt/media && mount -t tmpfs busy /mnt/media", check=True)
    try:
        again = guest.run(generate, check=True)
        assert "removed" not in again.stdout, str(again)
        assert guest.run(listing, check=True).stdout == units
        assert guest.get_file("/tmp/busy-fstab") == fstab
    finally:
        guest.run("umount /mnt/media", check=True)  # only the tmpfs: the share stays


def test_generated_fstab_mounts_the_same_as_mount_all(guest: VM) -> None:
    expected = {(f, s, t) for f, s, t, _ in mounts(guest)}
    guest.run(
        "cp /etc/fstab /tmp/fstab.orig && vfs-agent generate fstab --output /etc/fstab", check=True
    )
    for _fstype, _src, target, _ in mounts(guest):
        guest.run(["umount", target], check=True)
    assert mounts(guest) == []
    guest.run("mount -a", check=True, timeout=120)
    assert {(f, s, t) for f, s, t, _ in mounts(guest)} == expected
    assert guest.run("cat /tmp/fstab.orig").stdout in guest.run("cat /etc/fstab").stdout


def test_an_unplugged_mounted_share_is_cleaned_up(guest: VM, share_dirs: dict[str, Path]) -> None:
    guest.hotplug_share("hot-1", share_dirs["hot"])
    deadline = time.monotonic() + 30
    while "hot-1" not in guest.virtiofs_tags():
        assert time.monotonic() < deadline, "hot-1 never appeared"
        time.sleep(0.3)
    vfs(guest, "mount-all")
    assert ("virtiofs", "hot-1", "/mnt/virtiofs/hot-1") in {m[:3] for m in mounts(guest)}
    guest.unplug_share("hot-1")
    before_stat = requests_to_removed_devices(guest)
    dead = guest.run("stat /mnt/virtiofs/hot-1")
    assert "Transport endpoint is not connected" in dead.stderr, str(dead)
    sent = requests_to_removed_devices(guest)
    assert sent > before_stat  # the kernel counts the stat's request
    status = vfs(guest, "status")
    assert any(s["health"] == "dead" and s["tag"] == "hot-1" for s in status["shares"]), status
    # status sent none: the mount of a share known to be gone is never probed (where systemd
    # manages it, it is unmounting it then, and a statfs(2) in flight fails its umount(8)).
    assert requests_to_removed_devices(guest) == sent
    outcomes = vfs(guest, "mount-all")["outcomes"]
    assert [o["action"] for o in outcomes if o["changed"]] == ["unmount-stale"]
    assert "hot-1" not in {m[1] for m in mounts(guest)}
    assert (
        guest.run("find /mnt /srv -maxdepth 3 2>&1 | grep -c 'not connected'").stdout.strip() == "0"
    )
