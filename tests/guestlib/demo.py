"""`make demo`: vfs-agent at work in a real guest, as a transcript.

Builds (or reuses) the guest image, boots it in fast mode with two virtio-fs shares:

- `media_tag`, named in the demo policy, goes to /mnt/media;
- `scratch-1`, named nowhere, is mounted only because the policy's default is `unknown: mount`,
  so it lands under /mnt/virtiofs/scratch-1;

then installs the policy in the guest, runs `vfs-agent kernel`, `plan`, `mount-all` and
`status`, writes a file through a share, shows it on the host, and powers off.
Exit status 1 when any step failed (the transcript still runs to the end).
"""

from __future__ import annotations

import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.guestlib.common import HarnessError
from tests.guestlib.image import ensure_image
from tests.guestlib.processes import stop_all
from tests.guestlib.vm import VM, VMConfig, new_run_dir

DEMO_POLICY = """\
# vfs-agent demo policy (the format: README.md, "The policy")
version: 1
defaults:
  mount_root: /mnt/virtiofs   # tags without an explicit path go to <mount_root>/<tag>
  options: [nosuid, nodev]    # applied to every mount unless a rule overrides
  unknown: mount              # tags no rule names are mounted too (scratch-1 is one)
mounts:
  - tag: media_tag
    path: /mnt/media
    required: false           # nofail: the boot never waits for it
  - tag: "private-*"
    ignore: true
"""
POLICY_PATH = "/etc/vfs-agent/policy.yaml"
SHARES = {"media_tag": "media", "scratch-1": "scratch-1"}
GUEST_FILE = "/mnt/media/hello-from-guest.txt"


@dataclass
class Transcript:
    started: float = field(default_factory=time.monotonic)
    failed: list[str] = field(default_factory=list)

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.started:6.1f}s] {text}", flush=True)

    def block(self, text: str) -> None:
        for line in text.rstrip("\n").splitlines():
            print(f"    {line}")

    def guest(self, vm: VM, command: str, *, timeout: float = 120, expect_ok: bool = True) -> bool:
        print(f"\nguest# {command}", flush=True)
        result = vm.run(command, timeout=timeout)
        self.block(result.stdout)
        if result.stderr.strip():
            self.block(result.stderr)
        state = "timed out" if result.timed_out else f"exit {result.rc}"
        print(f"    ({state}, {result.seconds:.1f}s)", flush=True)
        if expect_ok and not result.ok:
            self.failed.append(command)
        return result.ok


def _shares(run_dir: Path) -> dict[str, Path]:
    shares = {}
    for tag, name in SHARES.items():
        path = run_dir / "shares" / name
        path.mkdir(parents=True)
        shares[tag] = path
    (shares["media_tag"] / "hello-from-host.txt").write_text("This file lives on the host.\n")
    return shares


def demo() -> int:
    out = Transcript()
    print("=== vfs-agent demo: a real QEMU guest with two virtio-fs shares ===", flush=True)
    image = ensure_image()
    out.say(f"guest image ready: {image.root.parent} (kernel {image.kernel_version})")
    run_dir = new_run_dir("demo")
    shares = _shares(run_dir)
    for tag, path in shares.items():
        out.say(f"host share {tag!r:12} <- {path}")
    config = VMConfig(mode="fast", name="demo", shares=list(shares.items()))
    out.say("booting the guest (QEMU TCG, fast mode: Debian initramfs + test init, no systemd)")
    with VM.boot(image, config, run_dir) as vm:
        out.say(
            f"guest up: command channel ready in {vm.stats.channel_seconds:.1f}s "
            f"(serial log: {vm.serial_log})"
        )
        out.guest(vm, "vfs-agent --version")
        out.guest(vm, "for t in /sys/fs/virtiofs/*/tag; do printf '%s: ' $t; cat $t; done")
        vm.put_file(POLICY_PATH, DEMO_POLICY, mode=0o644)
        out.say(f"wrote the demo policy to {POLICY_PATH} in the guest")
        out.guest(vm, f"ls -l {POLICY_PATH} && cat {POLICY_PATH}")
        out.guest(vm, "vfs-agent kernel")
        out.guest(vm, "vfs-agent plan")
        out.guest(vm, "vfs-agent mount-all")
        out.guest(vm, "vfs-agent status")
        out.guest(vm, "findmnt -t virtiofs -o TARGET,SOURCE,OPTIONS", expect_ok=False)
        out.guest(vm, "cat /mnt/media/hello-from-host.txt")
        line = "written by the guest through virtio-fs"
        out.guest(
            vm,
            f"mountpoint /mnt/media && echo {shlex.quote(line)} > {GUEST_FILE} && sync",
        )
        host_file = shares["media_tag"] / Path(GUEST_FILE).name
        print(f"\nhost$ cat {host_file}")
        if host_file.exists():
            out.block(host_file.read_text())
        else:
            out.block("(missing: the guest's write did not reach the host)")
            out.failed.append(f"host sees {host_file}")
        out.guest(vm, "mountpoint /mnt/virtiofs/scratch-1 && touch /mnt/virtiofs/scratch-1/ok")
        if not (shares["scratch-1"] / "ok").exists():
            out.failed.append("scratch-1 mounted by the default rule")
        print()
        out.say("powering the guest off")
    out.say(f"done; logs in {run_dir}")
    if out.failed:
        print("\nFAILED steps:\n  " + "\n  ".join(out.failed))
        return 1
    print("\nAll demo steps succeeded.")
    return 0


def main() -> None:
    try:
        code = demo()
    except HarnessError as exc:
        print(f"\ndemo failed: {exc}", file=sys.stderr)
        code = 2
    finally:
        stop_all()
    sys.exit(code)


if __name__ == "__main__":
    main()
