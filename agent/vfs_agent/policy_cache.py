"""The validated, merged policy compiled to JSON, so the boot-time generator and the reporting
commands can skip YAML and pydantic. The cache names a fingerprint of everything the loader's
verdict depends on: the vfs-agent version, the policy files' names, contents, modes and owners
(and whether the owner is one the loader accepts for the user reading it). Any change makes it
stale, and then the full loader runs. It is written by every command that acts on the default
policy and by `vfs-agent policy compile` (which an image builder runs with --root)."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import posixpath
import stat
from dataclasses import asdict

from vfs_agent import __version__
from vfs_agent.policy import (
    Defaults,
    NonEmpty,
    Policy,
    Rule,
    RuleRef,
    TransportChoice,
    UnknownTags,
)
from vfs_agent.policy_files import policy_files
from vfs_agent.sysroot import SysRoot, write_atomic

TYPE_CHECKING = False  # typing itself costs the boot-time generator a few ms to import
if TYPE_CHECKING:
    from typing import Any

CACHE = "/var/lib/vfs-agent/policy.json"
FORMAT = 3


def fingerprint(sysroot: SysRoot, files: list[str]) -> str:
    digest = hashlib.sha256(f"format {FORMAT} vfs-agent {__version__}\n".encode())
    euid = os.geteuid()
    for name in files:
        # Names inside the root, so a cache compiled into an image (--root) holds at its boot.
        for part in (posixpath.dirname(name), name):
            host = sysroot.path(part)
            st, link = os.stat(host), os.lstat(host)  # a symlink in place of either shows
            # The loader accepts root's files and the reader's own (policy_load.file_mode_problems).
            owner_ok = st.st_uid in (0, euid)
            digest.update(
                f"{part}\0{st.st_uid}\0{owner_ok}\0{st.st_mode}\0{link.st_mode}\0".encode()
            )
        if not stat.S_ISREG(st.st_mode):  # a FIFO or a device must never block the boot here
            raise OSError(errno.EINVAL, "not a regular file", name)
        digest.update(sysroot.path(name).read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


def to_json(policy: Policy, print_: str) -> str:
    data = {
        "format": FORMAT,
        "fingerprint": print_,
        "defaults": asdict(policy.defaults),
        "rules": [{"file": r.file, "index": r.index, **asdict(r.rule)} for r in policy.rules],
        "files": list(policy.files),
    }
    return json.dumps(data, indent=1, ensure_ascii=False) + "\n"


def from_json(data: dict[str, Any]) -> Policy:
    d = data["defaults"]
    defaults = Defaults(
        d["mount_root"],
        tuple(d["options"]),
        UnknownTags(d["unknown"]),
        None if d["device_timeout"] is None else int(d["device_timeout"]),
        NonEmpty(d["on_nonempty"]),
    )
    rules = []
    for r in data["rules"]:
        rule = Rule(
            r["tag"],
            r["path"],
            tuple(r["options"]),
            r["required"],
            r["ignore"],
            TransportChoice(r["transport"]),
            r["device_timeout"],
            None if r["on_nonempty"] is None else NonEmpty(r["on_nonempty"]),
        )
        rules.append(RuleRef(rule, r["file"], r["index"]))
    return Policy(defaults, tuple(rules), tuple(data["files"]))


def write(sysroot: SysRoot, policy: Policy) -> None:
    """Compile `policy` (as the loader returned it for the current files) into CACHE."""
    text = to_json(policy, fingerprint(sysroot, list(policy.files)))
    if sysroot.read_text(CACHE) != text:
        write_atomic(sysroot.path(CACHE), text, mode=0o644)


def save(sysroot: SysRoot, policy: Policy) -> None:
    """Best effort: a read-only /var or a non-root user just means no cache."""
    with contextlib.suppress(OSError):
        write(sysroot, policy)


def load(sysroot: SysRoot) -> Policy | None:
    """The cached policy if it matches the current files exactly, else None."""
    text = sysroot.read_text(CACHE)
    if text is None or not _trusted(sysroot):
        return None
    try:
        data = json.loads(text)
        files = policy_files(sysroot, None)
        if data.get("format") != FORMAT or data.get("files") != files:
            return None
        if data.get("fingerprint") != fingerprint(sysroot, files):
            return None
        return from_json(data)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _trusted(sysroot: SysRoot) -> bool:
    """The cache stands in for the policy, so it gets the policy's StrictModes: owned by root
    (or the reader) and writable by nobody else, nor its directory."""
    euid = os.geteuid()
    for part in (posixpath.dirname(CACHE), CACHE):
        try:
            st = os.stat(sysroot.path(part))
        except OSError:
            return False
        if st.st_uid not in (0, euid) or st.st_mode & 0o022:
            return False
    return True
