"""Escaping of untrusted text for the places it ends up: paths, unit names, unit files, fstab.

Each function is exact and injective where the target needs it; none of them ever lets a tag
choose a path by itself.
"""

from __future__ import annotations

import string

# Bytes a tag may keep verbatim in a derived path component.
_TAG_SAFE = frozenset((string.ascii_letters + string.digits + "_-.").encode())

# systemd's VALID_CHARS for unit names minus the ones do_escape() escapes anyway ('-', '\\').
_UNIT_SAFE = frozenset((string.ascii_letters + string.digits + ":_.").encode())

# fstab fields: the only escapes that every fstab reader decodes (glibc's getmntent, which
# systemd-fstab-generator 252 uses, decodes just these four; libmount decodes any \ooo), and
# the bytes that would otherwise split a field or a line.
_FSTAB_SPECIAL = frozenset(b" \t\n\\")


def is_control(char: str) -> bool:
    """A C0 control character or DEL: what may not appear in a tag, a path or a policy file
    name, and what a unit file comment escapes (the one definition of it)."""
    return ord(char) < 0x20 or ord(char) == 0x7F


def has_control(text: str) -> bool:
    """Whether `text` holds a control character (is_control)."""
    return any(is_control(c) for c in text)


def tag_bytes(tag: str) -> bytes:
    """The bytes of a tag as the kernel sees them (non-UTF-8 bytes survive via surrogateescape)."""
    return tag.encode("utf-8", "surrogateescape")


def encode_tag(tag: str) -> str:
    """Encode a tag as one safe path component, injectively and reversibly.

    Letters, digits, '_', '-' and '.' stay; every other byte becomes %XX (upper-case hex), and so
    does a leading '.'. The result is never empty, '.', '..' or hidden, and holds no '/',
    whitespace, quotes or backslashes. The same encoding names the systemd device alias.
    """
    raw = tag_bytes(tag)
    if not raw:
        raise ValueError("an empty tag cannot name a path")
    out = []
    for i, byte in enumerate(raw):
        if byte in _TAG_SAFE and not (i == 0 and byte == ord(".")):
            out.append(chr(byte))
        else:
            out.append(f"%{byte:02X}")
    return "".join(out)


def decode_tag(component: str) -> str:
    """Invert encode_tag()."""
    raw = bytearray()
    i = 0
    while i < len(component):
        if component[i] == "%":
            raw.append(int(component[i + 1 : i + 3], 16))
            i += 3
        else:
            raw.append(ord(component[i]))
            i += 1
    return raw.decode("utf-8", "surrogateescape")


def systemd_escape_path(path: str) -> str:
    """Exactly `systemd-escape --path PATH` (systemd's unit_name_path_escape()).

    The caller passes a normalized absolute path (no '.', '..' or empty components).
    """
    stripped = path.strip("/")
    if not stripped:
        return "-"
    raw = tag_bytes(stripped)
    out = []
    for i, byte in enumerate(raw):
        if byte == ord("/"):
            out.append("-")
        elif byte in _UNIT_SAFE and not (i == 0 and byte == ord(".")):
            out.append(chr(byte))
        else:
            out.append(f"\\x{byte:02x}")
    return "".join(out)


def mount_unit_name(path: str) -> str:
    """The .mount unit name systemd requires for Where=PATH."""
    return systemd_escape_path(path) + ".mount"


def unit_specifier_escape(value: str) -> str:
    """Escape '%' so systemd's specifier expansion gives back `value`."""
    return value.replace("%", "%%")


def fstab_escape(field: str) -> str:
    """Escape one fstab field with octal escapes: space \\040, tab \\011, newline \\012,
    backslash \\134, the four that glibc and libmount both decode. Every other byte is written
    as itself: fields split only at spaces and tabs, and '#' starts a comment only as the
    first character of a line (a tag that begins with '#' gets no line; core/persist.py)."""
    out = bytearray()
    for byte in tag_bytes(field):
        if byte in _FSTAB_SPECIAL:
            out += f"\\{byte:03o}".encode()
        else:
            out.append(byte)
    return out.decode("utf-8", "surrogateescape")


def unescape_octal(field: str) -> str:
    """Decode \\ooo escapes as the kernel writes them in /proc/self/mountinfo."""
    if "\\" not in field:
        return field
    raw = tag_bytes(field)
    out = bytearray()
    i = 0
    while i < len(raw):
        chunk = raw[i + 1 : i + 4]
        if raw[i] == ord("\\") and len(chunk) == 3 and all(48 <= b <= 55 for b in chunk):
            out.append(int(chunk, 8))
            i += 4
        else:
            out.append(raw[i])
            i += 1
    return out.decode("utf-8", "surrogateescape")


# libmount resolves these source prefixes as device tags (blkid), so a share whose tag starts
# with one cannot be written as an fstab source or a unit's What=.
_DEVICE_TAG_PREFIXES = ("LABEL=", "UUID=", "PARTUUID=", "PARTLABEL=", "ID=")


def source_problem(tag: str) -> str | None:
    """Why mount(8) would misread `tag` as a mount source, or None. mount(2) is not affected."""
    if tag.startswith(_DEVICE_TAG_PREFIXES):
        return "looks like a device tag (LABEL=, UUID=, ...) that mount(8) would look up"
    return None
