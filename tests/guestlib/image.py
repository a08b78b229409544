"""The guest image: the cached base tree + the project's wheel + the harness's guest plumbing.

    python -m tests.guestlib.image [--project DIR] [--recipe trixie|bookworm]

builds (or finds in the cache) a raw ext4 root image with vfs-agent installed, plus the kernel
and Debian's initramfs next to it, and prints their paths. The image is keyed by the base
recipe, the wheel's content and the plumbing, so it is rebuilt only when one of them changed.
`ensure_image()` is the Debian 13 guest (kernel 6.12), `ensure_bookworm_image()` the Debian 12
one (kernel 6.1); both come from the same code, parameterized by a recipe (recipes.py).
Boots never write to it: every VM gets its own qcow2 overlay (see vm.py).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
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
from tests.guestlib.recipes import BOOKWORM, RECIPES, TRIXIE, Recipe
from tests.guestlib.rootfs import (
    build_lock,
    chroot_env,
    chroot_mounts,
    ensure_rootfs,
    hardlink_copy,
    remove_tree,
)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
GUEST_FILES = Path(__file__).resolve().parent / "guest"
GUEST_LIB = "usr/local/lib/vfs-agent-test"  # where the plumbing lives inside the guest
CHANNEL_UNIT = "vfs-agent-test-channel.service"
FREE_SPACE = 1536 << 20  # bytes left free in the root filesystem for the tests
KEEP_IMAGES = 3
PRUNE_AFTER = 3600  # seconds since an image was last used
KEEP_WHEELS = 5
# Not part of the wheel's input: never copied to the wheel build, never hashed.
_IGNORED = {
    ".git",
    ".venv",
    "build",
    "dist",
    "tests",
    "bench",
    "__pycache__",
    ".pytest_cache",
    ".mypy_cache",
    ".ruff_cache",
    ".hypothesis",
}


@dataclass(frozen=True)
class GuestImage:
    """A bootable image: raw ext4 root (never written), kernel and initramfs."""

    root: Path
    kernel: Path
    initrd: Path
    key: str
    kernel_version: str
    wheel: str
    recipe: str = TRIXIE.name


def _ignored(name: str) -> bool:
    return name in _IGNORED or name.endswith(".egg-info")


def _source_files(project: Path) -> list[Path]:
    """Files that can change the wheel, in a stable order."""
    found = []
    for path in sorted(project.rglob("*")):
        rel = path.relative_to(project)
        if any(_ignored(part) for part in rel.parts) or not path.is_file():
            continue
        found.append(rel)
    return found


def _source_key(project: Path) -> str:
    parts: list[bytes | str] = []
    for rel in _source_files(project):
        parts += [str(rel), (project / rel).read_bytes()]
    return sha256_parts(parts)[:16]


def wheel_digest(wheel: Path) -> str:
    """Hash of the wheel's members, not of the zip (timestamps inside vary between builds)."""
    with zipfile.ZipFile(wheel) as archive:
        names = sorted(archive.namelist())
        return sha256_parts(part for n in names for part in (n, archive.read(n)))[:16]


def build_wheel(project: Path) -> Path:
    """The project's wheel, built from a copy of its working tree; cached by source hash."""
    key = _source_key(project)
    outdir = cache_dir() / "wheels" / key
    wheels = sorted(outdir.glob("*.whl"))
    if wheels:
        progress(f"wheel cached: {wheels[0].name} (sources {key})")
        outdir.touch()  # recently used: kept by _prune
        return wheels[0]
    t0 = time.monotonic()
    progress(f"building the project's wheel from {project} ...")
    with tempfile.TemporaryDirectory(prefix="vfs-agent-wheel-") as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        for rel in _source_files(project):
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(project / rel, src / rel)
        out = Path(tmp) / "out"
        run_host([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", out, src])
        built = sorted(out.glob("*.whl"))
        if len(built) != 1:
            raise HarnessError(f"expected one wheel, got {built}")
        outdir.mkdir(parents=True, exist_ok=True)
        final = outdir / built[0].name
        shutil.copy2(built[0], final)
    progress(f"wheel {final.name} built in {time.monotonic() - t0:.0f}s")
    return final


def init_conf(recipe: Recipe) -> str:
    """The fast init's module settings for `recipe` (sourced by guest/init)."""
    return (
        f"# Written by tests/guestlib/image.py from the {recipe.name} recipe; read by ./init.\n"
        "# FAST_MODULES: loaded by name first. FAST_NOLOAD: never loaded by the init.\n"
        f"FAST_MODULES='{' '.join(recipe.fast_modules)}'\n"
        f"FAST_NOLOAD='{' '.join(recipe.fast_noload)}'\n"
    )


def plumbing_files(recipe: Recipe = TRIXIE) -> dict[str, tuple[bytes, int]]:
    """Guest path (relative to /) -> (content, mode) of the harness's own guest files."""
    return {
        f"{GUEST_LIB}/guest_server.py": ((GUEST_FILES / "guest_server.py").read_bytes(), 0o755),
        f"{GUEST_LIB}/init": ((GUEST_FILES / "init").read_bytes(), 0o755),
        f"{GUEST_LIB}/init.conf": (init_conf(recipe).encode(), 0o644),
        f"etc/systemd/system/{CHANNEL_UNIT}": ((GUEST_FILES / CHANNEL_UNIT).read_bytes(), 0o644),
    }


def _image_key(base_key: str, wheel_key: str, recipe: Recipe) -> str:
    parts: list[bytes | str] = [base_key, wheel_key, Path(__file__).read_bytes()]
    for path, (content, mode) in sorted(plumbing_files(recipe).items()):
        parts += [path, content, str(mode)]
    return sha256_parts(parts)[:16]


def _install_layer(tree: Path, wheel: Path, recipe: Recipe, log: Path) -> None:
    """Install the wheel offline inside the tree and add the plumbing."""
    staged = tree / "tmp" / wheel.name
    shutil.copy2(wheel, staged)
    try:
        with chroot_mounts(tree):
            chroot = ["chroot", str(tree)]
            run_host(
                [
                    *chroot,
                    "python3",
                    "-m",
                    "pip",
                    "install",
                    "--no-deps",
                    "--no-index",
                    "--no-cache-dir",
                    "--break-system-packages",
                    "--root-user-action=ignore",
                    "--disable-pip-version-check",
                    f"/tmp/{wheel.name}",
                ],
                log=log,
                env=chroot_env(),
            )
            run_host(
                # The CLI imports click; the policy loader YAML and pydantic (commands import
                # them only when they run, so name both).
                [
                    *chroot,
                    "python3",
                    "-c",
                    "import vfs_agent.commands.cli, vfs_agent.policy.load;"
                    " print(vfs_agent.__version__)",
                ],
                log=log,
                env=chroot_env(),
            )
    finally:
        staged.unlink(missing_ok=True)
    for rel, (content, mode) in plumbing_files(recipe).items():
        write_new_file(tree / rel, content, mode)
    new_symlink(
        tree / "etc/systemd/system/multi-user.target.wants" / CHANNEL_UNIT,
        f"/etc/systemd/system/{CHANNEL_UNIT}",
    )


def _tree_bytes(tree: Path) -> int:
    out = subprocess.run(
        ["du", "-s", "-x", "--block-size=1", str(tree)], capture_output=True, text=True, check=True
    )
    return int(out.stdout.split()[0])


def make_ext4(tree: Path, image: Path, log: Path) -> None:
    size = _tree_bytes(tree) + FREE_SPACE
    size = (size + (256 << 20) - 1) // (256 << 20) * (256 << 20)
    image.unlink(missing_ok=True)
    with image.open("wb") as handle:
        handle.truncate(size)  # sparse
    run_host(["mkfs.ext4", "-q", "-F", "-L", "vfs-root", "-d", tree, image], log=log)


def image_dir_name(recipe: Recipe, key: str) -> str:
    """image-<key> for Debian 13 (as before recipes), image-<recipe>-<key> for the others."""
    return f"image-{key}" if recipe == TRIXIE else f"image-{recipe.name}-{key}"


def _prune(keep: Path) -> None:
    """Per kind of image (image-<key>, image-deb-<key>, image-bookworm-<key>): the newest
    KEEP_IMAGES, and older ones only when unused for PRUNE_AFTER."""
    groups: dict[str, list[Path]] = {}
    for path in cache_dir().glob("image-*"):
        if path.is_dir() and path != keep and not path.name.endswith(".tmp"):
            groups.setdefault(path.name.rsplit("-", 1)[0], []).append(path)
    kept = keep.name.rsplit("-", 1)[0]
    for group, paths in groups.items():
        paths.sort(key=lambda p: p.stat().st_mtime, reverse=True)
        for old in paths[KEEP_IMAGES - (1 if group == kept else 0) :]:
            if time.time() - old.stat().st_mtime < PRUNE_AFTER:
                continue  # maybe still booted by another harness process (retries, overlays)
            progress(f"removing old image {old}")
            shutil.rmtree(old, ignore_errors=True)
    wheels = sorted(
        (p for p in (cache_dir() / "wheels").iterdir() if p.is_dir()),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for old in wheels[KEEP_WHEELS:]:
        shutil.rmtree(old, ignore_errors=True)


def ensure_image(project: Path = PROJECT_ROOT, recipe: Recipe = TRIXIE) -> GuestImage:
    """Return the guest image of `recipe` (default: Debian 13) for `project`'s working tree,
    building what is missing."""
    t0 = time.monotonic()
    base = ensure_rootfs(recipe)
    wheel = build_wheel(project)
    key = _image_key(base.key, wheel_digest(wheel), recipe)
    dest = cache_dir() / image_dir_name(recipe, key)
    manifest = dest / "manifest.json"
    with build_lock():
        if manifest.exists():
            progress(f"image cached: {dest}")
        else:
            progress(f"building image {dest} ({wheel.name} on base {base.key})")
            tmp = dest.with_name(dest.name + ".tmp")
            tree = cache_dir() / f"layer-{key}"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            log = tmp / "build.log"  # moves with the image, goes when it is pruned
            try:
                hardlink_copy(base.path, tree)
                _install_layer(tree, wheel, recipe, log)
                progress("writing the ext4 image (mkfs.ext4 -d) ...")
                make_ext4(tree, tmp / "root.img", log)
            finally:
                remove_tree(tree)
            shutil.copy2(base.kernel, tmp / "vmlinuz")
            shutil.copy2(base.initrd, tmp / "initrd.img")
            (tmp / "manifest.json").write_text(
                json.dumps(
                    {
                        "key": key,
                        "recipe": recipe.name,
                        "base": base.key,
                        "wheel": wheel.name,
                        "kernel_version": base.kernel_version,
                        "build_seconds": round(time.monotonic() - t0, 1),
                    },
                    indent=2,
                )
            )
            tmp.rename(dest)
            progress(f"image built in {time.monotonic() - t0:.0f}s")
            _prune(dest)
        dest.touch()  # most recently used: kept by _prune
    meta = json.loads(manifest.read_text())
    return GuestImage(
        root=dest / "root.img",
        kernel=dest / "vmlinuz",
        initrd=dest / "initrd.img",
        key=key,
        kernel_version=meta["kernel_version"],
        wheel=meta["wheel"],
        recipe=recipe.name,
    )


def ensure_bookworm_image(project: Path = PROJECT_ROOT) -> GuestImage:
    """The Debian 12 guest (kernel 6.1, virtiofs and fuse as modules, no /sys/fs/virtiofs)."""
    return ensure_image(project, BOOKWORM)


def main() -> None:
    parser = argparse.ArgumentParser(description="Build or find the vfs-agent guest image.")
    parser.add_argument("--project", type=Path, default=PROJECT_ROOT, help="working tree")
    parser.add_argument(
        "--recipe", choices=sorted(RECIPES), default=TRIXIE.name, help="guest kind (recipes.py)"
    )
    args = parser.parse_args()
    t0 = time.monotonic()
    image = ensure_image(args.project.resolve(), RECIPES[args.recipe])
    progress(f"ready in {time.monotonic() - t0:.1f}s")
    print(f"root    {image.root}\nkernel  {image.kernel} ({image.kernel_version})")
    print(f"initrd  {image.initrd}\nwheel   {image.wheel}")


if __name__ == "__main__":
    main()
