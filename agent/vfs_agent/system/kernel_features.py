"""What the kernel supports for virtio-fs and 9p, read from /proc, /sys and /lib/modules.

A hint for people: a file that cannot be read counts as absent here (SysRoot.read_optional),
and the report says "unknown" where that leaves it unsure."""

from __future__ import annotations

import gzip
import re
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from vfs_agent.system.discovery import SYSFS_VIRTIOFS, VIRTIO_ID_9P, VIRTIO_ID_FS, virtio_devices
from vfs_agent.system.kernel_modules import filesystem_registered
from vfs_agent.system.sysroot import SysRoot

HOST_CONFIG_HINT = """\
the host must attach the share; with libvirt:
  <memoryBacking><source type='memfd'/><access mode='shared'/></memoryBacking>
  <filesystem type='mount' accessmode='passthrough'>
    <driver type='virtiofs'/>
    <source dir='/srv/share'/>
    <target dir='share_tag'/>
  </filesystem>
with QEMU: -object memory-backend-memfd,id=mem,size=2G,share=on -numa node,memdev=mem
  -chardev socket,id=fs0,path=/run/virtiofsd.sock
  -device vhost-user-fs-pci,chardev=fs0,tag=share_tag"""


class ModuleState(StrEnum):
    BUILTIN = "built-in"
    LOADED = "loaded"
    MODULE = "module"  # available as a module, not loaded
    MISSING = "missing"


@dataclass(frozen=True)
class Problem:
    message: str
    hint: str


@dataclass(frozen=True)
class KernelReport:
    release: str
    virtiofs: ModuleState
    ninep: ModuleState
    sysfs_tags: bool  # /sys/fs/virtiofs exists
    virtiofs_devices: tuple[str, ...]
    ninep_devices: tuple[str, ...]
    dax: bool | None  # CONFIG_FUSE_DAX; None when the kernel config cannot be read
    lockdown: str | None
    problems: tuple[Problem, ...] = field(default=())

    @property
    def usable(self) -> bool:
        return self.virtiofs is not ModuleState.MISSING

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["usable"] = self.usable
        return data


def kernel_release(sysroot: SysRoot) -> str:
    text = sysroot.read_optional("/proc/sys/kernel/osrelease")
    if text:
        return text.strip()
    releases = sysroot.listdir_optional("/lib/modules") or sysroot.listdir_optional(
        "/usr/lib/modules"
    )
    return releases[-1] if len(releases) >= 1 else "unknown"


def _modules_dir(sysroot: SysRoot, release: str) -> str:
    for base in ("/lib/modules", "/usr/lib/modules"):
        if sysroot.exists(f"{base}/{release}"):
            return f"{base}/{release}"
    return f"/lib/modules/{release}"


def _module_listed(text: str | None, name: str) -> bool:
    """Whether modules.builtin / modules.dep name <name>.ko (any compression)."""
    if not text:
        return False
    pattern = re.compile(rf"(^|/){re.escape(name)}\.ko(\.[a-z]+)?(:|$)", re.MULTILINE)
    return bool(pattern.search(text))


def module_state(sysroot: SysRoot, release: str, fstype: str, module: str) -> ModuleState:
    registered = filesystem_registered(sysroot, fstype)
    loaded = any(
        line.split(" ", 1)[0] == module
        for line in (sysroot.read_optional("/proc/modules") or "").splitlines()
    )
    directory = _modules_dir(sysroot, release)
    if _module_listed(sysroot.read_optional(f"{directory}/modules.builtin"), module):
        return ModuleState.BUILTIN
    if loaded:
        return ModuleState.LOADED
    if registered:
        return ModuleState.BUILTIN
    if _module_listed(sysroot.read_optional(f"{directory}/modules.dep"), module):
        return ModuleState.MODULE
    return ModuleState.MISSING


def kernel_config(sysroot: SysRoot, release: str) -> str | None:
    text = sysroot.read_optional(f"/boot/config-{release}")
    if text is not None:
        return text
    try:
        raw = sysroot.read_bytes("/proc/config.gz")
        return None if raw is None else gzip.decompress(raw).decode("utf-8", "replace")
    except OSError:  # unreadable or not gzip: DAX shows as unknown
        return None


def lockdown_state(sysroot: SysRoot) -> str | None:
    text = sysroot.read_optional("/sys/kernel/security/lockdown")
    match = re.search(r"\[(\w+)\]", text or "")
    return match.group(1) if match else None


def _devices(sysroot: SysRoot, device_id: int) -> list[str]:
    try:
        return virtio_devices(sysroot, device_id)
    except OSError:  # an unlistable bus: discovery reports it; here, no device known
        return []


def kernel_report(sysroot: SysRoot) -> KernelReport:
    release = kernel_release(sysroot)
    virtiofs = module_state(sysroot, release, "virtiofs", "virtiofs")
    ninep = module_state(sysroot, release, "9p", "9p")
    config = kernel_config(sysroot, release)
    dax = None if config is None else bool(re.search(r"^CONFIG_FUSE_DAX=y", config, re.MULTILINE))
    report = KernelReport(
        release=release,
        virtiofs=virtiofs,
        ninep=ninep,
        sysfs_tags=sysroot.exists(SYSFS_VIRTIOFS),
        virtiofs_devices=tuple(_devices(sysroot, VIRTIO_ID_FS)),
        ninep_devices=tuple(_devices(sysroot, VIRTIO_ID_9P)),
        dax=dax,
        lockdown=lockdown_state(sysroot),
    )
    return KernelReport(**{**asdict(report), "problems": tuple(_problems(report))})


def _problems(r: KernelReport) -> list[Problem]:
    out = []
    if r.virtiofs is ModuleState.MISSING:
        out.append(
            Problem(
                "this kernel has no virtiofs support",
                "boot a kernel with CONFIG_VIRTIO_FS (Linux >= 5.4; Debian: linux-image-amd64)",
            )
        )
    elif r.virtiofs is ModuleState.MODULE:
        out.append(
            Problem(
                "virtiofs is available as a module but not loaded",
                "'vfs-agent mount-all' loads it; by hand: modprobe virtiofs",
            )
        )
    if not r.virtiofs_devices and not r.ninep_devices:
        out.append(Problem("no virtio-fs device is attached to this machine", HOST_CONFIG_HINT))
    if r.virtiofs_devices and not r.sysfs_tags:
        out.append(
            Problem(
                "this kernel does not list virtio-fs tags in /sys/fs/virtiofs (Linux < 6.9, "
                "or the module is not loaded)",
                "tags are read through the virtio-pci config window instead (needs root)",
            )
        )
    if r.lockdown not in (None, "none"):
        out.append(
            Problem(
                f"kernel lockdown is '{r.lockdown}': "
                "reading tags through PCI config space may be refused",
                "name every tag in the policy; vfs-agent then tries those tags directly",
            )
        )
    if r.dax is False:
        out.append(
            Problem(
                "DAX is not available (CONFIG_FUSE_DAX is not set)",
                "drop 'dax' options from the policy",
            )
        )
    return out
