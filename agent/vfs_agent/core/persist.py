"""Which shares an fstab line or a mount unit can express: one rule for both outputs.

On a systemd guest an fstab line becomes a unit through systemd-fstab-generator, which writes
What=/Where= literally (only `%` doubled), so both outputs stand or fall with how systemd reads
a unit file setting. Verified against systemd-fstab-generator and systemd-analyze (see
tests/unit/test_fstab_generator_differential.py):
- a line ends at \\n or \\r, so a value holding either is cut;
- spaces and tabs around a value are stripped, and a trailing backslash continues the line;
- a value that is not valid UTF-8 is ignored ("String is not UTF-8 clean"), so the unit fails;
  for systemd that includes the Unicode noncharacters (U+FDD0..U+FDEF, U+FFFE, U+FFFF, ...);
- mount(8), which systemd runs, resolves LABEL=, UUID=, ... sources (escape.source_problem);
- a line whose first character is '#' is a comment, and systemd-fstab-generator 252 (glibc's
  getmntent) decodes no \\043, so a tag cannot begin with '#';
- a unit name is at most 255 bytes.
Every other byte (a tab or a control character inside a tag, `#`, `;`, quotes) is kept.
A share that fails these gets neither an fstab line nor a unit, with the same reason, and
`plan` names it; mount-all and the daemon can still mount it.
"""

from __future__ import annotations

from vfs_agent.core.escape import mount_unit_name, source_problem, tag_bytes

UNIT_NAME_MAX = 255
_STRIPPED = " \t"  # systemd's WHITESPACE, minus the line breaks refused before


def setting_problem(value: str) -> str | None:
    """Why systemd would not read `Key=value` back as `value`, or None."""
    if "\n" in value or "\r" in value:
        return "contains a line break"
    if value[:1] in tuple(_STRIPPED) or value[-1:] in tuple(_STRIPPED):
        return "begins or ends with a space or tab, which systemd strips"
    if value.endswith("\\"):
        return "ends with a backslash, which systemd reads as a line continuation"
    try:
        tag_bytes(value).decode("utf-8")
    except UnicodeDecodeError:
        return "is not valid UTF-8, which systemd ignores"
    if any(_noncharacter(ord(c)) for c in value):
        return "holds a Unicode noncharacter, which systemd rejects as invalid UTF-8"
    return None


def _noncharacter(code: int) -> bool:
    """U+FDD0..U+FDEF and U+xFFFE/U+xFFFF of every plane (systemd's unichar_is_valid())."""
    return 0xFDD0 <= code <= 0xFDEF or (code & 0xFFFE) == 0xFFFE


def share_problem(tag: str, path: str) -> str | None:
    """Why no fstab line or mount unit can say "mount `tag` on `path`", or None."""
    for what, value in (("tag", tag), ("path", path)):
        problem = setting_problem(value)
        if problem:
            return f"the {what} {value!r} {problem}"
    problem = source_problem(tag)
    if problem:
        return f"the tag {tag!r} {problem}"
    if tag.startswith("#"):
        return f"the tag {tag!r} begins with '#', which makes its fstab line a comment"
    if len(mount_unit_name(path)) > UNIT_NAME_MAX:
        return f"the unit name for {path!r} would be longer than {UNIT_NAME_MAX} characters"
    return None
