"""Where the policy lives, and which files make it up (no validation here: cheap to import)."""

from __future__ import annotations

TYPE_CHECKING = False  # the command line imports this module for its help text only
if TYPE_CHECKING:
    from vfs_agent.system.sysroot import SysRoot

MAIN_POLICY = "/etc/vfs-agent/policy.yaml"
DROPIN_DIR = "/etc/vfs-agent/policy.d"
POLICY_MAX = 1 << 20  # bytes; a policy file is a few KiB, anything larger is refused unread


def policy_files(sysroot: SysRoot, explicit: str | None) -> list[str]:
    """The files to read, in read order (paths inside the root)."""
    if explicit is not None:
        return [explicit]
    files = [MAIN_POLICY] if sysroot.exists(MAIN_POLICY) else []
    files += [
        f"{DROPIN_DIR}/{name}"
        for name in sysroot.listdir(DROPIN_DIR)
        if name.endswith(".yaml") and not name.startswith(".")
    ]
    return files
