"""Put the systemd units (the daemon's, the cloud-init hook's, and the socket and service of the
prober that the generated answer waits ask), the generator, the mount helper that waits for a
share's host inside its mount unit, the udev rule and its helper, the manual pages and the bash
and zsh completions in place.

One table of files serves every kind of install: a wheel-only install runs
`vfs-agent install-system-files` (prefix /usr/local), the Debian and RPM packages run
`python3 -m vfs_agent.commands.install --root $DESTDIR --prefix /usr`. The manual pages and the
completions are generated here, from the command tree and the policy models of the code being
installed (commands/manpage.py, click's own completion scripts), so they match its --help.
"""

from __future__ import annotations

import argparse
import sys
import sysconfig
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from vfs_agent.core.render_systemd import mount_helper_script
from vfs_agent.system.sysroot import SysRoot
from vfs_agent.systemd.installed import MOUNT_HELPER, RULE_NAME


@dataclass(frozen=True)
class Layout:
    prefix: str  # /usr for packages, /usr/local for a wheel install
    python: str  # interpreter for the generator and the udev helper
    bindir: str  # where the `vfs-agent` command is
    zsh_dir: str = ""  # default PREFIX/share/zsh/site-functions (Debian: vendor-completions)

    @property
    def libexec(self) -> str:
        return f"{self.prefix}/lib/vfs-agent"

    @property
    def mount_helper(self) -> str:
        """Where mount(8) finds the helper: it looks in /sbin only. A package installs it in
        /usr/sbin, which is /sbin where /usr is merged (every system it is built for); a wheel
        install puts it in /sbin itself, outside its prefix, since nowhere else would do."""
        return "/usr" + MOUNT_HELPER if self.prefix == "/usr" else MOUNT_HELPER

    def files(self) -> list[tuple[str, str, int]]:
        """(template in systemd/, destination path, mode)."""
        lib = f"{self.prefix}/lib"
        share = f"{self.prefix}/share"
        return [
            (
                "vfs-agent-generator.in",
                f"{lib}/systemd/system-generators/vfs-agent-generator",
                0o755,
            ),
            ("vfs-agent-tag-id.in", f"{self.libexec}/vfs-agent-tag-id", 0o755),
            (_MOUNT_HELPER, self.mount_helper, 0o755),
            ("vfs-agent.service.in", f"{lib}/systemd/system/vfs-agent.service", 0o644),
            (
                "vfs-agent-prober.socket.in",
                f"{lib}/systemd/system/vfs-agent-prober.socket",
                0o644,
            ),
            (
                "vfs-agent-prober.service.in",
                f"{lib}/systemd/system/vfs-agent-prober.service",
                0o644,
            ),
            (
                "vfs-agent-cloud-init.service.in",
                f"{lib}/systemd/system/vfs-agent-cloud-init.service",
                0o644,
            ),
            (f"{RULE_NAME}.in", f"{lib}/udev/rules.d/{RULE_NAME}", 0o644),
            (_MAN1, f"{share}/man/man1/vfs-agent.1", 0o644),
            (_MAN5, f"{share}/man/man5/vfs-agent.policy.5", 0o644),
            (
                "mount.virtiofs.vfsagent.8.in",
                f"{share}/man/man8/mount.virtiofs.vfsagent.8",
                0o644,
            ),
            (_BASH, f"{share}/bash-completion/completions/vfs-agent", 0o644),
            (_ZSH, f"{self.zsh_dir or share + '/zsh/site-functions'}/_vfs-agent", 0o644),
        ]

    def render(self, template: str) -> str:
        if template == _MOUNT_HELPER:
            return mount_helper_script(self.python)
        if template in _GENERATED:
            return _GENERATED[template]()
        text = resources.files("vfs_agent").joinpath("data", template).read_text(encoding="utf-8")
        for key, value in (
            ("@PYTHON@", self.python),
            ("@BINDIR@", self.bindir),
            ("@LIBEXECDIR@", self.libexec),
        ):
            text = text.replace(key, value)
        return text


_MAN1, _MAN5, _BASH, _ZSH = "man:1", "man:5", "completion:bash", "completion:zsh"
_MOUNT_HELPER = "mount-helper"


def _man1() -> str:
    from vfs_agent import __version__  # cli imports this module
    from vfs_agent.commands import cli, manpage

    return manpage.render_command_page(cli.main, __version__)


def _man5() -> str:
    from vfs_agent import __version__
    from vfs_agent.commands import manpage
    from vfs_agent.policy.pydantic_compat import json_schema
    from vfs_agent.policy.schema import PolicyFile

    return manpage.render_policy_page(json_schema(PolicyFile), __version__)


def _completion(shell: str) -> str:
    from click.shell_completion import get_completion_class

    from vfs_agent.commands import cli

    complete = get_completion_class(shell)
    assert complete is not None
    return complete(cli.main, {}, "vfs-agent", "_VFS_AGENT_COMPLETE").source() + "\n"


_GENERATED: dict[str, Callable[[], str]] = {
    _MAN1: _man1,
    _MAN5: _man5,
    _BASH: lambda: _completion("bash"),
    _ZSH: lambda: _completion("zsh"),
}


def default_layout(prefix: str = "/usr/local") -> Layout:
    return Layout(prefix, sys.executable, sysconfig.get_path("scripts"))


def install(root: Path, layout: Layout, *, dry_run: bool = False) -> list[str]:
    written = []
    for template, dest, mode in layout.files():
        if not dry_run:
            SysRoot(root).write_atomic(dest, layout.render(template), mode=mode)
        written.append(dest)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python3 -m vfs_agent.commands.install", description=__doc__
    )
    parser.add_argument("--root", default="/", help="install into this tree (DESTDIR)")
    parser.add_argument("--prefix", default="/usr", help="/usr for packages")
    parser.add_argument("--python", default="/usr/bin/python3")
    parser.add_argument("--bindir", default=None, help="default: PREFIX/bin")
    parser.add_argument(
        "--zsh-dir", default="", help="zsh completions (default: PREFIX/share/zsh/site-functions)"
    )
    args = parser.parse_args(argv)
    layout = Layout(args.prefix, args.python, args.bindir or f"{args.prefix}/bin", args.zsh_dir)
    for dest in install(Path(args.root), layout):
        print(f"installed {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
