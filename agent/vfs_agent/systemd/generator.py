"""The systemd generator: mount units for the policy, written at boot and on daemon-reload.

It is on the boot's critical path, so it imports no pydantic, click or pyudev: it uses the
compiled policy (policy_cache) and loads the full validator only when that is stale. It never
fails the boot: an invalid policy file is logged to the kernel log and produces no units; an
invalid credential or `vfs_agent.mount=` argument is logged there and left out.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from vfs_agent.core.desired import desired_units
from vfs_agent.core.render_systemd import prober_dropin
from vfs_agent.core.transport import Transport
from vfs_agent.policy.compiled import load as load_cached
from vfs_agent.policy.layers import SYSTEM_CREDENTIALS, credentials_directory
from vfs_agent.policy.types import Policy
from vfs_agent.system.discovery import discover
from vfs_agent.system.generated_files import write_units
from vfs_agent.system.kmsg import ERR, INFO, WARNING, kmsg
from vfs_agent.system.sysroot import SysRoot
from vfs_agent.systemd.installed import mount_helper_installed, udev_rule_installed

IDENT = "vfs-agent-generator"


def _load_policy(sysroot: SysRoot, credentials_dir: str) -> Policy:
    cached = load_cached(sysroot, credentials_dir)
    if cached is not None:
        return cached
    from vfs_agent.policy.load import load_policy  # slow path: YAML + pydantic

    # A generator writes nothing outside its output directories, so no cache refresh here.
    return load_policy(sysroot, credentials_dir=credentials_dir)


def generate(sysroot: SysRoot, normal_dir: Path, credentials_dir: str = SYSTEM_CREDENTIALS) -> int:
    """Write the units into `normal_dir`; returns how many were written. The credential
    `vfs-agent.policy` is read from `credentials_dir` (systemd passes $CREDENTIALS_DIRECTORY)."""
    policy = _load_policy(sysroot, credentials_dir)
    for warning in policy.warnings:  # an invalid host layer: reported, left out, boot goes on
        kmsg(ERR, IDENT, warning)
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
        kmsg(level, IDENT, f"no unit for share {skip.tag!r}: {skip.why}, ignoring.")
    attached = frozenset(s.tag for s in discovery.shares if s.transport is Transport.VIRTIOFS)
    dropin = prober_dropin(units, attached)
    write_units(normal_dir, units, (dropin,) if dropin else ())
    return len(units)


def main(argv: list[str]) -> int:
    if len(argv) not in (1, 3):
        sys.stderr.write(f"usage: {IDENT} NORMAL_DIR [EARLY_DIR LATE_DIR]\n")
        return 1
    # VFS_AGENT_ROOT lets tests and image builds point the generator at another tree.
    sysroot = SysRoot(Path(os.environ.get("VFS_AGENT_ROOT", "/")))
    try:
        count = generate(sysroot, Path(argv[0]), credentials_directory())
    except Exception as e:  # never fail the boot
        from vfs_agent.policy.load import PolicyError

        if isinstance(e, PolicyError):
            for problem in e.problems:
                kmsg(ERR, IDENT, f"invalid policy: {problem}")
            kmsg(ERR, IDENT, "invalid policy: no mount units generated, ignoring.")
        else:
            kmsg(ERR, IDENT, f"failed, no mount units generated: {e!r}, ignoring.")
        return 0
    kmsg(INFO, IDENT, f"generated {count} mount unit(s)")
    return 0
