"""Which mount targets are acceptable, and where a tag without an explicit path goes."""

from __future__ import annotations

import posixpath

from vfs_agent.core.escape import encode_tag, has_control

# Mounting on these would hide the system itself.
FORBIDDEN_EXACT = frozenset({"/", "/run", "/var"})
# Mounting on these or anywhere below them would hide or shadow system state.
FORBIDDEN_TREES = (
    "/proc",
    "/sys",
    "/dev",
    "/etc",
    "/usr",
    "/boot",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
)

TAG_PLACEHOLDER = "{tag}"
PATH_MAX = 4096


def path_problem(path: str) -> str | None:
    """Why `path` may not be a mount target, or None. Pure: looks at the text only.

    Symlink components are checked when the mountpoint is opened (SysRoot.open_dir_nofollow).
    """
    if not path.startswith("/"):
        return "is not absolute"
    if len(path.encode("utf-8", "surrogateescape")) > PATH_MAX:
        return f"is longer than {PATH_MAX} bytes"
    if has_control(path):
        return "contains a control character"
    components = path.split("/")[1:]
    if path != "/" and ("" in components or "." in components or ".." in components):
        return "is not normalized (empty, '.' or '..' component, or trailing '/')"
    if path in FORBIDDEN_EXACT:
        return "is a system directory; choose a directory below it"
    for tree in FORBIDDEN_TREES:
        if path == tree or path.startswith(tree + "/"):
            return f"is inside {tree}, which must never be mounted over"
    return None


def derived_path(mount_root: str, tag: str) -> str:
    """<mount_root>/<encoded tag>: always exactly one component below mount_root."""
    return posixpath.join(mount_root, encode_tag(tag))


def expand_path(template: str, tag: str) -> str:
    """A rule's path with {tag} replaced by the encoded tag (never by the raw tag)."""
    return template.replace(TAG_PLACEHOLDER, encode_tag(tag))


def is_below(path: str, parent: str) -> bool:
    """True when `path` lies strictly below `parent`."""
    return parent != path and (path.startswith(parent.rstrip("/") + "/"))
