"""What comes back at every boot: the mount units and fstab lines of the `generate` commands
for the policy and the attached shares, printed or written, exactly as the boot-time generator
computes them (core/desired.py). Kept apart from the operations, so that writing them imports no
executor or mount code."""

from __future__ import annotations

from pathlib import Path

from vfs_agent.commands.context import Context
from vfs_agent.core.desired import desired_fstab, desired_units
from vfs_agent.core.render_systemd import Skipped, UnitFile
from vfs_agent.system.discovery import discover
from vfs_agent.system.generated_files import sync_unit_dir, write_fstab_block
from vfs_agent.systemd.installed import mount_helper_installed, udev_rule_installed


def generated_units(
    ctx: Context, bind_device: bool | None = None, mount_helper: bool | None = None
) -> tuple[list[UnitFile], list[Skipped]]:
    """The units for the policy and the attached shares, exactly as the boot-time generator
    computes them (core/desired.py): the mount table plays no part. `bind_device` None: bind
    to the share's device unit when vfs-agent's udev rule is installed (without it those
    device units never appear). `mount_helper` None: wait for a share's host in its mount
    unit when mount(8) finds vfs-agent's mount helper (without it, such a unit cannot mount)."""
    if bind_device is None:
        bind_device = udev_rule_installed(ctx.sysroot)
    if mount_helper is None:
        mount_helper = mount_helper_installed(ctx.sysroot)
    return desired_units(
        ctx.policy(), discover(ctx.sysroot), bind_device=bind_device, mount_helper=mount_helper
    )


def write_units(
    ctx: Context, directory: Path, bind_device: bool | None = None, mount_helper: bool | None = None
) -> tuple[list[str], list[str], list[Skipped]]:
    units, skipped = generated_units(ctx, bind_device, mount_helper)
    written, removed = sync_unit_dir(directory, units)
    return written, removed, skipped


def fstab_block(ctx: Context) -> tuple[str, list[Skipped]]:
    """The fstab block for the policy and the attached shares (core/desired.py, as for units),
    and every share that gets no line, with why."""
    return desired_fstab(ctx.policy(), discover(ctx.sysroot))


def write_fstab(ctx: Context, fstab: Path) -> list[Skipped]:
    block, skipped = fstab_block(ctx)
    write_fstab_block(fstab, block)
    return skipped
