"""Fixtures for real-guest tests: the image, a per-run log directory, and guest boots.

Guest tests never skip: when this machine cannot boot guests they fail with the reason, so a
CI run cannot pass with zero guest tests. One guest at a time per pytest process; `make test`
runs two processes (pytest-xdist workers), each module whole in one of them.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Callable, Generator, Iterator
from pathlib import Path

import pytest

from tests.guestlib import vm as vmlib
from tests.guestlib.common import HarnessError, progress
from tests.guestlib.deb_image import build_deb, ensure_deb_image
from tests.guestlib.image import GuestImage, ensure_bookworm_image, ensure_image
from tests.guestlib.processes import stop_all
from tests.guestlib.recipes import BOOKWORM, TRIXIE, Recipe
from tests.guestlib.virtiofsd import virtiofsd_binary
from tests.guestlib.vm import VM, VMConfig, new_run_dir

HERE = Path(__file__).resolve().parent
BootGuest = Callable[..., VM]  # boot(config, image=None): None is the pip-installed image
_IMAGES: dict[str, GuestImage] = {}  # built (or found) once per session


def slow_to_stop(mount_unit: str, seconds: int = 8) -> str:
    """A service bound to `mount_unit` that takes `seconds` to stop: that mount's stop job waits
    for it, as it waits for every service that uses a share."""
    return (
        f"[Unit]\nDescription=Test service that uses {mount_unit} and takes {seconds} s to stop\n"
        f"BindsTo={mount_unit}\nAfter={mount_unit}\n\n"
        "[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/bin/true\n"
        f"ExecStop=/bin/sleep {seconds}\n"
    )


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_collection_modifyitems(
    config: pytest.Config, items: list[pytest.Item]
) -> Generator[None, None, None]:
    """Everything under tests/guest/ is a guest test, marked or not. Guest tests run after the
    unit tests, in the order they are written in, while the unit tests run in a random one
    (pytest-randomly, whose shuffle this wraps): the tests of a module share one booted guest,
    which pytest tears down as soon as a test of another module runs, and a later test may
    build on what an earlier one did in it."""
    written = [item for item in items if HERE in Path(str(item.path)).resolve().parents]
    for item in written:
        item.add_marker(pytest.mark.guest)
    result = yield
    kept = set(items)  # -k and -m deselect inside the yield
    ours = set(written)
    items[:] = [item for item in items if item not in ours] + [
        item for item in written if item in kept
    ]
    return result


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, None]:
    """On failure, show the serial console of every guest still running, and keep its journal
    (the boot's whole journal goes to a file in the guest's log directory; its tail is shown)."""
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for guest in vmlib.ACTIVE:
            report.sections.append(
                (
                    f"serial log tail of {guest.config.name} ({guest.serial_log})",
                    guest.serial_tail(80),
                )
            )
            name = re.sub(r"[^A-Za-z0-9_.-]", "_", item.name)[:150]
            saved = guest.dir / f"journal-{name}.txt"
            report.sections.append(
                (f"journal tail of {guest.config.name} ({saved})", _journal(guest, saved))
            )


def _journal(guest: VM, saved: Path, lines: int = 120) -> str:
    """The guest's journal of this boot, written to `saved`; its last `lines` lines."""
    try:
        result = guest.run("journalctl -b --no-pager -o short-monotonic", timeout=60)
    except (HarnessError, OSError) as exc:
        return f"(no journal: {exc})"
    if not result.ok:  # a fast guest runs no journald
        return f"(no journal: {result})"
    saved.write_text(result.stdout)
    return "\n".join(result.stdout.splitlines()[-lines:])


def _preflight() -> list[str]:
    """Why this machine cannot boot test guests (empty when it can)."""
    problems = []
    if os.geteuid() != 0:
        problems.append("guest tests need root (debootstrap, chroot, virtiofsd)")
    for tool in ("qemu-system-x86_64", "qemu-img", "debootstrap", "mkfs.ext4", "chroot"):
        if shutil.which(tool) is None:
            problems.append(f"{tool} not found (run `make setup`)")
    try:
        virtiofsd_binary()
    except HarnessError as exc:
        problems.append(str(exc))
    return problems


def _image(label: str, build: Callable[[], GuestImage]) -> GuestImage:
    """Build (or find in the cache) an image once per session; fail with the reason."""
    if label in _IMAGES:
        return _IMAGES[label]
    problems = _preflight()
    if problems:
        pytest.fail("cannot boot test guests:\n  " + "\n  ".join(problems), pytrace=False)
    started = time.monotonic()
    try:
        image = build()
    except (HarnessError, OSError) as exc:
        pytest.fail(f"building the {label} failed:\n{exc}", pytrace=False)
    vmlib.NOTES.append(
        f"{label} {image.key} (kernel {image.kernel_version}): "
        f"ready in {time.monotonic() - started:.1f}s"
    )
    _IMAGES[label] = image
    return image


@pytest.fixture(scope="session")
def guest_image() -> GuestImage:
    """The Debian 13 guest image for this working tree (built or taken from the cache)."""
    return _image("guest image", ensure_image)


@pytest.fixture(scope="session")
def bookworm_image() -> GuestImage:
    """The Debian 12 guest image (kernel 6.1: virtiofs, fuse and virtio_pci are modules, no
    /sys/fs/virtiofs), built from the same code with the bookworm recipe. Boot it with
    boot_guest(config, bookworm_image)."""
    return _image("bookworm image", ensure_bookworm_image)


@pytest.fixture(scope="session")
def deb_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's .deb, built once per session from this tree (packaging/build-deb.sh)."""
    try:
        return build_deb(tmp_path_factory.mktemp("deb"))
    except (HarnessError, OSError) as exc:
        pytest.fail(f"building the .deb failed:\n{exc}", pytrace=False)


def _deb_image(deb: Path, recipe: Recipe) -> GuestImage:
    started = time.monotonic()
    try:
        image = ensure_deb_image(deb, recipe)
    except (HarnessError, OSError) as exc:
        pytest.fail(f"building the {recipe.name} image with the .deb failed:\n{exc}", pytrace=False)
    vmlib.NOTES.append(
        f"deb image {recipe.name} {image.key}: ready in {time.monotonic() - started:.1f}s"
    )
    return image


@pytest.fixture(scope="session")
def deb_image(guest_image: GuestImage, deb_package: Path) -> GuestImage:
    """The Debian 13 image with the project's .deb installed by apt (built from this tree).
    guest_image first: its preflight says why this machine cannot boot guests, if so."""
    return _deb_image(deb_package, TRIXIE)


@pytest.fixture(scope="session")
def deb_bookworm_image(bookworm_image: GuestImage, deb_package: Path) -> GuestImage:
    """The Debian 12 base tree (Debian 12's own packages, pydantic 1.10.4) with the .deb
    installed by apt. bookworm_image first, for its preflight."""
    return _deb_image(deb_package, BOOKWORM)


@pytest.fixture(scope="session")
def guest_run_dir() -> Path:
    """Logs of this pytest run's guests (serial consoles, qemu and virtiofsd output)."""
    path = new_run_dir("pytest")
    vmlib.NOTES.append(f"guest logs: {path}")
    return path


@pytest.fixture(scope="session")
def boot_guest(guest_run_dir: Path) -> Iterator[BootGuest]:
    """boot_guest(VMConfig(...), image=None) -> a booted VM (None: the Debian 13 image, built
    on first use). The caller shuts it down; anything left running is killed when the session
    ends."""
    started: list[VM] = []

    def boot(config: VMConfig, image: GuestImage | None = None) -> VM:
        # A module whose fixture failed after its boot never reached its own shutdown: its
        # guest is stopped here, so the failure stays that module's.
        for orphan in [g for g in started if g.alive()]:
            progress(f"{orphan.config.name}: left running by a failed set-up; killing it")
            orphan.kill()
        running = [g.config.name for g in vmlib.ACTIVE if g.alive()]
        if running:
            raise HarnessError(f"refusing to boot {config.name}: {running} still running")
        try:
            guest = VM.boot(image or _image("guest image", ensure_image), config, guest_run_dir)
        except HarnessError as exc:
            pytest.fail(f"guest {config.name} did not boot:\n{exc}", pytrace=False)
        started.append(guest)
        return guest

    yield boot
    for guest in started:
        guest.kill()
    stop_all()
