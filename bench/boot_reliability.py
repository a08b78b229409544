"""How reliable and how fast are TCG boots of the test guest on this machine?

    .venv/bin/python bench/boot_reliability.py [--fast 10] [--full 3] [--quiet]

Boots the fast mode N times and the full systemd mode M times, one guest at a time, with no
retry (a retry would hide the failures this measures), and reports successes and the time from
QEMU's start to the command channel (and, for systemd, to `is-system-running`).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.guestlib.common import HarnessError
from tests.guestlib.image import GuestImage, ensure_image
from tests.guestlib.processes import stop_all
from tests.guestlib.vm import VM, Mode, VMConfig, new_run_dir


@dataclass
class Series:
    mode: Mode
    channel: list[float] = field(default_factory=list)
    running: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    states: list[str] = field(default_factory=list)


def _spread(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{min(values):.1f} / {statistics.median(values):.1f} / {max(values):.1f}"


def boot_once(
    image: GuestImage, mode: Mode, index: int, share: Path, run_dir: Path, quiet: bool, out: Series
) -> None:
    config = VMConfig(
        mode=mode, name=f"{mode}-{index}", shares=[("bench", share)], retries=0, quiet=quiet
    )
    try:
        vm = VM.boot(image, config, run_dir)
    except HarnessError as exc:
        out.failures.append(f"{config.name}: {str(exc).splitlines()[0]}")
        print(f"  {config.name}: FAILED ({str(exc).splitlines()[0]})", flush=True)
        return
    try:
        vm.run("true", check=True)
        out.channel.append(vm.stats.channel_seconds)
        line = f"  {config.name}: channel {vm.stats.channel_seconds:.1f}s"
        if mode == "systemd":
            state = vm.wait_system_running(settle=False)
            out.running.append(time.monotonic() - vm.started_at)
            out.states.append(state)
            line += f", is-system-running={state} at {out.running[-1]:.1f}s"
        print(line, flush=True)
    except HarnessError as exc:
        out.failures.append(f"{config.name}: {str(exc).splitlines()[0]}")
    finally:
        vm.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", type=int, default=10, help="fast-mode boots (default 10)")
    parser.add_argument("--full", type=int, default=3, help="systemd boots (default 3)")
    parser.add_argument("--quiet", action="store_true", help="`quiet` on the kernel cmdline")
    args = parser.parse_args()
    image = ensure_image()  # once: the working tree may change while this runs
    run_dir = new_run_dir("bench")
    results = [Series("fast"), Series("systemd")]
    try:
        with tempfile.TemporaryDirectory(prefix="vfs-agent-bench-") as share:
            for series, count in zip(results, (args.fast, args.full), strict=True):
                print(f"{series.mode}: {count} boots", flush=True)
                for index in range(1, count + 1):
                    boot_once(image, series.mode, index, Path(share), run_dir, args.quiet, series)
    finally:
        stop_all()
    print("\n| mode | boots ok | channel ready s (min / median / max) | is-system-running s |")
    print("|---|---|---|---|")
    for series in results:
        total = len(series.channel) + len(series.failures)
        if total:
            print(
                f"| {series.mode} | {len(series.channel)}/{total} | {_spread(series.channel)} "
                f"| {_spread(series.running)} |"
            )
    for series in results:
        for failure in series.failures:
            print(f"failure: {failure}")
        if series.states:
            print(f"{series.mode} states: {', '.join(series.states)}")
    print(f"logs: {run_dir}")
    sys.exit(1 if any(s.failures for s in results) else 0)


if __name__ == "__main__":
    main()
