"""Kernel uevents for virtio-fs and 9p shares, through pyudev, behind a fileno()/poll() door.

The daemon only needs "something about shares changed": which one, and how, goes into the log;
what to do is decided by a fresh discovery and plan. No polling: the caller sleeps in
select(2) on fileno() until udev has an event.
"""

from __future__ import annotations

import contextlib
import re
import socket
from dataclasses import dataclass
from typing import Protocol

from vfs_agent.core.transport import Transport


@dataclass(frozen=True)
class ShareEvent:
    action: str  # add, remove, bind, unbind, change
    subsystem: str  # virtiofs or virtio
    devpath: str
    tag: str | None  # TAG= on virtiofs events
    driver: str | None
    modalias: str | None = None  # MODALIAS= on virtio events: virtio:d<device>v<vendor>


class EventSource(Protocol):
    def fileno(self) -> int: ...
    def drain(self) -> list[ShareEvent]: ...
    def close(self) -> None: ...


SHARE_DRIVERS = frozenset({"virtiofs", "9pnet_virtio"})
# Virtio device ids (MODALIAS virtio:d<8 hex digits>v<8 hex digits>) of share devices.
SHARE_DEVICE_IDS = {0x1A: Transport.VIRTIOFS, 0x09: Transport.NINEP}
_MODALIAS = re.compile(r"virtio:d([0-9A-Fa-f]{8})v[0-9A-Fa-f]{8}")


def needs_driver(event: ShareEvent) -> Transport | None:
    """The transport of a share device that was just added and is not bound to a driver yet
    (`add` comes before `bind`). Usually the driver binds by itself (built in, or loaded by
    udevd); where it is an unloaded module and no udevd runs, nothing binds until someone
    loads it, and no `bind` uevent comes (Debian 12's virtiofs.ko in a guest without udevd)."""
    if event.subsystem != "virtio" or event.action != "add" or event.driver:
        return None
    match = _MODALIAS.fullmatch(event.modalias or "")
    return SHARE_DEVICE_IDS.get(int(match.group(1), 16)) if match else None


def relevant(event: ShareEvent) -> bool:
    """virtiofs add/remove (TAG=), and virtio bind/unbind/remove of share devices (older
    kernels have no virtiofs events). A virtio remove has no DRIVER: it may have been a share.
    A virtio add of a share device: its driver may have to be loaded (needs_driver)."""
    if event.subsystem == "virtiofs":
        return True
    if event.subsystem != "virtio":
        return False
    return (
        event.action == "remove" or event.driver in SHARE_DRIVERS or needs_driver(event) is not None
    )


def udevd_running(control: str = "/run/udev/control") -> bool:
    """Whether systemd-udevd listens on its control socket (a leftover file is not enough)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
        try:
            sock.connect(control)
        except OSError:
            return False
    return True


class UdevEvents:
    """pyudev's netlink monitor. With udevd running, the 'udev' source: events after udev's
    rules ran, so a share's device unit and /dev alias exist by the time the daemon acts.
    Without udevd (minimal guests, initramfs), the kernel's own uevents."""

    def __init__(self) -> None:
        import pyudev

        source = "udev" if udevd_running() else "kernel"
        self._monitor = pyudev.Monitor.from_netlink(pyudev.Context(), source=source)
        self.source = source
        self._monitor.filter_by("virtio")
        self._monitor.filter_by("virtiofs")
        # A large buffer survives hotplug storms; it needs CAP_NET_ADMIN (SO_RCVBUFFORCE),
        # which the hardened service does not have: then the kernel default it is. Events
        # lost to an overflow are not lost work: every batch ends in a full reconcile.
        with contextlib.suppress(PermissionError):
            self._monitor.set_receive_buffer_size(4 * 1024 * 1024)
        self._monitor.start()

    def fileno(self) -> int:
        return int(self._monitor.fileno())

    def drain(self) -> list[ShareEvent]:
        events: list[ShareEvent] = []
        while True:
            device = self._monitor.poll(timeout=0)
            if device is None:
                return events
            event = ShareEvent(
                action=device.action or "",
                subsystem=device.subsystem or "",
                devpath=device.device_path,
                tag=device.properties.get("TAG"),
                driver=device.properties.get("DRIVER") or device.driver,
                modalias=device.properties.get("MODALIAS"),
            )
            if relevant(event):
                events.append(event)

    def close(self) -> None:
        # pyudev closes the netlink socket when the monitor is collected; drop our reference.
        del self._monitor
