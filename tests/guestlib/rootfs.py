"""The cached base root filesystem: Debian minbase + systemd + python3 + a kernel.

Built once per recipe (recipes.py: Debian 13 by default, Debian 12 for the older kernel) with
debootstrap and kept under the cache, keyed by a hash of that recipe (suite, mirror, package
lists, pip requirements) and this file's own source, so editing a recipe rebuilds its tree and
nothing else does. Nothing project-specific goes in here: see image.py for the per-project layer.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.guestlib.common import (
    HarnessError,
    cache_dir,
    new_symlink,
    progress,
    run_host,
    sha256_parts,
    write_new_file,
)
from tests.guestlib.recipes import TRIXIE, Recipe

HOSTNAME = "vfs-agent-guest"
KEEP_ROOTFS = 2  # per recipe: older base trees are deleted
KEEP_WHEELHOUSES = 3
# Wheels for the guest's python3 (x86_64 glibc): what `pip download --platform` accepts.
WHEEL_PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_17_x86_64")


@dataclass(frozen=True)
class Rootfs:
    """A finished base tree and what the image layer needs from it."""

    path: Path
    key: str
    kernel: Path
    initrd: Path
    kernel_version: str
    recipe: Recipe


def recipe_key(recipe: Recipe = TRIXIE) -> str:
    """Hash of everything that decides the content of the recipe's base tree."""
    source = Path(__file__).read_bytes()
    parts = [recipe.suite, recipe.mirror, *recipe.debootstrap_packages, "--"]
    parts += [*recipe.chroot_packages, "--", *recipe.pip_requirements, recipe.python_version]
    return sha256_parts([*parts, source])[:16]


@contextlib.contextmanager
def build_lock() -> Iterator[None]:
    """Serialise image builds between concurrent harness runs."""
    with (cache_dir() / ".build.lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _unescape_octal(field: str) -> str:
    r"""Decode mountinfo's \ooo escapes."""
    out = bytearray()
    raw = field.encode()
    i = 0
    while i < len(raw):
        if raw[i : i + 1] == b"\\" and raw[i + 1 : i + 4].isdigit():
            out.append(int(raw[i + 1 : i + 4], 8))
            i += 4
        else:
            out.append(raw[i])
            i += 1
    return out.decode(errors="surrogateescape")


def _mounts_under(root: Path) -> list[str]:
    """Mount points at or below `root`, deepest first."""
    prefix = str(root.resolve())
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8") as info:
        for line in info:
            target = _unescape_octal(line.split()[4])
            if target == prefix or target.startswith(prefix + "/"):
                found.append(target)
    return sorted(found, key=len, reverse=True)


def unmount_all_under(root: Path) -> None:
    """Unmount everything below `root` (lazily if busy)."""
    for target in _mounts_under(root):
        if subprocess.run(["umount", target], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", target], capture_output=True)


def remove_tree(root: Path) -> None:
    """Delete a build tree; refuses while anything is still mounted inside it."""
    if not root.exists():
        return
    unmount_all_under(root)
    if _mounts_under(root):
        raise HarnessError(f"refusing to delete {root}: still has mounts {_mounts_under(root)}")
    subprocess.run(["rm", "-rf", "--one-file-system", str(root)], check=True)


@contextlib.contextmanager
def chroot_mounts(root: Path) -> Iterator[None]:
    """/proc, /sys, a private /dev and /run inside `root`; always unmounted again.

    /dev is a fresh tmpfs with the few nodes apt and initramfs-tools need, not a bind of the
    host's /dev, so a failed cleanup can never lead `rm -rf` into the host's devices.
    """
    mounted: list[Path] = []

    def mount(*args: str, target: Path) -> None:
        target.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", *args, str(target)], check=True)
        mounted.append(target)

    try:
        mount("-t", "proc", "proc", target=root / "proc")
        mount("-t", "sysfs", "-o", "ro", "sysfs", target=root / "sys")
        mount("-t", "tmpfs", "-o", "mode=0755,size=64m", "tmpfs", target=root / "dev")
        for name, major, minor in (
            ("null", 1, 3),
            ("zero", 1, 5),
            ("full", 1, 7),
            ("random", 1, 8),
            ("urandom", 1, 9),
            ("tty", 5, 0),
        ):
            node = root / "dev" / name
            os.mknod(node, 0o666 | 0o020000, os.makedev(major, minor))
            os.chmod(node, 0o666)
        mount("-t", "devpts", "-o", "newinstance,ptmxmode=0666", "devpts", target=root / "dev/pts")
        mount("-t", "tmpfs", "-o", "mode=0755", "tmpfs", target=root / "run")
        yield
    finally:
        for target in reversed(mounted):
            if subprocess.run(["umount", str(target)], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", str(target)], capture_output=True)


def chroot_env() -> dict[str, str]:
    """A neutral environment for commands run inside the guest tree."""
    return {
        "DEBIAN_FRONTEND": "noninteractive",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/root",
    }


def _small_initramfs(root: Path) -> None:
    """Only what mounts the root goes into the initramfs: virtio_pci (a module on Debian 12),
    virtio_blk and ext4, with their dependencies (`MODULES=list`). Debian's default (`most`)
    packs every storage and filesystem driver, 36 MB that the guest unpacks and probes at each
    boot under TCG: about 5 s of the kernel's part of a boot (tests/guestlib/README.md,
    "Machine facts")."""
    write_new_file(root / "etc/initramfs-tools/conf.d/vfs-agent-test.conf", "MODULES=list\n")
    modules = root / "etc/initramfs-tools/modules"
    listed = modules.read_text() if modules.exists() else ""
    write_new_file(modules, listed + "virtio_pci\nvirtio_blk\next4\n")


def _stamp_updated(root: Path) -> None:
    """/etc/.updated and /var/.updated, as systemd-update-done writes them after a first boot:
    without them every boot of a fresh overlay runs ldconfig, systemd-sysusers, the journal
    catalog update and systemd-update-done (ConditionNeedsUpdate=), 3.6 s of the boot's
    critical chain under TCG. The tree is built with every package configured and every
    package's users created, so nothing is left for them to do."""
    stamp = (
        "# Written by the vfs-agent test harness in place of systemd-update-done.\n"
        f"TIMESTAMP_NSEC={time.time_ns()}\n"
    )
    for directory in ("etc", "var"):
        write_new_file(root / directory / ".updated", stamp)


def _configure(root: Path) -> None:
    """Settings every guest shares: identity, fstab, a locked root, no serial getty."""
    write_new_file(root / "etc/hostname", HOSTNAME + "\n")
    write_new_file(root / "etc/hosts", f"127.0.0.1 localhost\n127.0.1.1 {HOSTNAME}\n")
    write_new_file(root / "etc/fstab", "/dev/vda / ext4 rw,errors=remount-ro 0 1\n")
    # A fixed machine-id: no first-boot logic (systemd-firstboot would prompt on the console).
    write_new_file(root / "etc/machine-id", "5f1e0c0a7a6b4c1e9d2f3a4b5c6d7e8f\n", 0o444)
    shadow = root / "etc/shadow"
    lines = shadow.read_text().splitlines()
    fields = [line.split(":") for line in lines]
    for entry in fields:
        if entry[0] == "root":
            entry[1] = "*"  # locked: the harness talks to the guest over its own channel
    write_new_file(shadow, "\n".join(":".join(f) for f in fields) + "\n", 0o640)
    os.chown(shadow, 0, _gid(root, "shadow"))
    for unit in ("serial-getty@ttyS0.service", "systemd-firstboot.service"):
        new_symlink(root / "etc/systemd/system" / unit, "/dev/null")
    # No network in the guest: do not let anything wait for it.
    new_symlink(root / "etc/systemd/system/systemd-networkd-wait-online.service", "/dev/null")
    _stamp_updated(root)


def _gid(root: Path, group: str) -> int:
    for line in (root / "etc/group").read_text().splitlines():
        parts = line.split(":")
        if parts[0] == group:
            return int(parts[2])
    return 0


def _find_kernel(root: Path) -> tuple[Path, Path, str]:
    kernels = sorted((root / "boot").glob("vmlinuz-*"))
    if not kernels:
        raise HarnessError(f"no kernel in {root / 'boot'}")
    kernel = kernels[-1]
    version = kernel.name.removeprefix("vmlinuz-")
    initrd = root / "boot" / f"initrd.img-{version}"
    if not initrd.exists():
        raise HarnessError(f"no initramfs for {version} in {root / 'boot'}")
    return kernel, initrd, version


def fetch_wheels(recipe: Recipe) -> Path:
    """A directory of wheels for the recipe's pip requirements and their dependencies, built
    for the guest's python3 by the host's pip (`pip download`), cached by the requirement list.
    """
    key = sha256_parts(
        ["pip-download", recipe.python_version, *WHEEL_PLATFORMS, "--", *recipe.pip_requirements]
    )[:16]
    base = cache_dir() / "wheelhouse"
    dest = base / key
    if (dest / "requirements.txt").exists():
        progress(f"wheels cached: {dest}")
        dest.touch()
        return dest
    t0 = time.monotonic()
    progress(f"fetching wheels for python {recipe.python_version}: {recipe.pip_requirements}")
    tmp = base / f"{key}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    platforms = [arg for p in WHEEL_PLATFORMS for arg in ("--platform", p)]
    run_host(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--disable-pip-version-check",
            "--only-binary=:all:",
            "--implementation=cp",
            f"--python-version={recipe.python_version}",
            *platforms,
            "--dest",
            tmp,
            *recipe.pip_requirements,
        ]
    )
    (tmp / "requirements.txt").write_text("".join(f"{r}\n" for r in recipe.pip_requirements))
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    names = sorted(p.name for p in dest.glob("*.whl"))
    progress(f"wheels fetched in {time.monotonic() - t0:.0f}s: {', '.join(names)}")
    houses = sorted(base.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in houses[KEEP_WHEELHOUSES:]:
        shutil.rmtree(old, ignore_errors=True)
    return dest


def _install_wheels(tree: Path, recipe: Recipe, log: Path) -> None:
    """pip install the recipe's requirements in the chroot, offline, from fetched wheels."""
    wheels = fetch_wheels(recipe)
    staged = tree / "tmp/wheelhouse"
    shutil.rmtree(staged, ignore_errors=True)
    shutil.copytree(wheels, staged)
    try:
        run_host(
            [
                "chroot",
                tree,
                "python3",
                "-m",
                "pip",
                "install",
                "--no-index",
                "--find-links=/tmp/wheelhouse",
                "--no-cache-dir",
                "--break-system-packages",
                "--root-user-action=ignore",
                "--disable-pip-version-check",
                *recipe.pip_requirements,
            ],
            log=log,
            env=chroot_env(),
        )
    finally:
        shutil.rmtree(staged, ignore_errors=True)


def _build(recipe: Recipe, dest: Path, log: Path) -> None:
    tmp = dest.with_name(dest.name + ".tmp")
    remove_tree(tmp)
    t0 = time.monotonic()
    packages = recipe.debootstrap_packages
    progress(f"debootstrap {recipe.suite} (minbase, {len(packages)} extra packages) ...")
    run_host(
        [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(packages)}",
            "--components=main",
            recipe.suite,
            tmp,
            recipe.mirror,
        ],
        log=log,
    )
    progress(f"debootstrap done in {time.monotonic() - t0:.0f}s")
    t1 = time.monotonic()
    progress(f"installing {' '.join(recipe.chroot_packages)} inside the chroot ...")
    policy = tmp / "usr/sbin/policy-rc.d"
    write_new_file(policy, "#!/bin/sh\nexit 101\n", 0o755)  # start no services in the chroot
    try:
        with chroot_mounts(tmp):
            chroot = ["chroot", str(tmp)]
            env = chroot_env()
            run_host([*chroot, "apt-get", "update", "-q"], log=log, env=env)
            run_host(
                [
                    *chroot,
                    "apt-get",
                    "install",
                    "-y",
                    "-q",
                    "--no-install-recommends",
                    *recipe.chroot_packages,
                ],
                log=log,
                env=env,
            )
            run_host([*chroot, "apt-get", "clean"], log=log, env=env)
            _small_initramfs(tmp)
            run_host([*chroot, "update-initramfs", "-u", "-k", "all"], log=log, env=env)
            if recipe.pip_requirements:
                _install_wheels(tmp, recipe, log)
    finally:
        policy.unlink(missing_ok=True)
        unmount_all_under(tmp)
    for lists in (tmp / "var/lib/apt/lists").glob("*_*"):
        lists.unlink()
    progress(f"kernel installed in {time.monotonic() - t1:.0f}s")
    _configure(tmp)
    _find_kernel(tmp)
    tmp.rename(dest)


def _suite_of(tree: Path) -> str | None:
    try:
        return str(json.loads(tree.with_suffix(".json").read_text())["suite"])
    except (OSError, ValueError, KeyError):
        return None  # unfinished: deleted with the others of any recipe


def _prune(keep: Path, recipe: Recipe) -> None:
    """Old base trees of this recipe's suite (the other recipes' trees are left alone)."""
    trees = sorted(
        (
            p
            for p in cache_dir().glob("rootfs-*")
            if p.is_dir() and p != keep and _suite_of(p) in (recipe.suite, None)
        ),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for old in trees[KEEP_ROOTFS - 1 :]:
        progress(f"removing old base tree {old}")
        remove_tree(old)
        old.with_suffix(".json").unlink(missing_ok=True)


def ensure_rootfs(recipe: Recipe = TRIXIE) -> Rootfs:
    """Return the recipe's cached base tree, building it first if the recipe changed."""
    key = recipe_key(recipe)
    dest = cache_dir() / f"rootfs-{key}"
    manifest = dest.with_suffix(".json")
    with build_lock():
        if dest.is_dir() and manifest.exists():
            progress(f"base tree cached: {dest}")
        else:
            t0 = time.monotonic()
            log = cache_dir() / f"rootfs-{key}.log"
            log.unlink(missing_ok=True)
            progress(f"building base tree {dest} (log: {log})")
            remove_tree(dest)
            _build(recipe, dest, log)
            kernel, initrd, version = _find_kernel(dest)
            manifest.write_text(
                json.dumps(
                    {
                        "key": key,
                        "recipe": recipe.name,
                        "suite": recipe.suite,
                        "debootstrap_packages": recipe.debootstrap_packages,
                        "chroot_packages": recipe.chroot_packages,
                        "pip_requirements": recipe.pip_requirements,
                        "kernel_version": version,
                        "build_seconds": round(time.monotonic() - t0, 1),
                    },
                    indent=2,
                )
            )
            progress(f"base tree built in {time.monotonic() - t0:.0f}s (kernel {version})")
            _prune(dest, recipe)
    kernel, initrd, version = _find_kernel(dest)
    return Rootfs(dest, key, kernel, initrd, version, recipe)


def hardlink_copy(src: Path, dest: Path) -> None:
    """`cp -al`: a copy that costs no space; replace files in it, never write them in place."""
    remove_tree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    run_host(["cp", "-al", src, dest])


__all__ = [
    "Rootfs",
    "chroot_env",
    "chroot_mounts",
    "ensure_rootfs",
    "fetch_wheels",
    "hardlink_copy",
    "remove_tree",
]
