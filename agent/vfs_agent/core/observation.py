"""What one look at the system saw, as plain data: the shares attached (Share, Discovery), the
mounts (Mounted) and their liveness (Observed).

The observing edges (system/) fill these in; the pure core (plan, status, renderers) reads them."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property

from vfs_agent.core.transport import Transport


class Source(StrEnum):
    """Where discovery learned about a share."""

    SYSFS = "sysfs"  # /sys/fs/virtiofs/<n>/tag (Linux >= 6.9)
    PCI_CONFIG = "pci-config"  # virtio-pci configuration access window (any kernel)
    NINEP_SYSFS = "9p-sysfs"  # /sys/bus/virtio/devices/virtioN/mount_tag
    POLICY = "policy"  # named in the policy only; presence unknown (lockdown fallback)


@dataclass(frozen=True, order=True)
class Share:
    """One share the hypervisor attached. `tag` is untrusted text chosen by the host."""

    tag: str
    transport: Transport
    device: str | None = None  # virtio device name, e.g. "virtio3", when known
    source: Source = Source.SYSFS


@dataclass(frozen=True)
class Mounted:
    """One line of /proc/self/mountinfo, escapes decoded."""

    mount_id: int
    parent_id: int
    target: str
    fstype: str
    source: str
    options: tuple[str, ...] = field(default=())
    super_options: tuple[str, ...] = field(default=())
    device: str = ""  # "major:minor" of the filesystem (a FUSE mount's connection number)


@dataclass(frozen=True)
class Discovery:
    shares: tuple[Share, ...]
    # True when every attached virtio-fs device's tag is known; only then may a mount whose tag
    # is absent be treated as stale.
    complete: bool
    problems: tuple[str, ...] = field(default=())
    # The same for 9p: False when a 9p device's tag could not be read (then no 9p mount may be
    # taken for stale). 9p tags need no other source, so this is normally True.
    ninep_complete: bool = True
    # virtio-fs devices the kernel is removing (PCI address and virtio name, as a person finds
    # them). While one is, every new virtio-fs mount(2) waits for that removal to end.
    removing: tuple[str, ...] = field(default=())

    def gone(self, mount: Mounted) -> bool:
        """Whether the share that `mount` (a share mount) was made from is known to be no longer
        attached: this discovery knows every tag of the mount's transport (its filesystem type)
        and none of them is the mount's source."""
        complete = self.ninep_complete if mount.fstype == Transport.NINEP.value else self.complete
        return complete and (mount.fstype, mount.source) not in self._listed

    @cached_property
    def _listed(self) -> frozenset[tuple[str, str]]:
        return frozenset((s.transport.value, s.tag) for s in self.shares)


# The filesystem types of share mounts: what liveness probes and status look at.
SHARE_FSTYPES = frozenset(t.value for t in Transport)


@dataclass(frozen=True)
class Observed:
    discovery: Discovery
    table: list[Mounted]
    dead: frozenset[str]  # share mounts that answer ENOTCONN (device gone)
    unresponsive: frozenset[str]  # share mounts that did not answer at all (daemon gone)
    # virtio-fs tags whose host did not answer when a generated unit was to mount them
    # (system/answer.py), with the seconds it was given
    unanswered: tuple[tuple[str, int], ...] = ()
