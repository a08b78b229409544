"""QEMU command lines: machine, memory, disks, channel, shares; option-value escaping.

Chosen for this machine (tests/guestlib/README.md, "Machine facts"): TCG only (KVM is present
but unusable), one TCG thread for both vCPUs (`thread=single`: the same CPU time per boot as a
thread per vCPU, on one core, so two guests run side by side; and the guest kernel's code
patching cannot meet TCG's int3 fault; the guest benchmarks choose a thread per vCPU, see
VMConfig.tcg_thread), `-cpu qemu64 -smp 2 -m 2048` (`-cpu max` oopsed once), memory in a
shared memfd because vhost-user (virtiofsd) maps guest RAM.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

# "single": every vCPU in one TCG thread; "multi": a thread per vCPU (VMConfig.tcg_thread).
TcgThread = Literal["single", "multi"]
QEMU_BINARY = "qemu-system-x86_64"
CHANNEL_NAME = "org.vfs-agent.test"


def escape(value: str) -> str:
    """Escape a value for QEMU's option parser (-device, -chardev ...): ',' becomes ',,'."""
    return value.replace(",", ",,")


def option(driver: str, **props: str | int) -> str:
    """`driver,key=value,...` with every value escaped (keys are passed as written)."""
    return ",".join([driver, *(f"{key}={escape(str(value))}" for key, value in props.items())])


@dataclass(frozen=True)
class Disk:
    """An extra virtio disk (e.g. a cloud-init NoCloud seed), after the root disk."""

    path: Path
    format: str = "raw"
    readonly: bool = True


def machine_argv(
    *, name: str, cpus: int, memory_mb: int, tcg_thread: TcgThread = "single"
) -> list[str]:
    return [
        QEMU_BINARY,
        "-name",
        escape(name),
        "-machine",
        "q35",
        "-accel",
        f"tcg,thread={tcg_thread}",
        "-cpu",
        "qemu64",
        "-smp",
        str(cpus),
        "-m",
        str(memory_mb),
        "-object",
        option("memory-backend-memfd", id="mem", size=f"{memory_mb}M", share="on"),
        "-numa",
        "node,memdev=mem",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-device",
        "virtio-rng-pci",
    ]


def boot_argv(*, kernel: Path, initrd: Path, cmdline: str, serial_log: Path) -> list[str]:
    return [
        "-kernel",
        str(kernel),
        "-initrd",
        str(initrd),
        "-append",
        cmdline,
        "-chardev",
        option("file", id="serial0", path=str(serial_log)),
        "-serial",
        "chardev:serial0",
    ]


def qmp_argv(socket_path: Path) -> list[str]:
    return [
        "-chardev",
        option("socket", id="qmp", path=str(socket_path), server="on", wait="off"),
        "-mon",
        "chardev=qmp,mode=control",
    ]


def channel_argv(socket_path: Path) -> list[str]:
    return [
        "-device",
        "virtio-serial-pci,id=vser0",
        "-chardev",
        option("socket", id="chan0", path=str(socket_path), server="on", wait="off"),
        "-device",
        option("virtserialport", bus="vser0.0", chardev="chan0", name=CHANNEL_NAME),
    ]


def disk_argv(root_overlay: Path, extra: Sequence[Disk]) -> list[str]:
    """The root overlay first, so the guest calls it /dev/vda; extra disks follow."""
    argv = [
        "-drive",
        option("if=none", id="root", file=str(root_overlay), format="qcow2", cache="unsafe"),
        "-device",
        "virtio-blk-pci,drive=root",
    ]
    for index, disk in enumerate(extra):
        drive = option(
            "if=none",
            id=f"disk{index}",
            file=str(disk.path),
            format=disk.format,
            readonly="on" if disk.readonly else "off",
        )
        argv += ["-drive", drive, "-device", f"virtio-blk-pci,drive=disk{index}"]
    return argv


def root_ports_argv(count: int) -> list[str]:
    """PCIe root ports `hp0..`: every virtio-fs device sits on one, so each can be unplugged."""
    argv: list[str] = []
    for index in range(count):
        argv += ["-device", option("pcie-root-port", id=f"hp{index}", chassis=index + 1)]
    return argv


def virtiofs_argv(ident: str, tag: str, socket_path: Path, bus: str) -> list[str]:
    return [
        "-chardev",
        option("socket", id=f"chr-{ident}", path=str(socket_path)),
        "-device",
        option("vhost-user-fs-pci", id=ident, chardev=f"chr-{ident}", tag=tag, bus=bus),
    ]


def ninep_argv(ident: str, tag: str, source: Path) -> list[str]:
    return [
        "-fsdev",
        option("local", id=f"fsdev-{ident}", path=str(source), security_model="none"),
        "-device",
        option("virtio-9p-pci", id=ident, fsdev=f"fsdev-{ident}", mount_tag=tag),
    ]
