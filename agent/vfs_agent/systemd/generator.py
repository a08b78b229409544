"""The systemd generator in full: mount units for the policy, written at boot and on
daemon-reload, when systemd/replay.py cannot write its last output again.

It is on the boot's critical path, so it imports no pydantic, click or pyudev: it uses the
compiled policy (policy_cache) and loads the full validator only when that is stale. It never
fails the boot: an invalid policy file is logged to the kernel log and produces no units; an
invalid credential or `vfs_agent.mount=` argument is logged there and left out.

Every read it makes goes through a recording SysRoot; after a run that wrote its units, the
journal of those reads, the files written and the messages logged are left as a memo in the
output directory (replay.remember), for the daemon to keep for the next boot.
"""

from __future__ import annotations

import sys
from pathlib import Path

from vfs_agent.core.desired import desired_units
from vfs_agent.core.render_systemd import GeneratedFile, prober_dropin
from vfs_agent.core.transport import Transport
from vfs_agent.policy.compiled import fingerprint
from vfs_agent.policy.compiled import load as load_cached
from vfs_agent.policy.layers import SYSTEM_CREDENTIALS, credentials_directory, policy_layers
from vfs_agent.policy.types import Policy
from vfs_agent.system.discovery import discover
from vfs_agent.system.generated_files import files_of, write_units
from vfs_agent.system.kmsg import ERR, INFO, WARNING, kmsg
from vfs_agent.system.sysroot import SysRoot
from vfs_agent.systemd import replay
from vfs_agent.systemd.installed import mount_helper_installed, udev_rule_installed
from vfs_agent.systemd.replay import IDENT

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    Say = Callable[[int, str], None]  # a message for the kernel log, with its level


def _load_policy(sysroot: SysRoot, credentials_dir: str) -> Policy:
    cached = load_cached(sysroot, credentials_dir)
    if cached is not None:
        return cached
    from vfs_agent.policy.load import load_policy  # slow path: YAML + pydantic

    # A generator writes nothing outside its output directories, so no cache refresh here.
    return load_policy(sysroot, credentials_dir=credentials_dir)


def generate(
    sysroot: SysRoot,
    normal_dir: Path,
    credentials_dir: str = SYSTEM_CREDENTIALS,
    say: Say | None = None,
) -> list[GeneratedFile]:
    """Write the units into `normal_dir`; returns every file and link written, in the order
    written. The credential `vfs-agent.policy` is read from `credentials_dir` (systemd passes
    $CREDENTIALS_DIRECTORY). What it has to say goes to `say` (the kernel log by default)."""
    say = say or _to_kmsg
    policy = _load_policy(sysroot, credentials_dir)
    for warning in policy.warnings:  # an invalid host layer: reported, left out, boot goes on
        say(ERR, warning)
    # No PCI config window: it writes to config space, which a generator must not do.
    discovery = discover(sysroot, pci=False)
    units, skipped = desired_units(
        policy,
        discovery,
        bind_device=udev_rule_installed(sysroot),
        mount_helper=mount_helper_installed(sysroot),
        generator=IDENT,
        this_boot=True,  # written again at every boot and daemon-reload
    )
    for skip in skipped:
        level = INFO if skip.ignored else WARNING  # ignoring is what the policy asked for
        say(level, f"no unit for share {skip.tag!r}: {skip.why}, ignoring.")
    attached = frozenset(s.tag for s in discovery.shares if s.transport is Transport.VIRTIOFS)
    dropin = prober_dropin(units, attached)
    extras = (dropin,) if dropin else ()
    write_units(normal_dir, units, extras)
    say(INFO, f"generated {len(units)} mount unit(s)")
    return files_of(units, extras)


def _to_kmsg(level: int, message: str) -> None:
    kmsg(level, IDENT, message)


def main(argv: list[str]) -> int:
    """The full generator: reads the policy and the shares, writes the units, and leaves a memo
    of its inputs and output for systemd/replay.py (which runs first at the next boot)."""
    if len(argv) not in (1, 3):
        sys.stderr.write(f"usage: {IDENT} NORMAL_DIR [EARLY_DIR LATE_DIR]\n")
        return 1
    sysroot = SysRoot(Path(replay.root_from_environ())).recording()
    credentials_dir = credentials_directory()
    said: list[tuple[int, str]] = []

    def say(level: int, message: str) -> None:
        _to_kmsg(level, message)
        said.append((level, message))

    try:
        policy_recorded = _record_policy_inputs(sysroot, credentials_dir)
        written = generate(sysroot, Path(argv[0]), credentials_dir, say)
    except Exception as e:  # never fail the boot
        from vfs_agent.policy.load import PolicyError

        if isinstance(e, PolicyError):
            for problem in e.problems:
                _to_kmsg(ERR, f"invalid policy: {problem}")
            _to_kmsg(ERR, "invalid policy: no mount units generated, ignoring.")
        else:
            _to_kmsg(ERR, f"failed, no mount units generated: {e!r}, ignoring.")
        return 0
    if policy_recorded and sysroot.journal is not None:
        outputs = [(f.relpath, f.text, f.link_to) for f in written]
        try:
            replay.remember(argv[0], sysroot.journal, outputs, said)
        except Exception as e:  # never fail the boot: only the next boot's speed is lost
            _to_kmsg(WARNING, f"cannot write {replay.MEMO_NAME}: {e}; the next boot runs in full.")
    return 0


def _record_policy_inputs(sysroot: SysRoot, credentials_dir: str) -> bool:
    """Read, through the recording `sysroot`, everything the policy is a function of: its
    layers and their fingerprint (policy/compiled.py), whichever of the compiled policy or the
    full loader then yields it. False when they cannot all be read (no memo then)."""
    try:
        fingerprint(sysroot, policy_layers(sysroot, None, credentials_dir))
    except OSError:
        return False
    return True
