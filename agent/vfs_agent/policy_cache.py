"""The validated, merged policy compiled to JSON, so the boot-time generator can skip YAML and
pydantic. The cache names a fingerprint of the policy files (names, owners, modes, contents);
any change makes it stale, and then the full loader runs."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import asdict
from typing import Any

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

CACHE = "/var/lib/vfs-agent/policy.json"
FORMAT = 2


def fingerprint(sysroot: SysRoot, files: list[str]) -> str:
    digest = hashlib.sha256(f"format {FORMAT}\n".encode())
    for name in files:
        path = sysroot.path(name)
        for part in (path.parent, path):
            st = os.stat(part)
            digest.update(f"{part}\0{st.st_uid}\0{st.st_mode}\0".encode())
        digest.update(path.read_bytes())
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


def save(sysroot: SysRoot, policy: Policy) -> None:
    """Best effort: a read-only /var or a non-root user just means no cache."""
    with contextlib.suppress(OSError):
        files = list(policy.files)
        text = to_json(policy, fingerprint(sysroot, files))
        if sysroot.read_text(CACHE) != text:
            write_atomic(sysroot.path(CACHE), text, mode=0o644)


def load(sysroot: SysRoot) -> Policy | None:
    """The cached policy if it matches the current files exactly, else None."""
    text = sysroot.read_text(CACHE)
    if text is None:
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
