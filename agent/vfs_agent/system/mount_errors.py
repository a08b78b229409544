"""Why mount(2) of a share failed, in words a person can act on.

Apart from syscalls.py so the boot-time answer wait (answer.py) imports it only when a mount
failed."""

from __future__ import annotations

import errno

from vfs_agent.core.transport import Transport


def explain_mount_error(err: OSError, tag: str, transport: Transport) -> str:
    """Why mount(2) failed, and what to do about it."""
    code = err.errno
    if code == errno.ENOENT and transport is Transport.VIRTIOFS:
        return (
            f"the kernel has no virtio-fs share with tag {tag!r}: is the device attached? "
            "(see 'vfs-agent status')"
        )
    if code == errno.ENOENT:
        return f"no 9p share with tag {tag!r} is attached (see 'vfs-agent status')"
    if code == errno.ENODEV:
        return (
            f"the kernel does not support {transport.value} "
            "(module not loaded or missing; see 'vfs-agent kernel')"
        )
    if code in (errno.EPERM, errno.EACCES):
        return (
            "permission denied: mounting needs root (CAP_SYS_ADMIN in the initial mount namespace)"
        )
    if code == errno.EBUSY:
        return "busy: something is already mounted there or the share is in use"
    if code == errno.EINVAL:
        return "the kernel rejected the options or the tag (EINVAL); check the rule's options"
    if code == errno.ETIMEDOUT:
        return (
            f"{err.strerror}: the kernel is stuck removing a virtio-fs device whose host daemon "
            "died, and every virtio-fs mount waits for that until the guest reboots "
            "(see 'vfs-agent status')"
        )
    if code == errno.ENOTCONN:
        return "the share's device is gone (ENOTCONN); unplugged shares must be unmounted"
    if code in (errno.ELOOP, errno.ENOTDIR):
        return "the mount path has a symlink or non-directory component"
    return err.strerror or str(err)
