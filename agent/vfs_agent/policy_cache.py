"""The validated, merged policy compiled to JSON, so the boot-time generator can skip YAML and
pydantic. The cache names a fingerprint of every policy layer (policy_layers.py): the files'
names, owners, modes and contents, the credential's contents, the kernel command line's
`vfs_agent.mount=` arguments. Any change makes it stale, and then the full loader runs. The
warnings about ignored host layers are kept with it, so a cached boot still reports them."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import asdict
from typing import Any

from vfs_agent.kernel_cmdline import fingerprint_text
from vfs_agent.policy import (
    Defaults,
    NonEmpty,
    Policy,
    Rule,
    RuleRef,
    TransportChoice,
    UnknownTags,
)
from vfs_agent.policy_layers import SYSTEM_CREDENTIALS, Layer, LayerKind, policy_layers
from vfs_agent.sysroot import SysRoot, write_atomic

CACHE = "/var/lib/vfs-agent/policy.json"
FORMAT = 3


def fingerprint(sysroot: SysRoot, layers: list[Layer]) -> str:
    digest = hashlib.sha256(f"format {FORMAT}\n".encode())
    for layer in layers:
        path = sysroot.path(layer.path)
        digest.update(f"{layer.kind}\0{layer.name}\0".encode())
        if layer.kind is LayerKind.CMDLINE:
            digest.update(fingerprint_text(path.read_text(errors="surrogateescape")).encode())
        elif layer.kind is LayerKind.CREDENTIAL:
            digest.update(path.read_bytes())  # systemd owns the credential's file and mode
        else:
            for part in (path.parent, path):
                st = os.stat(part)
                digest.update(f"{part}\0{st.st_uid}\0{st.st_mode}\0".encode())
            digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


def to_json(policy: Policy, print_: str, layers: list[Layer]) -> str:
    data = {
        "format": FORMAT,
        "fingerprint": print_,
        "defaults": asdict(policy.defaults),
        "rules": [{"file": r.file, "index": r.index, **asdict(r.rule)} for r in policy.rules],
        "files": list(policy.files),
        "layers": [layer.name for layer in layers],
        "unknown_from": policy.unknown_from,
        "warnings": list(policy.warnings),
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
    return Policy(
        defaults,
        tuple(rules),
        tuple(data["files"]),
        data["unknown_from"],
        tuple(data["warnings"]),
    )


def save(sysroot: SysRoot, policy: Policy, layers: list[Layer]) -> None:
    """Best effort: a read-only /var or a non-root user just means no cache. `layers` are
    those the policy was read from (an ignored credential included)."""
    with contextlib.suppress(OSError):
        text = to_json(policy, fingerprint(sysroot, layers), layers)
        if sysroot.read_text(CACHE) != text:
            write_atomic(sysroot.path(CACHE), text, mode=0o644)


def load(sysroot: SysRoot, credentials_dir: str = SYSTEM_CREDENTIALS) -> Policy | None:
    """The cached policy if it matches the current layers exactly, else None."""
    text = sysroot.read_text(CACHE)
    if text is None:
        return None
    try:
        data = json.loads(text)
        layers = policy_layers(sysroot, None, credentials_dir)
        if data.get("format") != FORMAT or data.get("layers") != [x.name for x in layers]:
            return None
        if data.get("fingerprint") != fingerprint(sysroot, layers):
            return None
        return from_json(data)
    except (OSError, ValueError, KeyError, TypeError):
        return None
