"""Odd but legal tags in a real systemd guest (Debian 13, systemd 257): a tag with a tab and a
'#' inside gets a unit from the boot-time generator, systemd mounts it bound to its device,
and the guest's own systemd-fstab-generator turns the `generate fstab` line for it into a unit
with the same What=, Where=, Type= and Options=. A tag that begins with '#' gets neither, with
one reason, and `plan` names it. One boot (after the policy is in place, one reboot)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from tests.guest.conftest import BootGuest
from tests.guestlib.image import GuestImage
from tests.guestlib.vm import VM, VMConfig
from vfs_agent.core.escape import encode_tag, mount_unit_name

pytestmark = pytest.mark.guest

ODD = "odd\ttag#1"
HASHED = "#lead"
# Every character systemd's command line or a shell gives a meaning to: the unit's mount(8)
# passes it to vfs-agent's mount helper, which waits for its host (the tag in hex) and passes it
# to mount(8) again; it must reach the kernel unchanged.
QUOTED = "q$x\"y\\z%w'v;"
POLICY = """\
version: 1
defaults:
  unknown: mount
  device_timeout: 60
"""
ODD_PATH = f"/mnt/virtiofs/{encode_tag(ODD)}"
FSTAB_GENERATOR = "/usr/lib/systemd/system-generators/systemd-fstab-generator"


@pytest.fixture(scope="module")
def guest(
    boot_guest: BootGuest, deb_image: GuestImage, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[VM]:
    root = tmp_path_factory.mktemp("odd-tags")
    dirs = {name: root / name for name in ("odd", "hashed", "quoted")}
    for path in dirs.values():
        path.mkdir()
    (dirs["odd"] / "hello.txt").write_text("hello\n")
    vm = boot_guest(
        VMConfig(
            mode="systemd",
            name="odd-tags",
            shares=[(ODD, dirs["odd"]), (HASHED, dirs["hashed"]), (QUOTED, dirs["quoted"])],
        ),
        deb_image,
    )
    vm.wait_system_running()
    vm.put_file("/etc/vfs-agent/policy.yaml", POLICY)
    vm.run("chmod 755 /etc/vfs-agent", check=True)
    vm.reboot()
    vm.wait_system_running()
    yield vm
    vm.shutdown()


def unit_settings(text: str) -> dict[str, str]:
    """What=, Where=, Type=, Options= of a unit as systemd reads a line: the value after '=',
    surrounding spaces and tabs stripped, %% resolved."""
    out = {}
    for line in text.split("\n"):
        key, sep, value = line.partition("=")
        if sep and key in ("What", "Where", "Type", "Options"):
            out[key] = value.strip(" \t").replace("%%", "%")
    return out


def wait_active(guest: VM, unit: str) -> None:
    deadline = time.monotonic() + 60
    while True:
        state = guest.run(["systemctl", "show", unit, "--property=ActiveState"]).stdout.strip()
        if state == "ActiveState=active" or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert state == "ActiveState=active", guest.run(["systemctl", "status", unit]).stdout


@pytest.mark.parametrize("tag", [ODD, QUOTED])
def test_the_odd_tag_is_mounted_by_systemd_through_its_generated_unit(guest: VM, tag: str) -> None:
    """The mount unit, whose mount(8) ran vfs-agent's mount helper: it waited for the host,
    which the prober mounted by itself first, then mounted the share."""
    path = f"/mnt/virtiofs/{encode_tag(tag)}"
    unit = mount_unit_name(path)
    wait_active(guest, unit)
    mount = guest.run(["systemctl", "show", unit, "--property=ExecMount"], check=True).stdout
    assert "-t virtiofs.vfsagent" in mount and "status=0" in mount, mount
    found = json.loads(guest.run(["findmnt", "--json", path], check=True).stdout)
    assert found["filesystems"][0]["source"] == tag
    journal = guest.run("journalctl -b -t vfs-agent -o cat --no-pager").stdout
    assert f"Mounted share {tag!r}" not in journal  # systemd did it, not the daemon


def test_the_odd_tags_file_is_read_through_the_unit(guest: VM) -> None:
    wait_active(guest, mount_unit_name(ODD_PATH))
    assert guest.get_file(f"{ODD_PATH}/hello.txt") == b"hello\n"


def test_the_guests_fstab_generator_reads_the_fstab_line_as_vfs_agent_writes_the_unit(
    guest: VM,
) -> None:
    guest.run(
        "rm -rf /tmp/fg && mkdir /tmp/fg && vfs-agent generate fstab --output /tmp/fg/fstab "
        f"2>/tmp/fg/skipped && SYSTEMD_FSTAB=/tmp/fg/fstab {FSTAB_GENERATOR} "
        "/tmp/fg /tmp/fg /tmp/fg",
        check=True,
    )
    unit = mount_unit_name(ODD_PATH)
    from_fstab = unit_settings(guest.get_file(f"/tmp/fg/{unit}").decode())
    ours = unit_settings(guest.get_file(f"/run/systemd/generator/{unit}").decode())
    # The same but for the type: the unit waits for the host through vfs-agent's mount helper,
    # which mounts it as virtiofs; an fstab line has no such wait.
    assert from_fstab == {**ours, "Type": "virtiofs"}
    assert (ours["What"], ours["Where"], ours["Type"]) == (ODD, ODD_PATH, "virtiofs.vfsagent")
    assert ours["Options"] == "nosuid,nodev,nofail"

    # The tag that begins with '#': left out of both, with one reason, named by plan.
    skipped = guest.get_file("/tmp/fg/skipped").decode()
    assert "skipped '#lead': the tag '#lead' begins with '#'" in skipped
    hashed_unit = mount_unit_name(f"/mnt/virtiofs/{encode_tag(HASHED)}")
    assert guest.run(["test", "-e", f"/run/systemd/generator/{hashed_unit}"]).rc == 1
    assert guest.run(["test", "-e", f"/tmp/fg/{hashed_unit}"]).rc == 1
    plan = json.loads(guest.run("vfs-agent plan --json", check=True).stdout)
    assert [s["tag"] for s in plan["not_persistent"]] == [HASHED]
    # mount-all still mounts it (only persisting it is impossible).
    guest.run("vfs-agent mount-all", check=True)
    assert guest.run(["findmnt", f"/mnt/virtiofs/{encode_tag(HASHED)}"]).rc == 0
