from pathlib import Path

from faketree import FakeTree

from vfs_agent.core.mountinfo import parse_mountinfo
from vfs_agent.core.observation import Share, Source
from vfs_agent.core.transport import Transport
from vfs_agent.system.discovery import discover, listed_now, read_tag
from vfs_agent.system.sysroot import SysRoot


def test_sysfs_tags_with_sparse_indices_and_raw_bytes(tmp_path: Path):
    tree = FakeTree(tmp_path)
    tree.virtiofs("media_tag", index=1)
    tree.virtiofs("weird tag#1", index=4)
    tree.virtiofs(b"bad\xff", index=2)
    found = discover(SysRoot(tmp_path))
    assert found.complete
    assert {s.tag for s in found.shares} == {"media_tag", "weird tag#1", "bad\udcff"}
    assert all(s.source is Source.SYSFS and s.device for s in found.shares)


def test_read_tag_strips_one_newline_and_nul_padding():
    assert read_tag(b"tag\n") == "tag"
    assert read_tag(b"tag\0\0\0") == "tag"
    assert read_tag(b"a b\n\n") == "a b\n"


def test_9p_mount_tags(tmp_path: Path):
    tree = FakeTree(tmp_path)
    device = tree.ninep("hostshare")
    found = discover(SysRoot(tmp_path))
    assert found.shares == (Share("hostshare", Transport.NINEP, device, Source.NINEP_SYSFS),)


def test_listed_now_asks_the_kernels_own_lists_only(tmp_path: Path):
    tree = FakeTree(tmp_path)
    root = SysRoot(tmp_path)
    assert not listed_now(root, Transport.VIRTIOFS, "weird tag#1")  # nothing listed at all
    tree.virtiofs("weird tag#1")
    tree.virtiofs("unlisted", sysfs=False)
    tree.ninep("hostshare")
    assert listed_now(root, Transport.VIRTIOFS, "weird tag#1")
    assert not listed_now(root, Transport.VIRTIOFS, "unlisted")  # no PCI window read here
    assert not listed_now(root, Transport.NINEP, "weird tag#1")  # a tag is per transport
    assert listed_now(root, Transport.NINEP, "hostshare")
    assert not listed_now(root, Transport.VIRTIOFS, "hostshare")


def test_device_without_sysfs_tag_makes_discovery_incomplete(tmp_path: Path):
    tree = FakeTree(tmp_path)
    tree.virtiofs("listed")
    tree.virtiofs("unlisted", sysfs=False)  # an older kernel, and no PCI config to read here
    found = discover(SysRoot(tmp_path))
    assert [s.tag for s in found.shares] == ["listed"]
    assert not found.complete


def test_mountinfo_decodes_octal_escapes_and_keeps_order():
    text = (
        "22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda rw,errors=remount-ro\n"
        "98 22 0:52 / /mnt/virtiofs/weird%20tag%231 rw,nosuid,nodev,relatime shared:60 - "
        "virtiofs weird\\040tag#1 rw\n"
        "99 22 0:53 / /mnt/a\\040b rw - virtiofs back\\134slash rw\n"
        "garbage line\n"
        "100 22 0:54 / /mnt/a\\040b rw - tmpfs tmpfs rw\n"
    )
    entries = parse_mountinfo(text)
    assert [e.mount_id for e in entries] == [22, 98, 99, 100]
    assert entries[1].source == "weird tag#1"
    assert entries[1].options == ("rw", "nosuid", "nodev", "relatime")
    assert entries[2].target == "/mnt/a b" and entries[2].source == "back\\slash"
