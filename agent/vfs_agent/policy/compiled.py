"""The validated, merged policy compiled to JSON, so the boot-time generator and the reporting
commands can skip YAML and pydantic. The cache names a fingerprint of everything the loader's
verdict depends on: the vfs-agent version and every policy layer (policy/layers.py): the files'
names, contents, modes and owners (and whether the owner is one the loader accepts for the user
reading it), the credential's contents, the kernel command line's `vfs_agent.mount=` arguments.
Any change makes it stale, and then the full loader runs. The warnings about ignored host
layers are kept with it, so a cached boot still reports them.

Compiling is an explicit step, never a side effect of loading: compile_policy() writes it, and
the commands that act on the default policy call it after loading (mount-all without
--dry-run, the daemon at start and on SIGHUP, `cloud-init apply`), as does `vfs-agent policy
compile` (which an image builder runs with --root). Reports and the generator only read it.

The cache is trusted no more than the policy: it is used only when it and its directory pass
the same owner and mode rules (strict_modes), it is a bounded regular file, and every value in
it passes the policy's own checks again (options, paths, tags, file names); otherwise the full
loader reads the policy files themselves."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import posixpath
from dataclasses import asdict

from vfs_agent import __version__
from vfs_agent.core.escape import has_control
from vfs_agent.core.mount_options import option_problem
from vfs_agent.core.paths import TAG_PLACEHOLDER, path_problem
from vfs_agent.policy.cmdline import fingerprint_text
from vfs_agent.policy.files import POLICY_MAX
from vfs_agent.policy.layers import (
    SYSTEM_CREDENTIALS,
    Layer,
    LayerKind,
    LoadedPolicy,
    policy_layers,
)
from vfs_agent.policy.types import (
    BUILT_IN,
    MAX_TAG_BYTES,
    Defaults,
    NonEmpty,
    Policy,
    Rule,
    RuleRef,
    TransportChoice,
    UnknownTags,
    is_glob,
)
from vfs_agent.system.safe_io import read_regular
from vfs_agent.system.strict_modes import mode_problems
from vfs_agent.system.sysroot import SysRoot, write_atomic

TYPE_CHECKING = False  # typing itself costs the boot-time generator a few ms to import
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

CACHE = "/var/lib/vfs-agent/policy.json"
FORMAT = 6  # 6: mount_timeout
CACHE_MAX = 4 << 20  # bytes


def fingerprint(sysroot: SysRoot, layers: Sequence[Layer]) -> str:
    """The digest of everything the loader's verdict on `layers` depends on. Every read goes
    through `sysroot`'s readers, so a recording SysRoot's journal holds them all: the
    generator's replay (systemd/replay.py) relies on that."""
    digest = hashlib.sha256(f"format {FORMAT} vfs-agent {__version__}\n".encode())
    euid = os.geteuid()
    for layer in layers:
        digest.update(f"{layer.kind}\0{layer.name}\0".encode())
        if layer.kind is LayerKind.CMDLINE:
            text = _layer_bytes(sysroot, layer.path).decode(errors="replace")
            digest.update(fingerprint_text(text).encode() + b"\0")
            continue
        if layer.kind is LayerKind.CREDENTIAL:  # systemd owns the credential's file and mode
            digest.update(_layer_bytes(sysroot, layer.path) + b"\0")
            continue
        name = layer.path
        # Names inside the root, so a cache compiled into an image (--root) holds at its boot.
        for part in (posixpath.dirname(name), name):
            uid, mode = sysroot.owner_and_mode(part)
            # A symlink in place of either shows.
            _, link_mode = sysroot.owner_and_mode(part, follow=False)
            # The loader accepts root's files and the reader's own (strict_modes).
            owner_ok = uid in (0, euid)
            digest.update(f"{part}\0{uid}\0{owner_ok}\0{mode}\0{link_mode}\0".encode())
        digest.update(_layer_bytes(sysroot, name))
        digest.update(b"\0")
    return digest.hexdigest()


def _layer_bytes(sysroot: SysRoot, name: str) -> bytes:
    """A layer's file, bounded and regular only (a FIFO or a device must never block the
    boot here); FileNotFoundError when it is gone."""
    data = sysroot.read_bytes(name, POLICY_MAX)
    if data is None:
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", name)
    return data


def to_json(policy: Policy, print_: str, layers: Sequence[Layer]) -> str:
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
    """The policy in a cache document; ValueError (or KeyError, TypeError) unless every value
    passes the checks the policy files pass."""
    d = data["defaults"]
    defaults = Defaults(
        _path(d["mount_root"], placeholder=False),
        _options(d["options"]),
        UnknownTags(d["unknown"]),
        None if d["device_timeout"] is None else _timeout(d["device_timeout"]),
        NonEmpty(d["on_nonempty"]),
        _timeout(d["mount_timeout"]),
    )
    files = data["files"]
    if not isinstance(files, list) or not all(isinstance(f, str) and _printable(f) for f in files):
        raise ValueError("files")
    rules = []
    for r in data["rules"]:
        rule = Rule(
            _tag(r["tag"]),
            None if r["path"] is None else _path(r["path"], placeholder=True),
            _options(r["options"]),
            _bool(r["required"]),
            _bool(r["ignore"]),
            TransportChoice(r["transport"]),
            None if r["device_timeout"] is None else _timeout(r["device_timeout"]),
            None if r["on_nonempty"] is None else NonEmpty(r["on_nonempty"]),
            None if r["mount_timeout"] is None else _timeout(r["mount_timeout"]),
        )
        if r["file"] not in files or type(r["index"]) is not int or r["index"] < 0:
            raise ValueError("rule origin")
        rules.append(RuleRef(rule, r["file"], r["index"]))
    unknown_from = data["unknown_from"]
    if not isinstance(unknown_from, str) or unknown_from not in (BUILT_IN, *files):
        raise ValueError("unknown_from")
    warnings = data["warnings"]
    if not isinstance(warnings, list) or not all(isinstance(w, str) for w in warnings):
        raise ValueError("warnings")
    return Policy(defaults, tuple(rules), tuple(files), unknown_from, tuple(warnings))


def _printable(text: str) -> bool:
    return not has_control(text)


def _tag(tag: Any) -> str:
    if not isinstance(tag, str) or not tag or not _printable(tag):
        raise ValueError("tag")
    if not is_glob(tag) and len(tag.encode("utf-8", "surrogateescape")) > MAX_TAG_BYTES:
        raise ValueError("tag")
    return tag


def _path(path: Any, *, placeholder: bool) -> str:
    if not isinstance(path, str):
        raise ValueError("path")
    rest = path.replace(TAG_PLACEHOLDER, "x") if placeholder else path
    if "{" in rest or "}" in rest or path_problem(rest):
        raise ValueError("path")
    return path


def _options(options: Any) -> tuple[str, ...]:
    if not isinstance(options, list) or not all(
        isinstance(o, str) and option_problem(o) is None for o in options
    ):
        raise ValueError("options")
    return tuple(options)


def _timeout(value: Any) -> int:
    if type(value) is not int or not 1 <= value <= 3600:
        raise ValueError("timeout")
    return value


def _bool(value: Any) -> bool:
    if type(value) is not bool:
        raise ValueError("flag")
    return value


def compile_policy(sysroot: SysRoot, loaded: LoadedPolicy) -> bool:
    """Write the compiled form of `loaded` (the loader's policy and the layers it read, an
    ignored credential included) to CACHE; False when CACHE holds it already. OSError when it
    cannot be written: a command for which the cache is a mere speed-up ignores that (a
    read-only /var or a non-root user just means no cache). Only the default policy files
    compile: a policy read from `--policy PATH` is not what the generator reads."""
    if not loaded.default_files:
        raise ValueError("only the default policy files are compiled, not --policy PATH")
    text = to_json(loaded.policy, fingerprint(sysroot, loaded.layers), loaded.layers)
    if sysroot.read_text(CACHE) == text:
        return False
    # 0755 whatever the umask: a group-writable directory would make load() distrust the
    # cache for good.
    sysroot.path(CACHE).parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    write_atomic(sysroot.path(CACHE), text, mode=0o644)
    return True


def load(sysroot: SysRoot, credentials_dir: str = SYSTEM_CREDENTIALS) -> Policy | None:
    """The cached policy if it is trusted (owner, mode, contents re-checked) and matches the
    current layers exactly, else None."""
    path = sysroot.path(CACHE)
    if mode_problems(path):
        return None
    try:
        data = json.loads(read_regular(path, CACHE_MAX))
        if not isinstance(data, dict):
            return None
        layers = policy_layers(sysroot, None, credentials_dir)
        if data.get("format") != FORMAT or data.get("layers") != [x.name for x in layers]:
            return None
        if data.get("fingerprint") != fingerprint(sysroot, layers):
            return None
        return from_json(data)
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return None
