"""The manual pages and shell completions that commands/install.py generates at build time: every
command and option that `--help` shows is in vfs-agent(1), every policy key of the JSON Schema
in vfs-agent.policy(5), and the completion scripts complete real commands."""

from __future__ import annotations

import re
from pathlib import Path

import click
from click.testing import CliRunner

from vfs_agent.commands import install as install_files
from vfs_agent.commands import manpage
from vfs_agent.commands.cli import main
from vfs_agent.policy.pydantic_compat import json_schema
from vfs_agent.policy.schema import PolicyFile


def plain(page: str | bytes) -> str:
    """roff as text, enough for searching: escapes undone, requests dropped."""
    if isinstance(page, bytes):
        page = page.decode("utf-8")
    text = page.replace("\\-", "-").replace("\\e", "\\").replace("\\&", "")
    lines = (re.sub(r'^\.[A-Z]{1,2} ?"?(.*?)"?$', r"\1", line) for line in text.splitlines())
    return "\n".join(lines)


def help_text(*path: str) -> str:
    result = CliRunner().invoke(main, [*path, "--help"])
    assert result.exit_code == 0, result.output
    return result.output


def section(text: str, title: str) -> list[str]:
    """The lines of a --help section ('Options:', 'Commands:')."""
    lines = (
        text.split(f"\n{title}\n", 1)[1].split("\n\n", 1)[0].splitlines() if title in text else []
    )
    return [line for line in lines if line.startswith("  ") and line.strip()]


def walk_help(path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], list[str]]]:
    """(command path, its option names) for every command, read from --help output only."""
    text = help_text(*path)
    options = [
        name
        for line in section(text, "Options:")
        for name in re.findall(r"(?<![\w-])(--?[\w-]+)", line.split("  ", 2)[1] + " ")
        if line.strip().startswith("-")
    ]
    found = [(path, options)]
    for line in section(text, "Commands:"):
        found += walk_help((*path, line.split()[0]))
    return found


def test_every_command_and_option_of_help_is_in_the_man_page() -> None:
    page = plain(manpage.render_command_page(main, "9.9"))
    commands = walk_help()
    assert len(commands) >= 15  # the walk itself works: every command and subcommand
    for path, options in commands:
        if path:
            assert re.search(rf"^vfs-agent {' '.join(path)} ", page, re.M), path
        for option in options:
            assert option in page, f"{' '.join(path) or 'vfs-agent'}: {option} not in the page"


def test_the_man_page_check_can_fail() -> None:
    """A command added to the tree but missing from the page would be caught: the page of a
    tree without `kernel` lacks what `--help` of the full tree shows."""
    smaller = click.Group(name="vfs-agent", help=main.help)
    for name in main.list_commands(click.Context(main)):
        if name != "kernel":
            smaller.add_command(main.commands[name], name)
    page = plain(manpage.render_command_page(smaller, "9.9"))
    assert not re.search(r"^vfs-agent kernel ", page, re.M)


def test_every_policy_key_is_in_the_policy_page() -> None:
    schema = json_schema(PolicyFile)
    page = plain(manpage.render_policy_page(schema, "9.9"))
    keys = list(schema["properties"])
    for name, sub in (("defaults.", "DefaultsSection"), ("mounts[].", "RuleModel")):
        keys += [name + key for key in schema["$defs"][sub]["properties"]]
    for key in keys:
        assert re.search(rf"^{re.escape(key)}$", page, re.M), key
    for value in ("ignore | mount", "auto | virtiofs | 9p", "1..3600", '"/mnt/virtiofs"'):
        assert value in page


def test_the_pages_are_valid_roff(tmp_path: Path) -> None:
    """No line starts a roff request by accident (a '.' or a quote from help text)."""
    for page in (
        manpage.render_command_page(main, "9.9"),
        manpage.render_policy_page(json_schema(PolicyFile), "9.9"),
    ):
        for line in page.splitlines():
            if line.startswith((".", "'")):
                assert re.match(r"^\.(TH|SH|SS|PP|TP|B|BR|I|RS|RE|nf|fi)\b", line), line


def test_installed_with_the_system_files(tmp_path: Path) -> None:
    layout = install_files.Layout("/usr", "/usr/bin/python3", "/usr/bin", "/usr/share/zsh/x")
    written = install_files.install(tmp_path, layout)
    for path in (
        "/usr/share/man/man1/vfs-agent.1",
        "/usr/share/man/man5/vfs-agent.policy.5",
        "/usr/share/bash-completion/completions/vfs-agent",
        "/usr/share/zsh/x/_vfs-agent",
    ):
        assert path in written
        assert (tmp_path / path.lstrip("/")).stat().st_mode & 0o777 == 0o644
    man1 = (tmp_path / "usr/share/man/man1/vfs-agent.1").read_text()
    assert man1 == manpage.render_command_page(main, __import__("vfs_agent").__version__)
    zsh = (tmp_path / "usr/share/zsh/x/_vfs-agent").read_text()
    assert zsh.startswith("#compdef vfs-agent")
    bash = (tmp_path / "usr/share/bash-completion/completions/vfs-agent").read_text()
    assert "_VFS_AGENT_COMPLETE=bash_complete" in bash
    assert "complete -o nosort -F _vfs_agent_completion vfs-agent" in bash


def test_the_completion_completes_commands_and_options() -> None:
    """What the installed scripts ask the program (click's protocol) gets real answers."""

    def complete(words: str, cword: int) -> list[str]:
        env = {
            "_VFS_AGENT_COMPLETE": "bash_complete",
            "COMP_WORDS": words,
            "COMP_CWORD": str(cword),
        }
        result = CliRunner().invoke(main, [], env=env, prog_name="vfs-agent")
        return [line.split(",", 1)[1] for line in result.output.splitlines()]

    assert {"mount", "mount-all"} <= set(complete("vfs-agent mou", 1))
    assert "--dry-run" in complete("vfs-agent mount-all --d", 2)
    assert set(complete("vfs-agent policy ", 2)) == {"check", "compile", "schema"}
