"""The `vfs-agent` command: parses arguments, calls ops, prints. No logic of its own.

Exit codes: 0 success, 1 an action failed, 2 usage error or invalid policy (nothing changed).

Start-up is paid by every command, and by the shell at every TAB (click's completion), so this
module imports only click, its guard and the policy's file names (for the help text): not even
json or pathlib. Each command imports the modules it uses when it runs: `--help` and completion
none of them, `--version` not even click (commands/console.py), `kernel` no policy code, the
reports and `generate` no executor, and no YAML or pydantic while the compiled policy is fresh.
See "Where the time goes" in the README.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from vfs_agent import __version__
from vfs_agent.commands.console import PROG
from vfs_agent.commands.guard import GuardedGroup
from vfs_agent.policy.files import DROPIN_DIR, MAIN_POLICY

if TYPE_CHECKING:
    from vfs_agent.commands import operations as ops
    from vfs_agent.core.render_systemd import Skipped
    from vfs_agent.execute.outcome import Outcome

EXIT_FAILED = 1
EXIT_USAGE = 2

F = TypeVar("F", bound=Callable[..., Any])


def emit_json(data: Any) -> None:
    import json

    click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def handle_errors(func: F) -> F:
    """The one place that maps errors to messages and exit codes."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from vfs_agent.commands.context import OperationError
        from vfs_agent.policy.errors import PolicyError

        try:
            return func(*args, **kwargs)
        except PolicyError as e:
            for problem in e.problems:
                click.echo(f"vfs-agent: {problem}", err=True)
            click.echo("vfs-agent: invalid policy; nothing was changed", err=True)
            sys.exit(EXIT_USAGE)
        except OperationError as e:
            click.echo(f"vfs-agent: {e}", err=True)
            sys.exit(EXIT_FAILED)
        except BrokenPipeError:
            raise  # standard output, not a file the command works on (cli_guard)
        except OSError as e:
            where = f"{e.filename}: " if e.filename else ""
            click.echo(f"vfs-agent: error: {where}{e.strerror or e}", err=True)
            sys.exit(EXIT_FAILED)

    return wrapper  # type: ignore[return-value]


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
dry_run_option = click.option(
    "--dry-run", is_flag=True, help="Show what would change; change nothing."
)


@click.group(cls=GuardedGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name=PROG)
@click.option(
    "--policy",
    "policy_path",
    metavar="PATH",
    help=f"Policy file to use instead of {MAIN_POLICY} plus {DROPIN_DIR}/*.yaml. An "
    "absolute PATH is read inside --root (like the default files); a relative one from the "
    "current directory.",
)
@click.option(
    "--root",
    default="/",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Operate on another system root (a test tree, an image being built).",
)
@click.option(
    "-v",
    "--verbose",
    count=True,
    help="Also log what did not change; -vv also the traceback of an unexpected error.",
)
@click.pass_context
def main(ctx: click.Context, policy_path: str | None, root: str, verbose: int) -> None:
    """Discover virtio-fs shares and mount them according to a policy.

    The policy (YAML) says where each tag is mounted; see 'vfs-agent policy schema'.
    Exit codes: 0 success, 1 an action failed, 2 usage error or invalid policy (nothing
    changed).
    """
    from pathlib import Path

    from vfs_agent.commands.context import Context
    from vfs_agent.system.log import setup_logging
    from vfs_agent.system.sysroot import SysRoot

    setup_logging(verbose)
    ctx.obj = Context(SysRoot(Path(root)), policy_path)


pass_ops = click.pass_obj  # the context.Context made by main()


@main.command()
@json_option
@pass_ops
@handle_errors
def status(ctx: ops.Context, as_json: bool) -> None:
    """Kernel support, discovered shares, where each is mounted, and its health."""
    from vfs_agent.commands.planned import current_plan
    from vfs_agent.core.status import share_status
    from vfs_agent.system.kernel_features import kernel_report

    planned = current_plan(ctx)
    kernel = kernel_report(ctx.sysroot)
    shares = share_status(planned.observed, planned.actions)
    if as_json:
        emit_json(
            {
                "kernel": kernel.to_dict(),
                "discovery_complete": planned.observed.discovery.complete,
                "discovery_problems": list(planned.observed.discovery.problems),
                "policy_layers": list(planned.policy.files),
                "policy_warnings": list(planned.policy.warnings),
                "shares": [s.to_dict() for s in shares],
            }
        )
    else:
        from vfs_agent.commands.report import status_text

        click.echo(status_text(kernel, shares))
        for problem in planned.observed.discovery.problems:
            click.echo(f"* {problem}")


@main.command()
@json_option
@pass_ops
@handle_errors
def kernel(ctx: ops.Context, as_json: bool) -> None:
    """Kernel support report; exit 0 when virtiofs can be used, 1 otherwise."""
    from vfs_agent.commands.report import kernel_text
    from vfs_agent.system.kernel_features import kernel_report

    result = kernel_report(ctx.sysroot)
    if as_json:
        emit_json(result.to_dict())
    else:
        click.echo(kernel_text(result))
    sys.exit(0 if result.usable else EXIT_FAILED)


@main.command()
@json_option
@pass_ops
@handle_errors
def plan(ctx: ops.Context, as_json: bool) -> None:
    """What mount-all would do and why; changes nothing."""
    from vfs_agent.commands.planned import current_plan
    from vfs_agent.core.desired import not_persistent

    planned = current_plan(ctx)
    unwritable = not_persistent(planned.actions)
    if as_json:
        emit_json(
            {
                "policy_files": list(planned.policy.files),
                "policy_warnings": list(planned.policy.warnings),
                "discovery_complete": planned.observed.discovery.complete,
                "discovery_problems": list(planned.observed.discovery.problems),
                "actions": [a.to_dict() for a in planned.actions],
                "not_persistent": [skip.to_dict() for skip in unwritable],
            }
        )
    else:
        from vfs_agent.commands.report import plan_text, show

        click.echo(plan_text(planned.actions))
        for skip in unwritable:
            click.echo(f"* no fstab line or unit for {show(skip.tag)}: {skip.why}")
        for problem in planned.observed.discovery.problems:
            click.echo(f"* {problem}")


def _finish(outcomes: list[Outcome], as_json: bool) -> None:
    from vfs_agent.commands import report

    if as_json:
        emit_json({"outcomes": [o.to_dict() for o in outcomes]})
    else:
        click.echo(report.outcomes_text(outcomes))
    sys.exit(EXIT_FAILED if any(o.fatal for o in outcomes) else 0)


@main.command("mount-all")
@dry_run_option
@json_option
@pass_ops
@handle_errors
def mount_all(ctx: ops.Context, dry_run: bool, as_json: bool) -> None:
    """Mount every share the policy wants (idempotent).

    Exit 1 if a required share could not be mounted; optional ones only warn.
    """
    from vfs_agent.commands import operations as ops

    _finish(ops.mount_all(ctx, ops.executors(ctx, dry_run=dry_run)), as_json)


@main.command()
@click.argument("tag")
@click.argument("path", required=False)
@dry_run_option
@json_option
@pass_ops
@handle_errors
def mount(ctx: ops.Context, tag: str, path: str | None, dry_run: bool, as_json: bool) -> None:
    """Mount share TAG at PATH, or where the policy says (even a tag the policy ignores)."""
    from vfs_agent.commands import operations as ops

    _finish(ops.mount_one(ctx, tag, path, ops.executors(ctx, dry_run=dry_run)), as_json)


@main.command()
@click.argument("target", metavar="TAG|PATH")
@click.option("--lazy", is_flag=True, help="Detach now, clean up when no longer busy.")
@click.option(
    "--abort",
    is_flag=True,
    help="For a mount whose host daemon died: abort its FUSE connection where the kernel "
    "allows it, then detach it at once. The kernel cannot abort virtio-fs connections: "
    "requests already sent wait until the host answers or removes the device.",
)
@dry_run_option
@json_option
@pass_ops
@handle_errors
def umount(
    ctx: ops.Context, target: str, lazy: bool, abort: bool, dry_run: bool, as_json: bool
) -> None:
    """Unmount a share: every mount of TAG, or the share mounted at PATH."""
    from vfs_agent.commands import operations as ops

    paths = ops.umount(ctx, target, ops.executors(ctx, dry_run=dry_run), lazy=lazy, abort=abort)
    verb = "would unmount" if dry_run else "unmounted"
    if as_json:
        emit_json({"unmounted": paths, "dry_run": dry_run})
    else:
        for path in paths:
            click.echo(f"{verb} {path}")


@main.group()
def generate() -> None:
    """Write mount units or fstab lines so the shares come back at every boot."""


@generate.command("systemd")
@click.option(
    "--output",
    "-o",
    default="-",
    show_default=True,
    metavar="DIR|-",
    help="Unit directory to keep in sync (e.g. /etc/systemd/system), or - to print.",
)
@click.option(
    "--bind-device/--no-bind-device",
    default=None,
    help="Bind each unit to its share's device unit (default: when vfs-agent's udev rule is "
    "installed). Needed for hotplug, unplug and boot timeouts.",
)
@click.option(
    "--mount-helper/--no-mount-helper",
    default=None,
    help="Wait for each virtio-fs share's host inside its mount unit, through vfs-agent's mount "
    "helper (default: when mount(8) finds it, /sbin/mount.virtiofs.vfsagent); without it, in a "
    "vfs-agent-answer@ unit of the share's own.",
)
@pass_ops
@handle_errors
def generate_systemd(
    ctx: ops.Context, output: str, bind_device: bool | None, mount_helper: bool | None
) -> None:
    """One .mount unit per share the policy wants.

    The same units the boot-time generator writes: they depend on the policy and the attached
    shares only, never on what is mounted now. With a directory, units are written atomically
    with their local-fs.target.wants/ links, and units vfs-agent generated there before that
    are no longer wanted are removed. Tags that only a glob or defaults.unknown matches need
    the share to be attached. Every share that gets no unit is named on stderr, with why.
    """
    from pathlib import Path

    from vfs_agent.commands import persistent

    if output == "-":
        units, skipped = persistent.generated_units(ctx, bind_device, mount_helper)
        for unit in units:
            click.echo(f"# {unit.name}\n{unit.text}")
    else:
        directory = Path(output)
        written, removed, skipped = persistent.write_units(
            ctx, directory, bind_device, mount_helper
        )
        for name in written:
            click.echo(f"wrote {directory / name}")
        for name in removed:
            click.echo(f"removed {directory / name}")
    _warn_skipped(skipped)


def _warn_skipped(skipped: list[Skipped]) -> None:
    from vfs_agent.commands import report

    for skip in skipped:
        click.echo(f"vfs-agent: skipped {report.show(skip.tag)}: {skip.why}", err=True)


@generate.command("fstab")
@click.option(
    "--output",
    "-o",
    default="-",
    show_default=True,
    metavar="FILE|-",
    help="fstab file whose vfs-agent block is replaced (every other byte kept), or - to print.",
)
@pass_ops
@handle_errors
def generate_fstab(ctx: ops.Context, output: str) -> None:
    """fstab lines for the shares the policy wants, inside a marked block.

    Like the units of 'generate systemd', the lines depend on the policy and the attached
    shares only. Every share that gets no line is named on stderr, with why.
    """
    from pathlib import Path

    from vfs_agent.commands import persistent

    if output == "-":
        block, skipped = persistent.fstab_block(ctx)
        click.echo(block, nl=False)
    else:
        skipped = persistent.write_fstab(ctx, Path(output))
        click.echo(f"updated the vfs-agent block in {output}")
    _warn_skipped(skipped)


@main.group("policy")
def policy_group() -> None:
    """Check or compile the policy, or print its JSON Schema."""


@policy_group.command("check")
@click.argument("file", required=False)
@json_option
@pass_ops
def policy_check(ctx: ops.Context, file: str | None, as_json: bool) -> None:
    """Validate FILE (or the configured policy); exit 2 listing every problem.

    Besides each file's own errors, rules that conflict whatever shares are attached are
    errors: two tags for one path, a path that is defaults.mount_root, a path above another
    rule's path (its share would hide that mount). Globs whose {tag} paths could meet are
    fine: tags are encoded injectively and a tag takes the first rule that matches it.
    """
    from pathlib import Path

    from vfs_agent.policy.conflicts import check_conflicts
    from vfs_agent.policy.load import PolicyError, load_file, load_policy, policy_location
    from vfs_agent.policy.schema import to_section
    from vfs_agent.policy.types import merge
    from vfs_agent.system.sysroot import SysRoot

    warnings: list[str] = []
    try:
        if file is not None:
            sysroot, name = SysRoot(Path("/")), str(Path(file).absolute())
            policy = merge([to_section(name, load_file(sysroot, name))])
            files = [file]
        else:
            sysroot = policy_location(ctx.sysroot, ctx.policy_path)[0]
            policy = load_policy(ctx.sysroot, ctx.policy_path)
            files, warnings = list(policy.files), list(policy.warnings)
        check_conflicts(sysroot, policy)
    except PolicyError as e:
        if as_json:
            emit_json({"valid": False, "problems": [vars(p) for p in e.problems]})
        else:
            for problem in e.problems:
                click.echo(str(problem), err=True)
        sys.exit(EXIT_USAGE)
    if as_json:
        emit_json({"valid": True, "files": files, "warnings": warnings})
    else:
        for warning in warnings:  # an ignored credential or command-line argument
            click.echo(f"vfs-agent: warning: {warning}", err=True)
        click.echo(f"policy is valid: {', '.join(files) or 'no files, built-in defaults'}")


@policy_group.command("compile")
@pass_ops
@handle_errors
def policy_compile(ctx: ops.Context) -> None:
    """Validate the policy and compile it for the generator and the reports.

    Writes /var/lib/vfs-agent/policy.json (under --root): while it matches the policy files
    exactly, the boot-time generator and the reports skip YAML and pydantic. mount-all and the
    daemon refresh it themselves; an image builder runs 'vfs-agent --root IMAGE policy compile'
    after writing the policy, so the image's first boot has it too.
    """
    from vfs_agent.policy import compiled as policy_cache
    from vfs_agent.policy.load import read_policy

    if ctx.policy_path is not None:
        raise click.UsageError("policy compile works on the default policy files; drop --policy")
    loaded = read_policy(ctx.sysroot)
    policy_cache.compile_policy(ctx.sysroot, loaded)
    click.echo(
        f"compiled {', '.join(loaded.policy.files) or 'the built-in defaults'} to "
        f"{ctx.sysroot.path(policy_cache.CACHE)}"
    )


@policy_group.command("schema")
def policy_schema() -> None:
    """Print the JSON Schema of a policy file."""
    from vfs_agent.policy.pydantic_compat import json_schema
    from vfs_agent.policy.schema import PolicyFile

    emit_json(json_schema(PolicyFile))


@main.command()
@click.option(
    "--unmount-on-exit", is_flag=True, help="On SIGTERM, unmount what the daemon mounted."
)
@pass_ops
@handle_errors
def daemon(ctx: ops.Context, unmount_on_exit: bool) -> None:
    """Reconcile, then follow hotplug and unplug until SIGTERM.

    SIGHUP reloads the policy (an invalid one is logged and the old one kept). Talks to systemd
    (READY, STATUS, WATCHDOG) when run as vfs-agent.service. Shares that have a generated .mount
    unit are left to systemd.
    """
    from vfs_agent.commands.daemon import Daemon
    from vfs_agent.system.uevents import UdevEvents

    sys.exit(Daemon(ctx, UdevEvents, unmount_on_exit=unmount_on_exit).run())


@main.command("install-system-files")
@click.option(
    "--prefix",
    default="/usr/local",
    show_default=True,
    help="Installation prefix (/usr/local for a wheel install).",
)
@dry_run_option
@pass_ops
@handle_errors
def install_system_files(ctx: ops.Context, prefix: str, dry_run: bool) -> None:
    """Install the generator, the udev rule and its helper, the services, the manual pages and
    the bash and zsh completions.

    For a wheel-only install (packages install them themselves). Then run:
    systemctl daemon-reload; udevadm control --reload; udevadm trigger -s virtio;
    systemctl enable --now vfs-agent.service; and with cloud-init:
    systemctl enable vfs-agent-cloud-init.service
    """
    from vfs_agent.commands import install as install_files

    layout = install_files.default_layout(prefix)
    for dest in install_files.install(ctx.sysroot.root, layout, dry_run=dry_run):
        click.echo(f"{'would install' if dry_run else 'installed'} {ctx.sysroot.path(dest)}")


@main.group("cloud-init")
def cloud_init_group() -> None:
    """Policy from cloud-init user-data (the vfs_agent key of #cloud-config)."""


@cloud_init_group.command("apply")
@pass_ops
def cloud_init_apply(ctx: ops.Context) -> None:
    """Write the vfs_agent key of the cloud-config to policy.d/50-cloud-init.yaml and mount.

    Run at boot by vfs-agent-cloud-init.service, after cloud-init's config stage and before its
    final stage (runcmd). No key: a drop-in from an earlier boot is removed and the policy
    files are applied as they are (for example a file that cloud-init's write_files put into
    policy.d). An invalid key or policy is reported and changes nothing; the exit status is
    still 0 so the boot goes on. Exit 1 only when a required share could not be mounted.
    """
    from vfs_agent.commands.cloud_init import apply

    if ctx.policy_path is not None:
        raise click.UsageError("cloud-init apply works on the default policy files; drop --policy")
    sys.exit(apply(ctx))


@main.command("host-config")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@json_option
@handle_errors
def host_config(file: str, as_json: bool) -> None:
    """Turn policy FILE into what the VM's definition needs (run it on the host).

    Prints the libvirt <sysinfo>/<smbios> XML, the QEMU -smbios and -fw_cfg arguments and the
    kernel command line that hand FILE to the guest as the systemd credential
    vfs-agent.policy, and the equivalent vfs_agent.mount= arguments when the policy has only
    exact tags with a path and options. FILE is validated first (exit 2 if invalid).
    """
    from pathlib import Path

    from vfs_agent.commands.host_config import host_config as render
    from vfs_agent.commands.host_config import host_config_text
    from vfs_agent.policy.load import load_file
    from vfs_agent.policy.schema import to_section
    from vfs_agent.system.sysroot import SysRoot

    policy_file = Path(file)
    path = str(policy_file.absolute())
    section = to_section(path, load_file(SysRoot(Path("/")), path, check_modes=False))
    config = render(policy_file.read_bytes(), section, path)
    if as_json:
        emit_json(config.to_dict())
    else:
        click.echo(host_config_text(config))
