"""A guest image with the project installed from its .deb by apt instead of pip.

The systemd and cloud-init tests run against it, as users of the package would: `apt-get
install ./vfs-agent_*.deb` in the chroot of a recipe's base tree (Debian 13, or Debian 12 with
its own pydantic 1.10). The base trees already hold the packages the .deb depends on, so apt
has nothing to download, but it checks every Depends: a floor the release does not meet fails
here (apt would look for a newer package in the release's archive and find none).
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import subprocess
import time
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
from tests.guestlib.image import CHANNEL_UNIT, PROJECT_ROOT, GuestImage, make_ext4, plumbing_files
from tests.guestlib.recipes import TRIXIE, Recipe
from tests.guestlib.rootfs import (
    build_lock,
    chroot_env,
    chroot_mounts,
    ensure_rootfs,
    hardlink_copy,
    remove_tree,
)


def build_deb(out: Path, project: Path = PROJECT_ROOT) -> Path:
    """packaging/build-deb.sh into `out`; returns the .deb."""
    done = subprocess.run(
        [str(project / "packaging/build-deb.sh"), str(out)], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise HarnessError(f"packaging/build-deb.sh failed:\n{done.stderr}")
    return Path(done.stdout.split()[-1])


def _break_hardlinks(directory: Path) -> None:
    """dpkg appends to its log and rewrites its database; in a `cp -al` tree those files are
    shared with the cached base tree, so give each one its own inode first."""
    for path in directory.rglob("*"):
        if path.is_file() and not path.is_symlink() and path.stat().st_nlink > 1:
            copy = path.with_name(path.name + ".unshare")
            shutil.copy2(path, copy)
            os.replace(copy, path)


def _install_deb(tree: Path, deb: Path, recipe: Recipe, log: Path) -> None:
    """`apt-get install ./the.deb` in the tree (the base tree holds the dependencies, so apt
    only checks their versions; with `--no-download` apt 2.6 refuses a local .deb); then the
    harness's command channel, as image.py does."""
    for directory in ("var/lib/dpkg", "var/lib/apt", "var/cache/apt", "var/log", "var/lib/systemd"):
        _break_hardlinks(tree / directory)
    staged = tree / "tmp" / deb.name
    shutil.copy2(deb, staged)
    apt = ["apt-get", "install", "-y", "--no-install-recommends"]
    try:
        with chroot_mounts(tree):
            chroot = ["chroot", str(tree)]
            run_host([*chroot, *apt, f"/tmp/{deb.name}"], log=log, env=chroot_env())
            run_host([*chroot, "vfs-agent", "--version"], log=log, env=chroot_env())
    finally:
        staged.unlink(missing_ok=True)
    for rel, (content, mode) in plumbing_files(recipe).items():
        write_new_file(tree / rel, content, mode)
    new_symlink(
        tree / "etc/systemd/system/multi-user.target.wants" / CHANNEL_UNIT,
        f"/etc/systemd/system/{CHANNEL_UNIT}",
    )


def ensure_deb_image(deb: Path, recipe: Recipe = TRIXIE) -> GuestImage:
    """The recipe's base tree + this .deb (apt) + the plumbing, as a raw ext4 image; cached by
    the base recipe, the .deb's bytes (its build is reproducible) and this recipe."""
    base = ensure_rootfs(recipe)
    parts: list[bytes | str] = [base.key, deb.read_bytes(), inspect.getsource(_install_deb)]
    for path, (content, mode) in sorted(plumbing_files(recipe).items()):
        parts += [path, content, str(mode)]
    key = sha256_parts(parts)[:16]
    kind = "image-deb" if recipe == TRIXIE else f"image-deb-{recipe.name}"
    dest = cache_dir() / f"{kind}-{key}"
    with build_lock():
        if not (dest / "manifest.json").exists():
            t0 = time.monotonic()
            progress(f"building image {dest} ({deb.name} on base {base.key})")
            tmp = dest.with_name(dest.name + ".tmp")
            tree = cache_dir() / f"layer-deb-{key}"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            log = tmp / "build.log"
            try:
                hardlink_copy(base.path, tree)
                _install_deb(tree, deb, recipe, log)
                make_ext4(tree, tmp / "root.img", log)
            finally:
                remove_tree(tree)
            shutil.copy2(base.kernel, tmp / "vmlinuz")
            shutil.copy2(base.initrd, tmp / "initrd.img")
            manifest = {
                "key": key,
                "deb": deb.name,
                "recipe": recipe.name,
                "kernel_version": base.kernel_version,
            }
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
            tmp.rename(dest)
            progress(f"image with the .deb built in {time.monotonic() - t0:.0f}s")
        dest.touch()  # recently used: image.py's pruning keeps it
    return GuestImage(
        root=dest / "root.img",
        kernel=dest / "vmlinuz",
        initrd=dest / "initrd.img",
        key=key,
        kernel_version=base.kernel_version,
        wheel=f"(deb) {deb.name}",
        recipe=recipe.name,
    )
