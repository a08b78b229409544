"""Put the systemd units (the daemon's and the cloud-init hook's), the generator, the udev rule
and its helper in place.

One table of files serves every kind of install: a wheel-only install runs
`vfs-agent install-system-files` (prefix /usr/local), the Debian and RPM packages run
`python3 -m vfs_agent.install_files --root $DESTDIR --prefix /usr`.
"""

from __future__ import annotations

import argparse
import sys
import sysconfig
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from vfs_agent.installed import RULE_NAME
from vfs_agent.sysroot import SysRoot, write_atomic


@dataclass(frozen=True)
class Layout:
    prefix: str  # /usr for packages, /usr/local for a wheel install
    python: str  # interpreter for the generator and the udev helper
    bindir: str  # where the `vfs-agent` command is

    @property
    def libexec(self) -> str:
        return f"{self.prefix}/lib/vfs-agent"

    def files(self) -> list[tuple[str, str, int]]:
        """(template in systemd/, destination path, mode)."""
        lib = f"{self.prefix}/lib"
        return [
            (
                "vfs-agent-generator.in",
                f"{lib}/systemd/system-generators/vfs-agent-generator",
                0o755,
            ),
            ("vfs-agent-tag-id.in", f"{self.libexec}/vfs-agent-tag-id", 0o755),
            ("vfs-agent.service.in", f"{lib}/systemd/system/vfs-agent.service", 0o644),
            (
                "vfs-agent-cloud-init.service.in",
                f"{lib}/systemd/system/vfs-agent-cloud-init.service",
                0o644,
            ),
            (f"{RULE_NAME}.in", f"{lib}/udev/rules.d/{RULE_NAME}", 0o644),
        ]

    def render(self, template: str) -> str:
        text = resources.files("vfs_agent").joinpath("data", template).read_text(encoding="utf-8")
        for key, value in (
            ("@PYTHON@", self.python),
            ("@BINDIR@", self.bindir),
            ("@LIBEXECDIR@", self.libexec),
        ):
            text = text.replace(key, value)
        return text


def default_layout(prefix: str = "/usr/local") -> Layout:
    return Layout(prefix, sys.executable, sysconfig.get_path("scripts"))


def install(root: Path, layout: Layout, *, dry_run: bool = False) -> list[str]:
    written = []
    for template, dest, mode in layout.files():
        if not dry_run:
            write_atomic(SysRoot(root).path(dest), layout.render(template), mode=mode)
        written.append(dest)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m vfs_agent.install_files", description=__doc__)
    parser.add_argument("--root", default="/", help="install into this tree (DESTDIR)")
    parser.add_argument("--prefix", default="/usr", help="/usr for packages")
    parser.add_argument("--python", default="/usr/bin/python3")
    parser.add_argument("--bindir", default=None, help="default: PREFIX/bin")
    args = parser.parse_args(argv)
    layout = Layout(args.prefix, args.python, args.bindir or f"{args.prefix}/bin")
    for dest in install(Path(args.root), layout):
        print(f"installed {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
