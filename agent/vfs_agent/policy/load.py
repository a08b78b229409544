"""Loading the policy: every layer read, checked and merged into one types.Policy. Loading only
reads: compiling the result for the boot-time generator is a separate, explicit step
(policy/compiled.py) that the commands acting on the policy take.

A file is refused with a placed problem when its name holds a control character, it fails the
owner and mode rules (system/strict_modes.py), it cannot be read or is not UTF-8; its text is
parsed and validated by policy/document.py. The host's layers go through policy/host.py."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import yaml

from vfs_agent.core.escape import has_control
from vfs_agent.policy.document import parse_text
from vfs_agent.policy.errors import PolicyError as PolicyError  # re-exported
from vfs_agent.policy.errors import PolicyProblem as PolicyProblem
from vfs_agent.policy.files import POLICY_MAX
from vfs_agent.policy.host import load_host_layer
from vfs_agent.policy.layers import SYSTEM_CREDENTIALS, LayerKind, LoadedPolicy, policy_layers
from vfs_agent.policy.schema import PolicyFile, to_section
from vfs_agent.policy.types import FileSection, Policy, empty_policy, merge
from vfs_agent.policy.yaml_positions import Positions, node_positions
from vfs_agent.system.safe_io import read_regular
from vfs_agent.system.strict_modes import mode_problems
from vfs_agent.system.sysroot import SysRoot


def load_policy(
    sysroot: SysRoot, explicit: str | None = None, *, credentials_dir: str = SYSTEM_CREDENTIALS
) -> Policy:
    """The merged policy of every layer (see read_policy); writes nothing."""
    return read_policy(sysroot, explicit, credentials_dir=credentials_dir).policy


def read_policy(
    sysroot: SysRoot, explicit: str | None = None, *, credentials_dir: str = SYSTEM_CREDENTIALS
) -> LoadedPolicy:
    """Read, check and merge the policy's layers (policy/layers.py); writes nothing. Raises
    PolicyError listing every problem of the files; problems of the host's layers (credential,
    kernel command line) are returned in `Policy.warnings` and those parts left out, so they
    never stop a boot. The layers come back with the policy, for compiled.compile_policy."""
    sysroot, explicit = policy_location(sysroot, explicit)
    layers = policy_layers(sysroot, explicit, credentials_dir)
    default_files = explicit is None
    if not layers:
        return LoadedPolicy(empty_policy(), (), default_files)
    parsed: list[FileSection] = []
    problems: list[PolicyProblem] = []
    warnings: list[str] = []
    for layer in layers:
        if layer.kind is not LayerKind.FILE:
            section, ignored = load_host_layer(sysroot, layer)
            warnings += ignored
            parsed += [section] if section else []
            continue
        try:
            parsed.append(to_section(layer.name, load_file(sysroot, layer.path)))
        except PolicyError as e:
            problems += e.problems
    if problems:
        raise PolicyError(problems)
    policy = replace(merge(parsed), warnings=tuple(warnings))
    return LoadedPolicy(policy, tuple(layers), default_files)


def policy_location(sysroot: SysRoot, explicit: str | None) -> tuple[SysRoot, str | None]:
    """Where `--policy PATH` is read: a relative PATH names a file at hand (from the current
    directory, never inside --root); an absolute one is inside the root, like the default
    files (as `systemd-tmpfiles --root` reads its configuration)."""
    if explicit is not None and not explicit.startswith("/"):
        return SysRoot(Path("/")), os.path.abspath(explicit)
    return sysroot, explicit


def file_positions(sysroot: SysRoot, name: str) -> Positions:
    """(line, column) of every value of a policy file that loads (see node_positions)."""
    text = read_regular(sysroot.path(name), POLICY_MAX).decode("utf-8")
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    return node_positions(node, name) if node is not None else {}


def load_file(sysroot: SysRoot, name: str, *, check_modes: bool = True) -> PolicyFile:
    """One policy file, checked and validated; PolicyError lists every problem."""
    host_path = sysroot.path(name)
    tried = "" if str(host_path) == name else f" ({host_path})"
    if has_control(name):
        shown = ascii(name)[1:-1]
        message = "the file name contains a control character; rename the file"
        raise PolicyError([PolicyProblem(shown, 0, 0, "", message)])
    problems = file_mode_problems(name, host_path) if check_modes else []
    try:
        raw = read_regular(host_path, POLICY_MAX)
    except FileNotFoundError:
        raise PolicyError([PolicyProblem(name, 0, 0, "", f"no such file{tried}")]) from None
    except OSError as e:
        why = e.strerror or str(e)
        raise PolicyError([PolicyProblem(name, 0, 0, "", f"cannot read{tried}: {why}")]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        column = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        message = f"byte 0x{raw[e.start]:02x} is not UTF-8; save the file as UTF-8"
        raise PolicyError([PolicyProblem(name, line, column, "", message)]) from None
    try:
        parsed = parse_text(text, name)
    except PolicyError as e:
        problems += e.problems
        raise PolicyError(problems) from None
    if problems:
        raise PolicyError(problems)
    return parsed


def file_mode_problems(name: str, host_path: os.PathLike[str]) -> list[PolicyProblem]:
    """sshd-style StrictModes (system/strict_modes.py) for a policy file and its directory."""
    return [
        PolicyProblem(name, 0, 0, "", problem.format("policy"))
        for problem in mode_problems(host_path)
    ]
