"""The .deb and the cloud-init hook in a real guest.

The image is the harness's Debian 13 base tree with the project's .deb installed by dpkg,
offline (the base already holds every dependency), instead of the pip-installed wheel of the
default image. Each boot is a full systemd boot with cloud-init enabled and a NoCloud seed: a
'cidata' ISO 9660 volume (genisoimage, on the host) attached as a virtio disk. Its user-data
carries `vfs_agent:`; runcmd records `findmnt` when cloud-init's final stage runs it.

Run as root, alone (one guest at a time; about 3 minutes, plus about 1 minute the first time
for the image):

    .venv/bin/pytest -v tests/guest/test_cloud_init_and_deb.py
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

from tests.guestlib import vm as vmlib
from tests.guestlib.common import (
    HarnessError,
    run_host,
)
from tests.guestlib.image import GuestImage
from tests.guestlib.qemu import Disk
from tests.guestlib.vm import VM, VMConfig

pytestmark = pytest.mark.guest

REPO = Path(__file__).resolve().parents[2]
SHARES = {"ci_media": "media", "ci_data": "data", "not_named": "other"}
RUNCMD_OUT = "/root/runcmd-findmnt.json"
RUNCMD = (
    "runcmd:\n"
    f'  - "findmnt --json --list -o SOURCE,TARGET,OPTIONS -t virtiofs > {RUNCMD_OUT}'
    f" || echo '{{}}' > {RUNCMD_OUT}\"\n"
)
GOOD_USER_DATA = (
    "#cloud-config\n"
    "vfs_agent:\n"
    "  version: 1\n"
    "  mounts:\n"
    "    - tag: ci_media\n"
    "      path: /mnt/ci-media\n"
    "      options: [ro]\n"
    "    - tag: ci_data\n"
    "      path: /srv/ci-data\n"
    "      required: true\n" + RUNCMD
)
BROKEN_USER_DATA = (
    "#cloud-config\n"
    "vfs_agent:\n"
    "  version: 1\n"
    "  mounts:\n"
    "    - tag: ci_media\n"
    "      path: relative/oops\n" + RUNCMD
)
# `cloud-init apply`'s message for BROKEN_USER_DATA: line 6, column 13 of the user-data.
BROKEN_MESSAGE = "cloud-config vfs_agent:6:13: mounts[0].path: path 'relative/oops' is not absolute"
DROPIN = "/etc/vfs-agent/policy.d/50-cloud-init.yaml"
# The schema-clean way: cloud-init's own write_files puts the policy into policy.d.
WRITTEN = "/etc/vfs-agent/policy.d/60-shares.yaml"


def write_files_user_data(policy: str) -> str:
    content = "".join(f"      {line}\n" for line in policy.splitlines())
    return (
        "#cloud-config\n"
        "write_files:\n"
        f"  - path: {WRITTEN}\n"
        "    owner: root:root\n"
        "    permissions: '0644'\n"
        "    content: |\n" + content + RUNCMD
    )


WRITE_FILES_POLICY = """\
version: 1
mounts:
  - tag: ci_media
    path: /mnt/ci-media
    options: [ro]
  - tag: ci_data
    path: /srv/ci-data
    required: true
"""
WRITE_FILES_BROKEN = "version: 1\nmounts:\n  - tag: ci_media\n    path: relative/oops\n"


# -- the image with the .deb installed -------------------------------------------------------------


# -- boots with a NoCloud seed ---------------------------------------------------------------------


def make_seed(directory: Path, user_data: str, instance: str) -> Path:
    """A NoCloud 'cidata' ISO 9660 volume with user-data and meta-data."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "user-data").write_text(user_data)
    (directory / "meta-data").write_text(
        f"instance-id: iid-{instance}\nlocal-hostname: vfs-agent-guest\n"
    )
    seed = directory / "seed.iso"
    files = [directory / "user-data", directory / "meta-data"]
    run_host(
        ["genisoimage", "-quiet", "-output", seed, "-volid", "cidata", "-joliet", "-rock", *files]
    )
    return seed


@pytest.fixture(scope="module")
def share_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cloud-init-shares")
    dirs = {tag: root / name for tag, name in SHARES.items()}
    for tag, path in dirs.items():
        path.mkdir()
        (path / "hello.txt").write_text(f"share {tag}\n")
    return dirs


def boot_with_seed(
    image: GuestImage, run_dir: Path, shares: dict[str, Path], user_data: str, name: str
) -> VM:
    running = [g.config.name for g in vmlib.ACTIVE if g.alive()]
    if running:
        pytest.fail(f"refusing to boot {name}: {running} still running", pytrace=False)
    seed = make_seed(run_dir / f"{name}-seed", user_data, name)
    config = VMConfig(
        mode="systemd",
        name=name,
        cloud_init=True,
        shares=list(shares.items()),
        extra_disks=[Disk(seed, format="raw", readonly=True)],
    )
    try:
        guest = VM.boot(image, config, run_dir)
    except HarnessError as exc:
        pytest.fail(f"guest {name} did not boot:\n{exc}", pytrace=False)
    return guest


class Booted(NamedTuple):
    vm: VM
    state: str  # what `systemctl is-system-running --wait` said
    cloud_init_rc: int  # exit status of `cloud-init status --wait`


def booted(
    image: GuestImage, run_dir: Path, shares: dict[str, Path], user_data: str, name: str
) -> Iterator[Booted]:
    """Boot, wait for the boot and for cloud-init's final stage, shut down afterwards."""
    guest = boot_with_seed(image, run_dir, shares, user_data, name)
    try:
        state = guest.wait_system_running(timeout=300)
        status = guest.run(["cloud-init", "status", "--wait", "--long"], timeout=300)
        yield Booted(guest, state, status.rc)
    finally:
        guest.shutdown()


def no_failed_units_of_ours(guest: VM) -> None:
    failed = guest.run(["systemctl", "--failed", "--plain", "--no-legend"]).stdout
    ours = [line for line in failed.splitlines() if "vfs-agent" in line or ".mount" in line]
    assert not ours, failed


def unit_property(guest: VM, unit: str, prop: str) -> str:
    return guest.run(["systemctl", "show", "--value", "-p", prop, unit], check=True).stdout.strip()


def runcmd_mounts(guest: VM) -> dict[str, tuple[str, str]]:
    """tag -> (target, options) as findmnt saw them when runcmd ran."""
    data = json.loads(guest.get_file(RUNCMD_OUT))
    return {r["source"]: (r["target"], r["options"]) for r in data.get("filesystems", [])}


def journal(guest: VM, unit: str) -> str:
    return guest.run(["journalctl", "-b", "-o", "cat", "-u", unit], check=True).stdout


# -- a valid vfs_agent key -------------------------------------------------------------------------


class TestValidUserData:
    @pytest.fixture(scope="class")
    @classmethod
    def boot(
        cls, deb_image: GuestImage, guest_run_dir: Path, share_dirs: dict[str, Path]
    ) -> Iterator[Booted]:
        yield from booted(deb_image, guest_run_dir, share_dirs, GOOD_USER_DATA, "ci-good")

    @pytest.fixture
    def guest(self, boot: Booted) -> VM:
        return boot.vm

    def test_the_deb_is_what_runs(self, guest: VM) -> None:
        status = guest.run(["dpkg-query", "-W", "-f=${Status} ${Version}", "vfs-agent"])
        assert status.stdout.startswith("install ok installed "), str(status)
        assert guest.run("command -v vfs-agent").stdout.strip() == "/usr/bin/vfs-agent"
        where = guest.run(["python3", "-c", "import vfs_agent; print(vfs_agent.__file__)"])
        assert where.stdout.startswith("/usr/lib/python3/dist-packages/vfs_agent/")
        assert guest.run("ls /usr/local/bin/vfs-agent").rc != 0  # no pip install in this image
        enabled = guest.run(
            ["systemctl", "is-enabled", "vfs-agent.service", "vfs-agent-cloud-init.service"]
        )
        assert enabled.stdout.split() == ["enabled", "enabled"], str(enabled)

    def test_named_shares_were_mounted_when_runcmd_ran(self, guest: VM) -> None:
        seen = runcmd_mounts(guest)
        assert set(seen) == {"ci_media", "ci_data", "not_named"}
        # No rule names not_named: the zero-config default mounts it under mount_root.
        assert seen["not_named"][0] == "/mnt/virtiofs/not_named"
        assert {"nosuid", "nodev"} <= set(seen["not_named"][1].split(","))
        assert seen["ci_media"][0] == "/mnt/ci-media"
        assert "ro" in seen["ci_media"][1].split(",")
        assert seen["ci_data"][0] == "/srv/ci-data"
        assert guest.run("cat /mnt/ci-media/hello.txt", check=True).stdout == "share ci_media\n"

    def test_the_hook_ran_between_cloud_config_and_cloud_final(self, guest: VM) -> None:
        hook = "vfs-agent-cloud-init.service"
        assert unit_property(guest, hook, "Result") == "success"
        started = int(unit_property(guest, hook, "ExecMainStartTimestampMonotonic"))
        done = int(unit_property(guest, hook, "ActiveEnterTimestampMonotonic"))
        config_done = int(
            unit_property(guest, "cloud-config.service", "ActiveEnterTimestampMonotonic")
        )
        final_started = int(
            unit_property(guest, "cloud-final.service", "ExecMainStartTimestampMonotonic")
        )
        assert 0 < config_done <= started <= done <= final_started

    def test_the_dropin_and_the_logs(self, guest: VM) -> None:
        stat = guest.run(["stat", "-c", "%U %a", DROPIN, os.path.dirname(DROPIN)], check=True)
        assert stat.stdout.split("\n")[:2] == ["root 644", "root 755"]
        check = guest.run(["vfs-agent", "policy", "check", DROPIN])
        assert check.rc == 0, str(check)
        text = journal(guest, "vfs-agent-cloud-init.service")
        assert f"wrote {DROPIN} from the cloud-config vfs_agent key" in text
        output_log = guest.get_file("/var/log/cloud-init-output.log").decode(errors="replace")
        assert f"vfs-agent: wrote {DROPIN}" in output_log

    def test_systemd_owns_the_mounts_from_the_first_boot(self, guest: VM) -> None:
        """The hook's daemon-reload made the generator write units for the drop-in."""
        for path in ("/mnt/ci-media", "/srv/ci-data"):
            unit = guest.run(["systemd-escape", "--path", "--suffix=mount", path], check=True)
            name = unit.stdout.strip()
            assert unit_property(guest, name, "ActiveState") == "active"
            assert unit_property(guest, name, "FragmentPath").startswith("/run/systemd/generator")

    def test_the_boot_finished(self, boot: Booted) -> None:
        assert boot.state in ("running", "degraded")
        no_failed_units_of_ours(boot.vm)


# -- a broken vfs_agent key ------------------------------------------------------------------------


class TestBrokenUserData:
    @pytest.fixture(scope="class")
    @classmethod
    def boot(
        cls, deb_image: GuestImage, guest_run_dir: Path, share_dirs: dict[str, Path]
    ) -> Iterator[Booted]:
        yield from booted(deb_image, guest_run_dir, share_dirs, BROKEN_USER_DATA, "ci-broken")

    @pytest.fixture
    def guest(self, boot: Booted) -> VM:
        return boot.vm

    def test_the_boot_goes_on(self, boot: Booted, guest: VM) -> None:
        assert boot.state in ("running", "degraded")
        no_failed_units_of_ours(guest)
        hook = "vfs-agent-cloud-init.service"
        assert unit_property(guest, hook, "Result") == "success"  # exit 0 by design
        assert unit_property(guest, "cloud-final.service", "Result") == "success"
        # runcmd ran; the broken drop-in was never applied: whatever was mounted by then is
        # where the zero-config default puts it, and every share ends up there.
        seen = runcmd_mounts(guest)
        assert all(target == f"/mnt/virtiofs/{tag}" for tag, (target, _) in seen.items()), seen
        now = guest.run("findmnt --json --list -o SOURCE,TARGET -t virtiofs", check=True).stdout
        targets = {r["source"]: r["target"] for r in json.loads(now)["filesystems"]}
        assert targets == {tag: f"/mnt/virtiofs/{tag}" for tag in SHARES}

    def test_a_clear_error_in_the_journal_and_cloud_init_output_log(self, guest: VM) -> None:
        text = journal(guest, "vfs-agent-cloud-init.service")
        assert BROKEN_MESSAGE in text, text
        assert re.search(r"invalid vfs_agent key in the cloud-config user-data .*nothing", text)
        errors = guest.run(
            ["journalctl", "-b", "-o", "cat", "-p", "err", "-u", "vfs-agent-cloud-init.service"]
        )
        assert BROKEN_MESSAGE in errors.stdout  # logged at priority err
        output_log = guest.get_file("/var/log/cloud-init-output.log").decode(errors="replace")
        assert f"vfs-agent: error: {BROKEN_MESSAGE}" in output_log

    def test_nothing_was_written(self, guest: VM) -> None:
        assert guest.run(["test", "-e", DROPIN]).rc == 1


def test_the_seed_user_data_positions_match_the_message() -> None:
    """BROKEN_MESSAGE's line and column point at the bad value in BROKEN_USER_DATA."""
    line = BROKEN_USER_DATA.splitlines()[5]
    assert line.index("relative/oops") + 1 == 13 and line.strip().startswith("path:")


# -- the policy from write_files (no vfs_agent key) -----------------------------------------------


class TestWriteFiles:
    @pytest.fixture(scope="class")
    @classmethod
    def boot(
        cls, deb_image: GuestImage, guest_run_dir: Path, share_dirs: dict[str, Path]
    ) -> Iterator[Booted]:
        user_data = write_files_user_data(WRITE_FILES_POLICY)
        yield from booted(deb_image, guest_run_dir, share_dirs, user_data, "ci-write-files")

    @pytest.fixture
    def guest(self, boot: Booted) -> VM:
        return boot.vm

    def test_cloud_init_is_clean(self, boot: Booted, guest: VM) -> None:
        """No key cloud-init does not know: status exits 0 (not 2, "degraded") and the schema
        check of the system's cloud-config finds nothing."""
        assert boot.cloud_init_rc == 0, guest.run(["cloud-init", "status", "--long"]).stdout
        schema = guest.run(["cloud-init", "schema", "--system"], timeout=120)
        assert schema.rc == 0, str(schema)
        assert "Valid schema" in schema.stdout and "Invalid" not in schema.stdout, str(schema)

    def test_the_shares_were_mounted_when_runcmd_ran(self, guest: VM) -> None:
        seen = runcmd_mounts(guest)
        assert set(seen) == {"ci_media", "ci_data", "not_named"}
        assert seen["not_named"][0] == "/mnt/virtiofs/not_named"  # zero-config
        assert seen["ci_media"][0] == "/mnt/ci-media"
        assert "ro" in seen["ci_media"][1].split(",")
        assert seen["ci_data"][0] == "/srv/ci-data"
        assert guest.run(["test", "-e", DROPIN]).rc == 1  # no key, no drop-in of the hook

    def test_the_hook_applied_the_file_and_systemd_owns_the_mounts(self, guest: VM) -> None:
        assert unit_property(guest, "vfs-agent-cloud-init.service", "Result") == "success"
        text = journal(guest, "vfs-agent-cloud-init.service")
        assert f"applying the policy files: /etc/vfs-agent/policy.yaml, {WRITTEN}" in text, text
        for unit in ("mnt-ci\\x2dmedia.mount", "srv-ci\\x2ddata.mount"):
            assert unit_property(guest, unit, "ActiveState") == "active", unit
            assert unit_property(guest, unit, "FragmentPath").startswith("/run/systemd/generator")

    def test_the_boot_finished(self, boot: Booted) -> None:
        assert boot.state in ("running", "degraded")
        no_failed_units_of_ours(boot.vm)


class TestWriteFilesBroken:
    @pytest.fixture(scope="class")
    @classmethod
    def boot(
        cls, deb_image: GuestImage, guest_run_dir: Path, share_dirs: dict[str, Path]
    ) -> Iterator[Booted]:
        user_data = write_files_user_data(WRITE_FILES_BROKEN)
        yield from booted(deb_image, guest_run_dir, share_dirs, user_data, "ci-wf-broken")

    def test_reported_with_its_line_and_the_boot_goes_on(self, boot: Booted) -> None:
        guest = boot.vm
        assert boot.cloud_init_rc == 0
        assert boot.state in ("running", "degraded")
        no_failed_units_of_ours(guest)
        assert unit_property(guest, "cloud-final.service", "Result") == "success"
        # runcmd ran; nothing was mounted from the broken file: the shares are where the
        # image's zero-config default put them at boot.
        assert {tag: where for tag, (where, _) in runcmd_mounts(guest).items()} == {
            tag: f"/mnt/virtiofs/{tag}" for tag in ("ci_media", "ci_data", "not_named")
        }
        message = f"{WRITTEN}:4:11: mounts[0].path: path 'relative/oops' is not absolute"
        assert message in journal(guest, "vfs-agent-cloud-init.service")
        output_log = guest.get_file("/var/log/cloud-init-output.log").decode(errors="replace")
        assert f"vfs-agent: error: {message}" in output_log
