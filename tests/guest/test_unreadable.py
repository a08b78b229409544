"""Unreadable is not absent, on a real kernel (fast boot, Debian 13, kernel 6.12).

A share's tag file in sysfs made unreadable (chmod 000; kernfs keeps the mode) is a problem
that `status` and `plan` report to a user who cannot read it, with the device and the errno,
instead of the share silently vanishing; its mount is not taken for stale. Oracles: `cat` of
the same file as the same user (EACCES), util-linux findmnt for the mounts. Also: a real tool
failing through the one tool runner says its exit status and its last stderr line.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.guest.conftest import BootGuest
from tests.guestlib.vm import VM, VMConfig

pytestmark = pytest.mark.guest

TAGS = ["media_tag", "locked_tag"]
AS_NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


@pytest.fixture(scope="module")
def guest(boot_guest: BootGuest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VM]:
    root = tmp_path_factory.mktemp("unreadable-shares")
    shares = []
    for tag in TAGS:
        (root / tag).mkdir()
        shares.append((tag, root / tag))
    vm = boot_guest(VMConfig(mode="fast", name="unreadable", shares=shares))
    yield vm
    vm.shutdown()


def share_mounts(guest: VM) -> set[tuple[str, str]]:
    result = guest.run("findmnt --json --list -o SOURCE,TARGET -t virtiofs")
    if result.rc == 1 and not result.stdout:
        return set()
    return {(r["source"], r["target"]) for r in json.loads(result.stdout)["filesystems"]}


def vfs_as_nobody(guest: VM, *args: str) -> str:
    result = guest.run([*AS_NOBODY, "vfs-agent", *args], timeout=120)
    assert result.rc == 0, str(result)
    return result.stdout


def test_an_unreadable_tag_is_reported_and_its_mount_kept(guest: VM) -> None:
    guest.run(["vfs-agent", "mount-all"], check=True, timeout=120)
    mounted = {("media_tag", "/mnt/virtiofs/media_tag"), ("locked_tag", "/mnt/virtiofs/locked_tag")}
    assert share_mounts(guest) == mounted
    tag_file = guest.run("grep -lx locked_tag /sys/fs/virtiofs/*/tag", check=True).stdout.strip()
    device = Path(guest.run(["readlink", str(Path(tag_file).parent / "device")]).stdout.strip())
    guest.run(["chmod", "000", tag_file], check=True)
    try:
        denied = guest.run([*AS_NOBODY, "cat", tag_file])
        assert denied.rc != 0 and "Permission denied" in denied.stderr  # the oracle
        problem = (
            f"cannot read the tag of virtio-fs device {device.name} ({tag_file}: Permission "
            "denied); its share is not mounted, and no mount is taken for stale, until the tag "
            "can be read"
        )
        status = json.loads(vfs_as_nobody(guest, "status", "--json"))
        assert problem in status["discovery_problems"]
        assert status["discovery_complete"] is False
        assert [s["tag"] for s in status["shares"]] == ["media_tag"]
        assert f"* {problem}" in vfs_as_nobody(guest, "status").splitlines()
        planned = json.loads(vfs_as_nobody(guest, "plan", "--json"))
        assert problem in planned["discovery_problems"]
        assert [(a["action"], a["tag"]) for a in planned["actions"]] == [("keep", "media_tag")]
        assert f"* {problem}" in vfs_as_nobody(guest, "plan").splitlines()
        assert share_mounts(guest) == mounted
    finally:
        guest.run(["chmod", "444", tag_file], check=True)
    status = json.loads(vfs_as_nobody(guest, "status", "--json"))
    assert status["discovery_problems"] == [] and status["discovery_complete"] is True
    assert sorted(s["tag"] for s in status["shares"]) == sorted(TAGS)


def test_a_failing_tool_says_its_status_and_last_stderr_line(guest: VM) -> None:
    code = (
        "from vfs_agent.system.tools import run_tool; "
        "print(run_tool(['modprobe', 'no_such_module_here'], 30))"
    )
    out = guest.run(["python3", "-c", code], check=True).stdout.strip()
    release = guest.run("uname -r", check=True).stdout.strip()
    assert out == (
        "modprobe no_such_module_here failed: exit status 1: modprobe: FATAL: Module "
        f"no_such_module_here not found in directory /lib/modules/{release}"
    )
