"""Zero-config and the host's policy layers, in full systemd boots of the .deb image.

Four boots, one per way the host talks to the guest (each boot runs all its checks):

* zero-config: no configuration at all; two shares at boot and one hot-plugged later are
  mounted at /mnt/virtiofs/<encoded tag> with nosuid,nodev, and unmounted on unplug;
* the policy as a systemd credential in SMBIOS type 11, plus `vfs_agent.mount=` arguments on
  the kernel command line (one above the credential, one bad);
* the same credential through QEMU's fw_cfg;
* a broken credential (`systemd.set_credential_binary=` on the kernel command line): the boot
  goes on, the error is in the journal, zero-config still mounts the shares.

The SMBIOS, fw_cfg and kernel arguments are what `vfs-agent host-config` prints on the host.

    .venv/bin/pytest -v tests/guest/test_host_layers.py     # about 4-5 minutes, as root
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.guest.conftest import BootGuest
from tests.guestlib.image import GuestImage
from tests.guestlib.vm import VM, VMConfig

pytestmark = pytest.mark.guest

CREDENTIAL_POLICY = """\
version: 1
defaults:
  mount_root: /srv/host-shares
mounts:
  - {tag: cred_a, path: /mnt/cred-a, options: [ro]}
  - {tag: "glob *", path: "/srv/glob/{tag}"}
"""
BROKEN_POLICY = "version: 1\nmounts:\n  - {tag: cred_a, path: relative/oops}\n"
BROKEN_MESSAGE = (
    "credential vfs-agent.policy:3:25: mounts[0].path: path 'relative/oops' is not absolute"
)
CRED_SHARES = ["cred_a", "glob b", "plain_c"]


def wait_until(what: str, check: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def mounts(guest: VM) -> dict[str, tuple[str, set[str]]]:
    """tag -> (target, options) of the virtiofs mounts, as util-linux sees them."""
    result = guest.run("findmnt --json --list -o SOURCE,TARGET,OPTIONS -t virtiofs")
    if result.rc != 0:
        return {}
    rows = json.loads(result.stdout)["filesystems"]
    return {r["source"]: (r["target"], set(r["options"].split(","))) for r in rows}


def targets(guest: VM) -> dict[str, str]:
    return {tag: target for tag, (target, _) in mounts(guest).items()}


def vfs_json(guest: VM, *args: str) -> Any:
    result = guest.run(["vfs-agent", *args, "--json"], timeout=120)
    assert result.rc == 0, str(result)
    return json.loads(result.stdout)


def unit_of(guest: VM, path: str) -> str:
    name = guest.run(["systemd-escape", "--path", "--suffix=mount", path], check=True)
    return name.stdout.strip()


def unit_property(guest: VM, unit: str, prop: str) -> str:
    return guest.run(["systemctl", "show", "--value", "-p", prop, unit], check=True).stdout.strip()


def no_failed_units_of_ours(guest: VM) -> None:
    failed = guest.run(["systemctl", "--failed", "--plain", "--no-legend"]).stdout
    ours = [line for line in failed.splitlines() if "vfs-agent" in line or ".mount" in line]
    assert not ours, failed


def host_config(policy: Path) -> dict[str, Any]:
    """What `vfs-agent host-config --json` prints on the host for `policy`."""
    done = subprocess.run(
        [sys.executable, "-m", "vfs_agent", "host-config", str(policy), "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    data: dict[str, Any] = json.loads(done.stdout)
    return data


@pytest.fixture(scope="module")
def share_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("host-layer-shares")
    tags = ["zc-a", "zc b#1", "zc-hot", "cmd:tag", *CRED_SHARES]
    dirs = {tag: root / f"d{index}" for index, tag in enumerate(tags)}
    for tag, path in dirs.items():
        path.mkdir()
        (path / "which.txt").write_text(tag)
    return dirs


@pytest.fixture(scope="module")
def policies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("host-layer-policies")
    (root / "good.yaml").write_text(CREDENTIAL_POLICY)
    (root / "broken.yaml").write_bytes(BROKEN_POLICY.encode())
    return {"good": root / "good.yaml", "broken": root / "broken.yaml"}


def boot(
    boot_guest: BootGuest, image: GuestImage, name: str, shares: list[tuple[str, Path]], **kw: Any
) -> Iterator[VM]:
    guest = boot_guest(
        VMConfig(mode="systemd", name=name, shares=shares, **kw),
        image,
    )
    try:
        state = guest.wait_system_running(timeout=300)
        assert state in ("running", "degraded"), state
        yield guest
    finally:
        guest.shutdown()


# -- zero-config -----------------------------------------------------------------------------------


class TestZeroConfig:
    @pytest.fixture(scope="class")
    @classmethod
    def guest(
        cls, boot_guest: BootGuest, deb_image: GuestImage, share_dirs: dict[str, Path]
    ) -> Iterator[VM]:
        shares = [(t, share_dirs[t]) for t in ("zc-a", "zc b#1")]
        yield from boot(boot_guest, deb_image, "zero-config", shares)

    def test_nothing_is_configured(self, guest: VM) -> None:
        assert guest.run("ls /run/credentials/@system/vfs-agent.policy").rc != 0
        assert "vfs_agent" not in guest.get_file("/proc/cmdline").decode()
        assert guest.run("ls /etc/vfs-agent/policy.d/").stdout.strip() == ""
        policy = guest.get_file("/etc/vfs-agent/policy.yaml").decode()
        active = [
            ln for ln in policy.splitlines() if ln.strip() and not ln.lstrip().startswith("#")
        ]
        assert active == ["version: 1", "defaults:"], active  # the package's file, as installed

    def test_boot_shares_are_mounted_by_generated_units(self, guest: VM) -> None:
        want = {"zc-a": "/mnt/virtiofs/zc-a", "zc b#1": "/mnt/virtiofs/zc%20b%231"}
        wait_until("both boot shares mounted", lambda: targets(guest) == want)
        for tag, (target, options) in mounts(guest).items():
            assert {"nosuid", "nodev"} <= options, (tag, options)
            unit = unit_of(guest, target)
            assert unit_property(guest, unit, "ActiveState") == "active"
            assert unit_property(guest, unit, "FragmentPath").startswith("/run/systemd/generator")
        assert guest.run(["cat", "/mnt/virtiofs/zc%20b%231/which.txt"]).stdout == "zc b#1"
        status = vfs_json(guest, "status")
        assert {s["tag"]: s["health"] for s in status["shares"]} == {
            "zc-a": "mounted",
            "zc b#1": "mounted",
        }
        assert {s["layer"] for s in status["shares"]} == {"the built-in default"}
        assert status["policy_warnings"] == []

    def test_a_hotplugged_share_is_mounted_and_unmounted_on_unplug(
        self, guest: VM, share_dirs: dict[str, Path]
    ) -> None:
        guest.hotplug_share("zc-hot", share_dirs["zc-hot"])
        wait_until("zc-hot mounted", lambda: "zc-hot" in mounts(guest))
        target, options = mounts(guest)["zc-hot"]
        assert target == "/mnt/virtiofs/zc-hot" and {"nosuid", "nodev"} <= options
        assert guest.run(["cat", f"{target}/which.txt"]).stdout == "zc-hot"
        guest.unplug_share("zc-hot")
        wait_until("zc-hot unmounted", lambda: "zc-hot" not in mounts(guest))
        assert "not connected" not in guest.run("ls /mnt/virtiofs/zc-hot 2>&1").stdout

    def test_an_unplugged_boot_share_is_unmounted(self, guest: VM) -> None:
        guest.unplug_share("zc-a")
        wait_until("zc-a unmounted", lambda: "zc-a" not in mounts(guest))
        assert "not connected" not in guest.run("ls /mnt/virtiofs 2>&1").stdout
        assert set(mounts(guest)) == {"zc b#1"}
        no_failed_units_of_ours(guest)


# -- the credential in SMBIOS type 11, and vfs_agent.mount= ------------------------------------


class TestSmbiosCredentialAndCmdline:
    EXTRA = (
        "vfs_agent.mount=cmd\\x3atag:/mnt/cmd\\x20line:noexec",  # the tag "cmd:tag"
        "vfs_agent.mount=cred_a:/mnt/cmdline-wins",  # above the credential
        "vfs_agent.mount=no-colon-here",  # reported and left out
    )

    @pytest.fixture(scope="class")
    @classmethod
    def guest(
        cls,
        boot_guest: BootGuest,
        deb_image: GuestImage,
        share_dirs: dict[str, Path],
        policies: dict[str, Path],
    ) -> Iterator[VM]:
        config = host_config(policies["good"])
        shares = [(t, share_dirs[t]) for t in [*CRED_SHARES, "cmd:tag"]]
        yield from boot(
            boot_guest,
            deb_image,
            "smbios-credential",
            shares,
            extra_qemu_args=config["qemu"]["smbios"],
            extra_cmdline=cls.EXTRA,
        )

    def test_systemd_imported_the_credential(self, guest: VM, policies: dict[str, Path]) -> None:
        assert guest.get_file("/run/credentials/@system/vfs-agent.policy") == (
            policies["good"].read_bytes()
        )

    def test_shares_go_where_the_layers_say(self, guest: VM) -> None:
        want = {
            "cred_a": "/mnt/cmdline-wins",  # kernel command line over the credential
            "glob b": "/srv/glob/glob%20b",  # the credential's glob rule
            "plain_c": "/srv/host-shares/plain_c",  # zero-config under the credential's root
            "cmd:tag": "/mnt/cmd line",  # escaped tag and path on the command line
        }
        wait_until("every share mounted", lambda: targets(guest) == want)
        assert "noexec" in mounts(guest)["cmd:tag"][1]
        assert guest.run(["cat", "/mnt/cmd line/which.txt"]).stdout == "cmd:tag"
        for target in want.values():
            unit = unit_of(guest, target)
            assert unit_property(guest, unit, "FragmentPath").startswith("/run/systemd/generator")

    def test_plan_and_status_name_the_deciding_layer(self, guest: VM) -> None:
        plan = vfs_json(guest, "plan")
        assert plan["policy_files"] == [
            "/etc/vfs-agent/policy.yaml",
            "credential vfs-agent.policy",
            "kernel command line",
        ]
        status = {s["tag"]: s for s in vfs_json(guest, "status")["shares"]}
        assert {tag: s["layer"] for tag, s in status.items()} == {
            "cred_a": "kernel command line",
            "glob b": "credential vfs-agent.policy",
            "plain_c": "the built-in default",  # unknown: mount (its mount_root: the credential)
            "cmd:tag": "kernel command line",
        }
        assert {s["health"] for s in status.values()} == {"mounted"}

    def test_the_bad_argument_is_in_the_kernel_log_and_the_journal(self, guest: VM) -> None:
        column = guest.get_file("/proc/cmdline").decode().index("vfs_agent.mount=no-colon") + 1
        message = (
            f"kernel command line:1:{column}: vfs_agent.mount=no-colon-here: "
            "no ':' between the tag and the path"
        )
        # The generator writes to /dev/kmsg; journald files those lines under its name.
        kernel = guest.run(["dmesg"], check=True).stdout
        assert f"vfs-agent-generator: {message}" in kernel, kernel[-3000:]
        boot_log = guest.run(["journalctl", "-b", "-o", "cat", "--no-pager"]).stdout
        assert message in boot_log
        daemon = guest.run(["journalctl", "-b", "-u", "vfs-agent.service", "-o", "cat"]).stdout
        assert message in daemon
        no_failed_units_of_ours(guest)


# -- the credential through fw_cfg -------------------------------------------------------------


class TestFwCfgCredential:
    @pytest.fixture(scope="class")
    @classmethod
    def guest(
        cls,
        boot_guest: BootGuest,
        deb_image: GuestImage,
        share_dirs: dict[str, Path],
        policies: dict[str, Path],
    ) -> Iterator[VM]:
        config = host_config(policies["good"])
        shares = [(t, share_dirs[t]) for t in CRED_SHARES]
        yield from boot(
            boot_guest,
            deb_image,
            "fw-cfg-credential",
            shares,
            extra_qemu_args=config["qemu"]["fw_cfg"],
        )

    def test_shares_go_where_the_credential_says(
        self, guest: VM, policies: dict[str, Path]
    ) -> None:
        assert guest.get_file("/run/credentials/@system/vfs-agent.policy") == (
            policies["good"].read_bytes()
        )
        want = {
            "cred_a": "/mnt/cred-a",
            "glob b": "/srv/glob/glob%20b",
            "plain_c": "/srv/host-shares/plain_c",
        }
        wait_until("every share mounted", lambda: targets(guest) == want)
        assert {"ro", "nosuid", "nodev"} <= mounts(guest)["cred_a"][1]
        layers = {s["tag"]: s["layer"] for s in vfs_json(guest, "status")["shares"]}
        assert layers["cred_a"] == layers["glob b"] == "credential vfs-agent.policy"
        no_failed_units_of_ours(guest)


# -- a broken credential ---------------------------------------------------------------------------


class TestBrokenCredential:
    @pytest.fixture(scope="class")
    @classmethod
    def guest(
        cls,
        boot_guest: BootGuest,
        deb_image: GuestImage,
        share_dirs: dict[str, Path],
        policies: dict[str, Path],
    ) -> Iterator[VM]:
        # host-config refuses an invalid policy (exit 2), so the argument is written here.
        encoded = base64.b64encode(policies["broken"].read_bytes()).decode()
        shares = [(t, share_dirs[t]) for t in ("cred_a", "plain_c")]
        yield from boot(
            boot_guest,
            deb_image,
            "broken-credential",
            shares,
            extra_cmdline=[f"systemd.set_credential_binary=vfs-agent.policy:{encoded}"],
        )

    def test_the_boot_goes_on_and_zero_config_mounts_the_shares(self, guest: VM) -> None:
        assert guest.get_file("/run/credentials/@system/vfs-agent.policy") == (
            BROKEN_POLICY.encode()
        )
        want = {"cred_a": "/mnt/virtiofs/cred_a", "plain_c": "/mnt/virtiofs/plain_c"}
        wait_until("both shares mounted", lambda: targets(guest) == want)
        no_failed_units_of_ours(guest)
        assert unit_property(guest, "vfs-agent.service", "ActiveState") == "active"

    def test_the_error_names_the_credential_and_its_line(self, guest: VM) -> None:
        kernel = guest.run(["dmesg"], check=True).stdout
        assert f"vfs-agent-generator: {BROKEN_MESSAGE}" in kernel, kernel[-3000:]
        assert "credential vfs-agent.policy: invalid, ignoring it" in kernel
        assert BROKEN_MESSAGE in guest.run(["journalctl", "-b", "-o", "cat", "--no-pager"]).stdout
        errors = guest.run(
            ["journalctl", "-b", "-p", "warning", "-u", "vfs-agent.service", "-o", "cat"]
        ).stdout
        assert BROKEN_MESSAGE in errors
        check = guest.run(["vfs-agent", "policy", "check"])
        assert check.rc == 0 and BROKEN_MESSAGE in check.stderr, str(check)
