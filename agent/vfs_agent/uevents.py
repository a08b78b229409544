"""Kernel uevents for virtio-fs and 9p shares, through pyudev, behind a fileno()/poll() door.

The daemon only needs "something about shares changed": which one, and how, goes into the log;
what to do is decided by a fresh discovery and plan. No polling: the caller sleeps in poll(2)
on fileno() until udev has an event.
"""

from __future__ import annotations

import contextlib
import socket
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class ShareEvent:
    action: str  # add, remove, bind, unbind, change
    subsystem: str  # virtiofs or virtio
    devpath: str
    tag: str | None  # TAG= on virtiofs events
    driver: str | None


class EventSource(Protocol):
    def fileno(self) -> int: ...
    def drain(self) -> list[ShareEvent]: ...
    def close(self) -> None: ...


SHARE_DRIVERS = frozenset({"virtiofs", "9pnet_virtio"})


def relevant(event: ShareEvent) -> bool:
    """virtiofs add/remove (TAG=), and virtio bind/unbind/remove of share devices (older
    kernels have no virtiofs events). A virtio remove has no DRIVER: it may have been a share."""
    if event.subsystem == "virtiofs":
        return True
    if event.subsystem != "virtio":
        return False
    return event.action == "remove" or (event.driver in SHARE_DRIVERS)


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
            )
            if relevant(event):
                events.append(event)

    def close(self) -> None:
        # pyudev closes the netlink socket when the monitor is collected; drop our reference.
        del self._monitor
