"""Guest image recipes: which Debian, which packages, what else goes in, how the fast init loads
modules. rootfs.py builds a base tree from a recipe, image.py puts the project on top of it.

A base tree's cache key hashes only its own recipe's fields (and rootfs.py), not this file, so
editing one recipe never rebuilds the trees of the others.
"""

from __future__ import annotations

from dataclasses import dataclass

MIRROR = "http://deb.debian.org/debian"


@dataclass(frozen=True)
class Recipe:
    """One kind of guest.

    `pip_requirements` are fetched as wheels on the host (`pip download` for the suite's
    `python_version`, cached) and installed offline in the chroot: dependencies the suite
    packages too old. `fast_modules` are loaded by name by the fast-boot init, before it loads
    the drivers of the virtio devices present; `fast_noload` are never loaded by it (so a test
    sees them as unloaded modules; they are still loaded on demand by modprobe or mount).
    """

    name: str
    suite: str
    debootstrap_packages: tuple[str, ...]
    chroot_packages: tuple[str, ...]
    pip_requirements: tuple[str, ...] = ()
    python_version: str = ""
    fast_modules: tuple[str, ...] = ()
    fast_noload: tuple[str, ...] = ()
    mirror: str = MIRROR


# What both guests need: systemd and udev for the systemd boots, kmod, util-linux (findmnt is
# the tests' oracle), python3 and vfs-agent's dependencies that Debian packages.
_COMMON = (
    "systemd",
    "systemd-sysv",
    "udev",
    "dbus",
    "kmod",
    "python3",
    "python3-pip",
    "python3-click",
    "python3-yaml",
    "python3-pyudev",
    "python3-systemd",
    "util-linux",
    "mount",
    "procps",
    "e2fsprogs",
)

# Debian 13, kernel 6.12: virtiofs, fuse, virtio_pci and virtio_console are built in.
# python3-cffi-backend: cloud-init pulls a virtual package that debootstrap cannot resolve on
# its own (README: Machine facts). iproute2 and openssh-client: what every cloud image has and
# cloud-init uses (network report, host keys); without them cloud-init warns and
# `cloud-init status --wait` exits 2, so a test could not see vfs-agent keep it at 0.
TRIXIE = Recipe(
    name="trixie",
    suite="trixie",
    debootstrap_packages=(
        *_COMMON,
        "python3-pydantic",
        "cloud-init",
        "python3-cffi-backend",
        "iproute2",
        "openssh-client",
    ),
    # Installed afterwards inside the chroot: the kernel's postinst needs /proc and a sane /dev.
    chroot_packages=("linux-image-amd64", "initramfs-tools", "zstd"),
)

# Debian 12, kernel 6.1: no /sys/fs/virtiofs; virtiofs, fuse, virtio_pci and virtio_console
# are modules. Everything from Debian 12's own archive, pydantic 1.10.4 included: no PyPI
# wheel, as on a Debian 12 VM that installs the .deb with apt.
BOOKWORM = Recipe(
    name="bookworm",
    suite="bookworm",
    debootstrap_packages=(*_COMMON, "python3-pydantic"),
    chroot_packages=("linux-image-amd64", "initramfs-tools", "zstd"),
    fast_modules=("virtio_pci", "virtio_blk", "virtio_console"),
    fast_noload=("virtiofs", "fuse"),
)

RECIPES = {r.name: r for r in (TRIXIE, BOOKWORM)}
