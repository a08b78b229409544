"""The manual pages, rendered at build time from the things they describe, so they cannot drift:
vfs-agent(1) from the click command tree (every command, argument and option with its --help
text) and vfs-agent.policy(5) from the policy models (every key with its default and
description) plus the prose below. commands/install.py installs both, as it does the units.

Pure: click objects and models in, roff text out.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Iterator
from typing import Any

import click

from vfs_agent.policy.files import DROPIN_DIR, MAIN_POLICY

DATE = "2026-11"  # of the format, not of the build: reproducible packages


def roff(text: str) -> str:
    """Plain text as roff: backslashes and hyphens escaped, no line starting a request."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    lines = []
    for line in text.splitlines():
        lines.append("\\&" + line if line.startswith((".", "'")) else line)
    return "\n".join(lines)


def _paragraphs(text: str) -> str:
    """click help text (paragraphs separated by blank lines; \\b keeps a block as is)."""
    out = []
    for block in inspect.cleandoc(text).split("\n\n") if text else []:
        if block.startswith("\b\n"):
            out.append(".PP\n.nf\n" + roff(block[2:]) + "\n.fi")
        else:
            out.append(".PP\n" + roff(" ".join(block.split())))
    return "\n".join(out)


def _options(ctx: click.Context, command: click.Command, *, with_help: bool) -> Iterator[str]:
    """The options (arguments are in the usage line); --help only where asked, once."""
    for param in command.get_params(ctx):
        if not isinstance(param, click.Option):
            continue
        if not with_help and "--help" in param.opts:
            continue
        record = param.get_help_record(ctx)
        if record is None:
            continue
        names, help_text = record
        yield f".TP\n.B {roff(names)}\n{roff(help_text) if help_text else ''}".rstrip()


def _commands(ctx: click.Context, group: click.Group, path: str) -> Iterator[str]:
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if command is None or command.hidden:
            continue
        sub = click.Context(command, parent=ctx, info_name=name)
        full = f"{path} {name}"
        usage = " ".join(command.collect_usage_pieces(sub))
        yield f'.SS "{roff(full)} {roff(usage)}"'.replace("  ", " ")
        yield _paragraphs(command.help or "")
        options = list(_options(sub, command, with_help=False))
        if options:
            yield ".PP\nOptions:\n.RS"
            yield from options
            yield ".RE"
        if isinstance(command, click.Group):
            yield from _commands(sub, command, full)


def render_command_page(main: click.Group, version: str) -> str:
    """vfs-agent(1): every command and option of the click tree, with its help text."""
    ctx = click.Context(main, info_name="vfs-agent")
    parts = [
        f'.TH VFS\\-AGENT 1 "{DATE}" "vfs-agent {roff(version)}" "vfs-agent manual"',
        ".SH NAME",
        "vfs\\-agent \\- discover, mount and keep mounted the virtio\\-fs shares of a VM guest",
        ".SH SYNOPSIS",
        ".B vfs\\-agent",
        "[\\fIGLOBAL OPTIONS\\fR] \\fICOMMAND\\fR [\\fIARGS\\fR]...",
        ".SH DESCRIPTION",
        _paragraphs(main.help or ""),
        ".PP",
        roff(
            "A hypervisor attaches host directories to a virtual machine as virtio-fs devices, "
            "each with a tag. vfs-agent discovers the tags, decides from the policy (see "
        )
        + "\n.BR vfs\\-agent.policy (5))\n"
        + roff(
            "where and how each is mounted, mounts them, writes systemd mount units (a "
            "generator) or fstab lines so they come back at every boot, and follows hotplug."
        ),
        ".SH GLOBAL OPTIONS",
        *_options(ctx, main, with_help=True),
        ".SH COMMANDS",
        *_commands(ctx, main, "vfs-agent"),
        ".SH EXIT STATUS",
        ".TP\n.B 0\nSuccess.",
        ".TP\n.B 1\nAn action failed (for example a required share could not be mounted).",
        ".TP\n.B 2\nUsage error or invalid policy; nothing was changed.",
        ".SH FILES",
        f".TP\n.I {roff(MAIN_POLICY)}\nThe policy.",
        f".TP\n.I {roff(DROPIN_DIR)}/*.yaml\nDrop-ins, read after it in lexical order.",
        ".TP\n.I /var/lib/vfs\\-agent/policy.json\n"
        "The compiled policy the boot-time generator reads.",
        ".TP\n.I /var/lib/vfs\\-agent/generator.memo\n"
        "The boot-time generator's last full run: its inputs, output and messages, which it "
        "writes again when none of its inputs changed.",
        ".SH SEE ALSO",
        ".BR vfs\\-agent.policy (5),",
        ".BR systemd.mount (5),",
        ".BR systemd.generator (7),",
        ".BR mount (8)",
    ]
    return "\n".join(p for p in parts if p) + "\n"


# -- vfs-agent.policy(5) ---------------------------------------------------------------------------

POLICY_PROSE = {
    "DESCRIPTION": f"""\
The policy says which virtio-fs (and virtio-9p) shares vfs-agent mounts, where, and how. It is
read from {MAIN_POLICY}, then from every {DROPIN_DIR}/*.yaml in lexical order (the option
--policy PATH reads one file instead). Each file is one YAML mapping; unknown keys, duplicate
keys and values of the wrong type are errors, reported as file:line:column: field: what is
wrong; what to write. `vfs-agent policy check` validates, `vfs-agent policy schema` prints the
JSON Schema.""",
    "MERGING": """\
defaults merge key by key, a later file overriding an earlier one. Rules are matched last file
first and, within one file, top to bottom; the first rule whose tag pattern matches decides.
So a drop-in overrides the main policy for a tag. One file may not name the same tag twice.""",
    "SAFETY": """\
Tags are chosen by the host and untrusted. A tag never picks a path by itself: a derived path
is exactly one component below mount_root, the tag encoded injectively (letters, digits and
_ - . stay; a leading . and every other byte become %XX). Nothing is mounted on /, /run, /var,
or in or below /proc, /sys, /dev, /etc, /usr, /boot, /bin, /sbin, /lib*, or through a path with
a symlink component. nosuid and nodev are the default options. The policy files and their
directory must be owned by root and not writable by group or others.""",
    "OPTIONS": """\
Mount flags (ro rw nosuid suid nodev dev noexec exec sync async dirsync noatime atime
nodiratime diratime relatime norelatime strictatime nostrictatime lazytime nolazytime),
virtio-fs dax and dax=always|never|inode, 9p msize=N cache=... access=... posixacl noxattr, and
x-* (kept for fstab and units, never passed to the kernel). nofail, noauto, defaults, _netdev,
user, trans and version are refused with a hint: the policy says those otherwise.""",
}

POLICY_EXAMPLE = """\
version: 1
defaults:
  mount_root: /mnt/virtiofs
  options: [nosuid, nodev]
  unknown: ignore
mounts:
  - tag: media_tag
    path: /mnt/media
    options: [ro]
    required: true
  - tag: "data-*"
    path: "/srv/data/{tag}"
  - tag: "private-*"
    ignore: true"""


def _keys(schema: dict[str, Any], node: dict[str, Any], prefix: str) -> Iterator[str]:
    required = set(node.get("required", []))
    for key, prop in node.get("properties", {}).items():
        choices = prop.get("anyOf", [prop])
        ref = next((c["$ref"] for c in choices if "$ref" in c), None)
        items: dict[str, Any] = next(
            (c.get("items", {}) for c in choices if c.get("type") == "array"), {}
        )
        target = ref or items.get("$ref")
        sub = schema["$defs"][target.rsplit("/", 1)[1]] if target else None
        kinds = sorted({c.get("type", "") for c in choices} - {"", "null"})
        if sub is not None and "enum" in sub:
            what = " | ".join(str(v) for v in sub["enum"])
        elif sub is not None:
            what = "list of mappings" if items else "mapping"
        else:
            what = " or ".join(kinds) or "value"
            if "const" in prop:
                what = str(prop["const"])
        facts = ["required" if key in required else f"default: {json.dumps(prop.get('default'))}"]
        if "minimum" in json.dumps(choices):
            bounds = next(c for c in choices if "minimum" in c)
            facts.append(f"{bounds['minimum']}..{bounds['maximum']}")
        description = prop.get("description") or (sub or {}).get("description", "")
        yield f".TP\n.B {roff(prefix + key)}\n({roff(what)}; {roff(', '.join(facts))})"
        if description:
            yield roff(description)
        if sub is not None and "properties" in sub:
            yield from _keys(schema, sub, f"{prefix}{key}{'[].' if items else '.'}")


def render_policy_page(schema: dict[str, Any], version: str) -> str:
    """vfs-agent.policy(5): the prose above and every key of the JSON Schema."""
    parts = [
        f'.TH VFS\\-AGENT.POLICY 5 "{DATE}" "vfs-agent {roff(version)}" "vfs-agent manual"',
        ".SH NAME",
        "vfs\\-agent.policy \\- where and how vfs\\-agent mounts virtio\\-fs shares",
        ".SH SYNOPSIS",
        f"{roff(MAIN_POLICY)}, {roff(DROPIN_DIR)}/*.yaml",
        ".SH DESCRIPTION",
        ".PP\n" + roff(" ".join(POLICY_PROSE["DESCRIPTION"].split())),
        ".SH KEYS",
        *_keys(schema, schema, ""),
        ".SH MERGING",
        ".PP\n" + roff(" ".join(POLICY_PROSE["MERGING"].split())),
        ".SH MOUNT OPTIONS",
        ".PP\n" + roff(" ".join(POLICY_PROSE["OPTIONS"].split())),
        ".SH SAFETY",
        ".PP\n" + roff(" ".join(POLICY_PROSE["SAFETY"].split())),
        ".SH EXAMPLE",
        ".PP\n.nf\n" + roff(POLICY_EXAMPLE) + "\n.fi",
        ".SH SEE ALSO",
        ".BR vfs\\-agent (1)",
    ]
    return "\n".join(parts) + "\n"
