"""Mount options: which are accepted, how rule options combine with defaults, and how they
become mount(2) flags and filesystem data."""

from __future__ import annotations

import re
from dataclasses import dataclass

from vfs_agent.core.transport import Transport

# mount(2) flags, from <linux/mount.h>.
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_SYNCHRONOUS = 16
MS_DIRSYNC = 128
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24
MS_LAZYTIME = 1 << 25

# option -> (flag, set?) ; options in one group override each other, the last one wins.
_FLAG_OPTIONS: dict[str, tuple[int, bool]] = {
    "ro": (MS_RDONLY, True),
    "rw": (MS_RDONLY, False),
    "nosuid": (MS_NOSUID, True),
    "suid": (MS_NOSUID, False),
    "nodev": (MS_NODEV, True),
    "dev": (MS_NODEV, False),
    "noexec": (MS_NOEXEC, True),
    "exec": (MS_NOEXEC, False),
    "sync": (MS_SYNCHRONOUS, True),
    "async": (MS_SYNCHRONOUS, False),
    "dirsync": (MS_DIRSYNC, True),
    "noatime": (MS_NOATIME, True),
    "atime": (MS_NOATIME, False),
    "nodiratime": (MS_NODIRATIME, True),
    "diratime": (MS_NODIRATIME, False),
    "relatime": (MS_RELATIME, True),
    "norelatime": (MS_RELATIME, False),
    "strictatime": (MS_STRICTATIME, True),
    "nostrictatime": (MS_STRICTATIME, False),
    "lazytime": (MS_LAZYTIME, True),
    "nolazytime": (MS_LAZYTIME, False),
}

# Filesystem options (key or key=value), by transport; values are checked by a pattern.
_DATA_OPTIONS: dict[Transport, dict[str, str | None]] = {
    Transport.VIRTIOFS: {"dax": r"always|never|inode|"},
    Transport.NINEP: {
        "msize": r"[0-9]{1,9}",
        "cache": r"none|loose|fscache|mmap|readahead",
        "access": r"user|any|client|[0-9]{1,10}",
        "posixacl": None,
        "noxattr": None,
        # Set by vfs-agent itself (see NINEP_BASE_DATA); a policy may not name them.
        "trans": r"virtio",
        "version": r"9p2000\.L|9p2000\.u|9p2000",
    },
}

# SELinux labels (any transport; the LSM, not the filesystem, reads them). A context is
# user:role:type[:level]; a level with categories holds commas, so such a value must be
# quoted as mount(8) and the kernel expect: context="system_u:object_r:t:s0:c1,c2".
CONTEXT_OPTIONS = ("context", "fscontext", "defcontext", "rootcontext")
_CONTEXT_VALUE = re.compile(r'[A-Za-z0-9_.:-]+|"[A-Za-z0-9_.:,-]+"')

# Options the policy expresses otherwise; naming them is an error with a hint.
_RESERVED = {
    "nofail": "use 'required: false' (the default) instead of 'nofail'",
    "auto": "every share a rule names is mounted; drop 'auto'",
    "noauto": "use 'ignore: true' to leave a share alone",
    "defaults": "drop 'defaults'; list only what differs",
    "_netdev": "virtio-fs is a local filesystem; drop '_netdev'",
    "user": "user mounts are not supported; drop 'user'",
    "users": "user mounts are not supported; drop 'users'",
    "trans": "vfs-agent sets trans=virtio for 9p itself",
    "version": "vfs-agent sets version=9p2000.L for 9p itself",
}

_OPTION_SYNTAX = re.compile(r"[A-Za-z0-9_.:+-]+(=[A-Za-z0-9_.:+/@-]*)?")

NINEP_BASE_DATA = ("trans=virtio", "version=9p2000.L", "msize=262144")


def option_key(option: str) -> str:
    return option.split("=", 1)[0]


def option_problem(option: str) -> str | None:
    """Why `option` is not accepted in a policy, or None. Transport-specific data options are
    accepted here and checked against the transport when the mount is planned."""
    key = option_key(option)
    if key in CONTEXT_OPTIONS:
        return _context_problem(option)
    if not _OPTION_SYNTAX.fullmatch(option):
        return "not a single mount option (no commas, spaces or quotes)"
    if key in _RESERVED:
        return f"not accepted here: {_RESERVED[key]}"
    if option in _FLAG_OPTIONS or key.startswith("x-"):
        return None
    for table in _DATA_OPTIONS.values():
        if key in table:
            pattern = table[key]
            value = option.partition("=")[2]
            if pattern is None:
                return None if "=" not in option else f"'{key}' takes no value"
            if re.fullmatch(pattern, value):
                return None
            return f"'{key}' takes a value matching {pattern!r}"
    known = sorted(_FLAG_OPTIONS) + sorted({k for t in _DATA_OPTIONS.values() for k in t})
    known += [f"{k}=..." for k in CONTEXT_OPTIONS]
    return f"unknown mount option; known: {', '.join(known)}, x-*"


def _context_problem(option: str) -> str | None:
    key, _, value = option.partition("=")
    if _CONTEXT_VALUE.fullmatch(value) and value.count(":") >= 2:  # user:role:type[:level]
        return None
    if "," in value and not value.startswith('"'):
        return f'a context with commas must be quoted: {key}="{value}"'
    return f"'{key}' takes an SELinux context, e.g. {key}=system_u:object_r:public_content_t:s0"


def transport_problem(options: tuple[str, ...], transport: Transport) -> str | None:
    """Why these (valid) options cannot be used with `transport`, or None."""
    for option in options:
        key = option_key(option)
        if option in _FLAG_OPTIONS or key.startswith("x-") or key in CONTEXT_OPTIONS:
            continue
        if key not in _DATA_OPTIONS[transport]:
            return f"option '{option}' does not apply to {transport.value} shares"
    return None


def merge_options(*layers: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Combine option lists; a later option overrides an earlier one of the same kind
    (ro/rw, nosuid/suid, dax/dax=..., msize=...). Order of first appearance is kept."""
    chosen: dict[str, str] = {}
    for layer in layers:
        for option in layer:
            chosen[_slot(option)] = option
    return tuple(chosen.values())


def _slot(option: str) -> str:
    flag = _FLAG_OPTIONS.get(option)
    if flag is not None:
        return f"flag:{flag[0]}"
    return f"key:{option_key(option)}"


@dataclass(frozen=True)
class MountArgs:
    """What mount(2) receives."""

    flags: int
    data: str


def to_mount_args(options: tuple[str, ...], transport: Transport) -> MountArgs:
    flags = 0
    data: list[str] = list(NINEP_BASE_DATA) if transport is Transport.NINEP else []
    for option in options:
        if option in _FLAG_OPTIONS:
            bit, on = _FLAG_OPTIONS[option]
            flags = flags | bit if on else flags & ~bit
        elif option_key(option).startswith("x-"):
            continue  # userspace-only options (x-systemd.*, ...) never reach the kernel
        else:
            data = [d for d in data if option_key(d) != option_key(option)] + [option]
    return MountArgs(flags, ",".join(data))


def kernel_options(options: tuple[str, ...], transport: Transport) -> tuple[str, ...]:
    """The options as mount(8)/fstab/units spell them, including the 9p transport options."""
    if transport is Transport.NINEP:
        return merge_options(NINEP_BASE_DATA, options)
    return options
