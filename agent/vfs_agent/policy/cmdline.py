"""`vfs_agent.mount=TAG:PATH[:OPTIONS]` on the kernel command line: pure parsing, no I/O.

For direct-kernel-boot VMs (microVMs, virtme-style test VMs) whose definition has a command
line but no credentials. The rules, as the README states them:

* Arguments are split the way the kernel splits /proc/cmdline: on spaces, except inside double
  quotes, and the quotes are dropped (`"vfs_agent.mount=my tag:/srv/my tag"` is one argument).
  The key may be written `vfs_agent.mount` or `vfs-agent.mount` (the kernel and systemd treat
  `-` and `_` in keys alike). The argument may be repeated, one share each.
* The value is `TAG:PATH` or `TAG:PATH:OPTIONS`, split on every `:`. In TAG and PATH, `\\xHH`
  (two hex digits) stands for the byte HH, as in systemd-escape: `\\x3a` is `:`, `\\x20` a space,
  `\\x22` a double quote, `\\x5c` a backslash; any other backslash is an error. The bytes must be
  UTF-8. OPTIONS is a comma-separated list of mount options (the policy's `options:`).

Cheap to import (the boot-time generator fingerprints these arguments): validation of the
tag, path and options themselves is the policy's (policy_load), so messages match the files'.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

KEY = "vfs_agent.mount"
CMDLINE = "/proc/cmdline"
SYNTAX = "write vfs_agent.mount=TAG:PATH[:OPTIONS], with \\x3a for a ':' in TAG or PATH"
_ESCAPE = re.compile(rb"\\x([0-9a-fA-F]{2})")


@dataclass(frozen=True)
class Argument:
    """One `vfs_agent.mount=` argument and where it starts in /proc/cmdline (1-based)."""

    column: int
    value: str


@dataclass(frozen=True)
class MountSpec:
    tag: str
    path: str
    options: tuple[str, ...]


def split(cmdline: str) -> list[tuple[int, str]]:
    """(1-based column, argument without its quotes) of every argument, as the kernel splits
    them: whitespace separates, except inside double quotes."""
    out: list[tuple[int, str]] = []
    start: int | None = None
    quoted = False
    word: list[str] = []
    for index, char in enumerate(cmdline):
        if char == '"':
            quoted = not quoted
            start = index if start is None else start
        elif char.isspace() and not quoted:
            if start is not None:
                out.append((start + 1, "".join(word)))
            start, word = None, []
        else:
            start = index if start is None else start
            word.append(char)
    if start is not None:
        out.append((start + 1, "".join(word)))
    return out


def mount_arguments(cmdline: str) -> list[Argument]:
    """Every `vfs_agent.mount=` argument, in order."""
    out = []
    for column, word in split(cmdline):
        key, sep, value = word.partition("=")
        if key.replace("-", "_") == KEY:
            out.append(Argument(column, value if sep else ""))
    return out


def parse_value(value: str) -> MountSpec:
    """TAG:PATH[:OPTIONS]; raises ValueError with what is wrong and what to write."""
    if not value:
        raise ValueError(f"no value; {SYNTAX}")
    fields = value.split(":")
    if len(fields) < 2:
        raise ValueError(f"no ':' between the tag and the path; {SYNTAX}")
    if len(fields) > 3:
        raise ValueError(f"more than two ':'; {SYNTAX}")
    tag = _unescape(fields[0], "the tag")
    path = _unescape(fields[1], "the path")
    if not tag:
        raise ValueError(f"the tag is empty; {SYNTAX}")
    if not path:
        raise ValueError(f"the path is empty; {SYNTAX}")
    options: tuple[str, ...] = ()
    if len(fields) == 3:
        options = tuple(fields[2].split(","))
        if not fields[2] or "" in options:
            raise ValueError("an empty mount option; write OPTIONS as ro,noatime (no empty item)")
    return MountSpec(tag, path, options)


def _unescape(text: str, what: str) -> str:
    raw = text.encode("utf-8", "surrogateescape")
    if b"\\" in _ESCAPE.sub(b"", raw):
        raise ValueError(
            f"{what} {text!r} has a backslash that is not \\xHH; write \\x5c for a backslash"
        )
    decoded = _ESCAPE.sub(lambda m: bytes([int(m.group(1), 16)]), raw)
    try:
        return decoded.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(
            f"{what} {text!r} is not UTF-8 once its \\xHH escapes are decoded"
        ) from None


def fingerprint_text(cmdline: str) -> str:
    """What of the command line the policy depends on (the cache keys on this only)."""
    return "\n".join(f"{a.column}\0{a.value}" for a in mount_arguments(cmdline))


def escape_field(text: str) -> str:
    """TAG or PATH written for a `vfs_agent.mount=` value (the inverse of the unescaping):
    `:`, `\\`, `"`, whitespace and control characters as \\xHH."""
    out = []
    for char in text:
        if char in ':\\"' or char.isspace() or not char.isprintable():
            out += [f"\\x{b:02x}" for b in char.encode("utf-8")]
        else:
            out.append(char)
    return "".join(out)
