"""Tests for discovery_pci: tags read through an emulated virtio-pci config window."""

from __future__ import annotations

import errno
import json
import struct
import tempfile
from pathlib import Path

import pytest
from fake_pci import PCI_CFG_POS, FakePciBus, FakeVirtioPci
from hypothesis import given
from hypothesis import strategies as st

from vfs_agent.core.observation import Share, Source
from vfs_agent.core.transport import Transport
from vfs_agent.system.pci_config import (
    PciDiscovery,
    capability_offsets,
    decode_tag,
    discover_pci,
    main,
    parse_virtio_cap,
)

ADDRESS = "0000:00:04.0"


def discover_one(root: Path, device: FakeVirtioPci, virtio: str | None = "virtio2") -> PciDiscovery:
    bus = FakePciBus()
    bus.add(root, device, ADDRESS, virtio)
    return discover_pci(root, bus.open)


def tag_of(root: Path, raw: bytes) -> str:
    result = discover_one(root, FakeVirtioPci(tag=raw))
    assert result.problems == ()
    (share,) = result.shares
    return share.tag


# --- discovery through the window -----------------------------------------------------------


def test_reads_the_tag_of_a_virtio_fs_device(tmp_path: Path) -> None:
    device = FakeVirtioPci(tag=b"media_tag")
    result = discover_one(tmp_path, device)
    assert result == PciDiscovery(
        shares=(Share("media_tag", Transport.VIRTIOFS, "virtio2", Source.PCI_CONFIG),),
    )
    assert device.window_reads == 9
    assert device.foreign_writes == []
    assert device.isr_reads == 0


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"media_tag", "media_tag"),
        (b"weird tag#1", "weird tag#1"),
        (b"x" * 36, "x" * 36),
        (b"0123456789abcdefghijklmnopqrstuvwxyz", "0123456789abcdefghijklmnopqrstuvwxyz"),
        ("données-été-✓".encode(), "données-été-✓"),
        (b"bad\xff\xfeutf8", "bad\udcff\udcfeutf8"),
        (b"cut\0here", "cut"),
        (b"../../etc", "../../etc"),
    ],
)
def test_tags_decode_like_the_kernel(tmp_path: Path, raw: bytes, expected: str) -> None:
    tag = tag_of(tmp_path, raw)
    assert tag == expected
    assert tag.encode("utf-8", "surrogateescape") == raw.split(b"\0")[0]


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "empty tag"),
        (b"\0junk", "empty tag"),
        (b"two\nlines", "newline"),
    ],
)
def test_tags_the_kernel_refuses_are_problems(tmp_path: Path, raw: bytes, reason: str) -> None:
    result = discover_one(tmp_path, FakeVirtioPci(tag=raw))
    assert result.shares == ()
    (problem,) = result.problems
    assert reason in problem
    assert problem.startswith(f"cannot read the tag of virtio-fs device {ADDRESS} (virtio2): ")


def test_other_devices_are_ignored(tmp_path: Path) -> None:
    bus = FakePciBus()
    bus.add(tmp_path, FakeVirtioPci(tag=b"fs"), "0000:00:05.0", "virtio3")
    FakeVirtioPci(device=0x1041).install(tmp_path, "0000:00:03.0", "virtio0")  # virtio-net
    FakeVirtioPci(vendor=0x8086).install(tmp_path, "0000:00:02.0")  # same id, other vendor
    FakeVirtioPci(device=0x1009).install(tmp_path, "0000:00:06.0", "virtio1")  # legacy 9p
    odd = tmp_path / "sys/bus/pci/devices/0000:00:07.0"
    odd.mkdir()
    (odd / "vendor").write_text("not hex\n")
    result = discover_pci(tmp_path, bus.open)
    assert result == PciDiscovery(
        shares=(Share("fs", Transport.VIRTIOFS, "virtio3", Source.PCI_CONFIG),),
    )


def test_several_devices_in_address_order(tmp_path: Path) -> None:
    bus = FakePciBus()
    bus.add(tmp_path, FakeVirtioPci(tag=b"weird tag#1"), "0000:00:0a.0", "virtio4")
    bus.add(tmp_path, FakeVirtioPci(tag=b"media_tag"), "0000:00:04.0", "virtio1")
    result = discover_pci(tmp_path, bus.open)
    assert [(share.device, share.tag) for share in result.shares] == [
        ("virtio1", "media_tag"),
        ("virtio4", "weird tag#1"),
    ]


def test_unbound_device_has_no_virtio_name(tmp_path: Path) -> None:
    result = discover_one(tmp_path, FakeVirtioPci(tag=b"t"), virtio=None)
    assert result.shares == (Share("t", Transport.VIRTIOFS, None, Source.PCI_CONFIG),)


def test_duplicate_tags_are_reported(tmp_path: Path) -> None:
    bus = FakePciBus()
    bus.add(tmp_path, FakeVirtioPci(tag=b"same"), "0000:00:04.0", "virtio1")
    bus.add(tmp_path, FakeVirtioPci(tag=b"same"), "0000:00:05.0", "virtio2")
    result = discover_pci(tmp_path, bus.open)
    assert len(result.shares) == 2
    (problem,) = result.problems
    assert "'same'" in problem
    assert "virtio1, virtio2" in problem


def test_no_pci_bus_means_nothing_found(tmp_path: Path) -> None:
    assert discover_pci(tmp_path, FakePciBus().open) == PciDiscovery()


# --- odd devices ----------------------------------------------------------------------------


def test_device_without_pci_cfg_capability(tmp_path: Path) -> None:
    device = FakeVirtioPci(with_pci_cfg=False)
    result = discover_one(tmp_path, device)
    assert result.shares == ()
    assert result.problems == (
        f"cannot read the tag of virtio-fs device {ADDRESS} (virtio2): the device offers no "
        "virtio PCI configuration access capability: name the tag in the policy",
    )
    assert device.foreign_writes == []


def test_capability_loop_is_bounded(tmp_path: Path) -> None:
    assert tag_of_device(tmp_path, FakeVirtioPci(tag=b"looped", cap_loop=True)) == "looped"


def tag_of_device(root: Path, device: FakeVirtioPci) -> str:
    result = discover_one(root, device)
    assert result.problems == ()
    return result.shares[0].tag


def test_capability_self_loop_without_virtio_caps(tmp_path: Path) -> None:
    device = FakeVirtioPci()
    device.config[0x40:0x44] = bytes([0x11, 0x40, 0, 0])  # MSI-X pointing at itself
    result = discover_one(tmp_path, device)
    assert "no virtio capabilities" in result.problems[0]


@pytest.mark.parametrize(
    ("size", "reason"),
    [
        (0, "no virtio capabilities (0 bytes readable)"),
        (0x40, "no virtio capabilities (64 bytes readable)"),  # what a non-root reader sees
        (0x74, "no virtio PCI configuration access capability"),  # chain cut after 0x70
        (0xA0, "no virtio PCI configuration access capability"),  # window cap cut short
        (0xAA, "the access window is cut short"),  # data field cut short
    ],
)
def test_truncated_config_space(tmp_path: Path, size: int, reason: str) -> None:
    result = discover_one(tmp_path, FakeVirtioPci(config_size=size))
    assert result.shares == ()
    (problem,) = result.problems
    assert reason in problem


def test_truncated_config_file_through_the_real_opener(tmp_path: Path) -> None:
    FakeVirtioPci(config_size=0x30).install(tmp_path, ADDRESS, "virtio2")
    (problem,) = discover_pci(tmp_path).problems
    assert "no virtio capabilities (48 bytes readable)" in problem


def test_static_config_file_through_the_real_opener(tmp_path: Path) -> None:
    # A plain file is no device: the window reads back zeros, an empty tag, never a crash.
    FakeVirtioPci().install(tmp_path, ADDRESS, "virtio2")
    (problem,) = discover_pci(tmp_path).problems
    assert "empty tag" in problem


def test_unaligned_device_config_uses_byte_reads(tmp_path: Path) -> None:
    device = FakeVirtioPci(tag=b"odd-offset", device_cfg_offset=0x2001)
    assert tag_of_device(tmp_path, device) == "odd-offset"
    assert device.window_reads == 36


@pytest.mark.parametrize(
    ("device", "reason"),
    [
        (FakeVirtioPci(bar=7), "no usable device-specific configuration"),
        (FakeVirtioPci(device_cfg_length=35), "no usable device-specific configuration"),
    ],
)
def test_unusable_device_config(tmp_path: Path, device: FakeVirtioPci, reason: str) -> None:
    result = discover_one(tmp_path, device)
    assert result.shares == ()
    (problem,) = result.problems
    assert reason in problem


def test_device_config_beyond_32_bits(tmp_path: Path) -> None:
    device = FakeVirtioPci()
    struct.pack_into("<I", device.config, 0x70 + 8, 0xFFFFFFF0)
    (problem,) = discover_one(tmp_path, device).problems
    assert "beyond a 32-bit BAR offset" in problem


def test_window_cap_with_short_cap_len_is_not_used(tmp_path: Path) -> None:
    device = FakeVirtioPci()
    device.config[PCI_CFG_POS + 2] = 16  # claims no room for pci_cfg_data
    (problem,) = discover_one(tmp_path, device).problems
    assert "no virtio PCI configuration access capability" in problem


# --- refused access -------------------------------------------------------------------------


@pytest.mark.parametrize("code", [errno.EPERM, errno.EACCES])
def test_refused_config_write_is_a_clear_problem(tmp_path: Path, code: int) -> None:
    result = discover_one(tmp_path, FakeVirtioPci(write_errno=code))
    assert result.shares == ()
    assert result.problems == (
        f"cannot read the tag of virtio-fs device {ADDRESS} (virtio2): writing PCI config "
        "space is refused (kernel lockdown?): name the tag in the policy",
    )


def test_refused_open_says_root_is_needed(tmp_path: Path) -> None:
    bus = FakePciBus(open_errno=errno.EACCES)
    bus.add(tmp_path, FakeVirtioPci(), ADDRESS, "virtio2")
    (problem,) = discover_pci(tmp_path, bus.open).problems
    assert "must run as root" in problem
    assert problem.endswith("name the tag in the policy")


def test_other_write_errors_are_problems_too(tmp_path: Path) -> None:
    (problem,) = discover_one(tmp_path, FakeVirtioPci(write_errno=errno.EIO)).problems
    assert "writing PCI config space failed: Input/output error" in problem


def test_one_refused_device_does_not_hide_the_others(tmp_path: Path) -> None:
    bus = FakePciBus()
    bus.add(tmp_path, FakeVirtioPci(tag=b"ok"), "0000:00:04.0", "virtio1")
    bus.add(tmp_path, FakeVirtioPci(write_errno=errno.EPERM), "0000:00:05.0", "virtio2")
    result = discover_pci(tmp_path, bus.open)
    assert [share.tag for share in result.shares] == ["ok"]
    assert len(result.problems) == 1
    assert "0000:00:05.0 (virtio2)" in result.problems[0]


# --- pure helpers ---------------------------------------------------------------------------


def test_capability_walk_needs_the_status_bit() -> None:
    config = bytearray(FakeVirtioPci().config)
    assert capability_offsets(bytes(config)) == (0x50, 0x60, 0x70, 0x80, PCI_CFG_POS)
    config[0x06] = 0
    assert capability_offsets(bytes(config)) == ()


def test_capability_walk_ignores_pointers_into_the_header() -> None:
    config = bytearray(0x100)
    config[0x06] = 0x10
    config[0x34] = 0x3C
    assert capability_offsets(bytes(config)) == ()


def test_capability_walk_masks_low_pointer_bits() -> None:
    config = bytearray(FakeVirtioPci().config)
    config[0x34] = 0x53  # -> 0x50
    assert capability_offsets(bytes(config))[0] == 0x50


def test_parse_virtio_cap_refuses_short_caps() -> None:
    config = bytes(FakeVirtioPci().config)
    cap = parse_virtio_cap(config, 0x70)
    assert cap is not None
    assert (cap.cfg_type, cap.bar, cap.offset, cap.length) == (4, 4, 0x2000, 0x1000)
    assert parse_virtio_cap(config[:0x7F], 0x70) is None
    short = bytearray(config)
    short[0x72] = 8
    assert parse_virtio_cap(bytes(short), 0x70) is None


def test_decode_tag() -> None:
    assert decode_tag(b"abc\0\0\0") == "abc"
    assert decode_tag(b"y" * 40) == "y" * 36
    assert decode_tag(b"\xc3") == "\udcc3"


# --- properties -----------------------------------------------------------------------------


@given(st.binary(min_size=1, max_size=36))
def test_any_tag_bytes_read_as_the_kernel_would(raw: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        result = discover_one(Path(tmp), FakeVirtioPci(tag=raw))
    kept = raw.split(b"\0")[0]
    if not kept or b"\n" in kept:
        assert result.shares == ()
        assert len(result.problems) == 1
    else:
        (share,) = result.shares
        assert share.tag.encode("utf-8", "surrogateescape") == kept


@given(
    st.text(
        st.characters(blacklist_characters="\0\n", blacklist_categories=["Cs"]), min_size=1
    ).filter(lambda text: len(text.encode()) <= 36)
)
def test_text_tags_round_trip(tag: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        assert tag_of(Path(tmp), tag.encode()) == tag


# --- checker --------------------------------------------------------------------------------


def test_checker_prints_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path)]) == 0
    assert json.loads(capsys.readouterr().out) == {"problems": [], "shares": []}
    FakeVirtioPci().install(tmp_path, ADDRESS, "virtio2")
    assert main([str(tmp_path)]) == 1
    assert len(json.loads(capsys.readouterr().out)["problems"]) == 1
