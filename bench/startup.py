"""What does each command cost to start, against the bare interpreter?

    .venv/bin/python bench/startup.py [--runs 20] [--json]

Paired, interleaved runs on this machine (no guest): every round runs the floor
(`python3 -I -c pass` with the same interpreter as vfs-agent) and then each command once, so
load changes on a shared machine hit all of them alike. Prints min/median/max wall-clock
milliseconds and the ratio of medians to the floor, with the goal of each line; and the median
CPU time (user + system) of each, with its ratio, which a loaded machine disturbs far less.

The package is byte-compiled first, as an install does (byte_compile_package).
Shell completion runs as bash runs it at a TAB after `vfs-agent pol` (click's protocol).
The commands run against a fake system root (8 virtio-fs tags, a policy naming 4 of them and a
glob) through `--root`; the generator runs as systemd runs it (`python3 -I` script, one output
directory on a tmpfs, as systemd's in /run are) with VFS_AGENT_ROOT pointing at that tree,
three ways: on a tree where nothing changed since its last full run, whose memo the daemon kept
(it writes that run's output again: systemd/replay.py); in full with a fresh compiled policy;
in full without one (the first boot of an image). The udev
helper runs as udev runs it, in its shell form and in the Python form it had before (which the
shell one still uses on kernels without /sys/fs/virtiofs).

Some commands are followed by a reference line, "... imports alone": the same interpreter, with
the same flags, importing only the modules from outside vfs_agent (the standard library's,
click, YAML, pydantic) that the command imported beyond the floor's, as `-X importtime` listed
them in a run of the command itself. What lies between the two lines is vfs_agent's own
modules and work; what the reference line costs, no change to vfs_agent's code can take away
short of importing fewer of those modules.

Two more reference lines close the table: the least that any code keeping to the project's
contracts imports, whatever else it does. Every command but `--version` goes through click (the
CLI's contract), so a console script importing click and nothing else; and the generator in
full plans through the core, whose types are frozen dataclasses (the core's contract), so the
generator's interpreter importing `dataclasses` and nothing else.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.unit.faketree import FakeTree

from vfs_agent.commands.install import Layout

TAGS = [f"share-{i}" for i in range(6)] + ["data-a", "weird tag#1"]
POLICY = """version: 1
defaults: {mount_root: /mnt/virtiofs, unknown: mount}
mounts:
  - {tag: share-0, path: /srv/share-0, required: true}
  - {tag: share-1, path: /srv/share-1, options: [ro]}
  - {tag: share-2, ignore: true}
  - {tag: "data-*", path: "/srv/data/{tag}"}
  - {tag: absent-one, path: /srv/absent}
"""
UDEV_HELPER_PY = """import sys
from vfs_agent.systemd.udev_tag import main
sys.exit(main(sys.argv[1:]))
"""
COMPLETION_ENV = {
    "_VFS_AGENT_COMPLETE": "bash_complete",
    "COMP_WORDS": "vfs-agent pol",
    "COMP_CWORD": "1",
}
GENERATOR = """import sys
from vfs_agent.systemd.replay import main
sys.exit(main(sys.argv[1:]))
"""


@dataclass(frozen=True)
class Case:
    name: str
    argv: list[str]
    env: dict[str, str]
    goal: float | None  # ratio to the floor
    fresh_dir: Path | None = None  # emptied before every run (generator output)
    exit_codes: tuple[int, ...] = (0, 1)  # kernel exits 1 when virtiofs is unusable
    reference: bool = False  # followed by its "imports alone" line


def imported(argv: list[str], env: dict[str, str]) -> list[str]:
    """The modules a run of `argv` imports, in order, as `-X importtime` lists them (through
    PYTHONPROFILEIMPORTTIME for a console script; `-I` ignores that variable, hence the option
    for the interpreter)."""
    if argv[0] == sys.executable:
        argv = [argv[0], "-X", "importtime", *argv[1:]]
    else:
        env = {**env, "PYTHONPROFILEIMPORTTIME": "1"}
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    # "import time: self [us] | cumulative | imported package", the last field indented
    rows = [line.split("|") for line in done.stderr.splitlines() if line.startswith("import time:")]
    return [row[2].strip() for row in rows[1:] if len(row) == 3]  # [0] is the header


def imports_alone(case: Case, floor: Case) -> Case:
    """A reference case: the interpreter as `case` starts it, importing just the modules from
    outside vfs_agent that `case` imports and the floor does not."""
    flags = ["-I"] if case.argv[0] == sys.executable and "-I" in case.argv else []
    before = set(imported(floor.argv if flags else [sys.executable, "-c", "pass"], floor.env))
    names = [
        name
        for name in imported(case.argv, case.env)
        if name not in before and name.partition(".")[0] not in ("vfs_agent", "__main__")
    ]
    if not names:
        sys.exit(f"{case.name}: -X importtime listed no import; the reference would be wrong")
    # Tried in the same order, failures included: the run tried them too (`nt`, say, which
    # pathlib looks for, or an optional accelerator), and a failed search costs time as well.
    unique = tuple(dict.fromkeys(names))
    source = f"failed = 0\nfor name in {unique!r}:\n"
    source += "    try:\n        __import__(name)\n    except ImportError:\n        failed += 1\n"
    argv = [sys.executable, *flags, "-c", source]
    name = f"  {case.name.removeprefix('vfs-agent ')}: imports alone"
    reference = Case(name, argv, case.env, None, exit_codes=(0,))
    # Once with a count of the failures: a few are expected, most would mean a wrong reference.
    count = [*argv[:-1], source + "print(failed)\n"]
    failed = int(subprocess.run(count, env=case.env, capture_output=True, check=True).stdout)
    if failed > len(unique) // 10:
        sys.exit(f"{reference.name}: {failed} of {len(unique)} imports failed; it would be wrong")
    return reference


def remember_last_run(root: Path, generator: Path) -> None:
    """A full run of the generator on `root` into systemd's directory, and its memo kept as the
    daemon keeps it: the next run on `root` finds that nothing changed."""
    from vfs_agent.systemd.replay import SYSTEM_GENERATOR_DIR, keep_memo

    out = root / SYSTEM_GENERATOR_DIR.lstrip("/")
    out.mkdir(parents=True)
    env = {**os.environ, "VFS_AGENT_ROOT": str(root), "VFS_AGENT_KMSG": os.devnull}
    subprocess.run([sys.executable, "-I", str(generator), str(out)], env=env, check=True)
    if not keep_memo(str(root)):
        sys.exit("the generator's full run left no memo: the replay figures would be wrong")


def build_tree(root: Path, *, compiled: bool) -> Path:
    tree = FakeTree(root)
    for tag in TAGS:
        tree.virtiofs(tag)
    tree.policy(POLICY)
    tree.kernel(
        "6.12.0-bench",
        filesystems="nodev\tvirtiofs\nnodev\t9p\n",
        builtin="kernel/fs/fuse/virtiofs.ko\n",
    )
    if compiled:
        from vfs_agent.policy.compiled import compile_policy
        from vfs_agent.policy.load import read_policy
        from vfs_agent.system.sysroot import SysRoot

        compile_policy(SysRoot(root), read_policy(SysRoot(root)))
    return root


def cli_path() -> list[str]:
    """The console script installed next to this interpreter (as users run it)."""
    script = Path(sys.executable).parent / "vfs-agent"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "vfs_agent"]


def tmpfs_dir() -> str | None:
    """A tmpfs for the generator's output, as systemd's generator directories in /run are (on a
    disk its writes' fsyncs would count); None, the default temporary directory, without one."""
    with open("/proc/self/mounts", encoding="utf-8") as mounts:
        tmpfs = {fields[1] for fields in map(str.split, mounts) if fields[2] == "tmpfs"}
    return next((d for d in ("/run", "/dev/shm") if d in tmpfs and os.access(d, os.W_OK)), None)


def cases(work: Path, output: Path) -> list[Case]:
    python = sys.executable
    warm = build_tree(work / "warm", compiled=True)
    cold = build_tree(work / "cold", compiled=False)
    unchanged = build_tree(work / "unchanged", compiled=True)
    generator = work / "vfs-agent-generator"
    generator.write_text(GENERATOR)
    remember_last_run(unchanged, generator)
    cli = cli_path()
    base = dict(os.environ)
    out_warm, out_cold, out_same = output / "out-warm", output / "out-cold", output / "out-same"
    helper = work / "vfs-agent-tag-id"
    helper.write_text(Layout("/usr", python, "/usr/bin").render("vfs-agent-tag-id.in"))
    helper.chmod(0o755)
    old_helper = work / "vfs-agent-tag-id.py"
    old_helper.write_text(f"#!{python} -I\n{UDEV_HELPER_PY}")
    old_helper.chmod(0o755)
    devpath = os.readlink(warm / "sys/fs/virtiofs/1/device").removeprefix("../../..")
    (warm / f"sys{devpath}").mkdir(parents=True, exist_ok=True)
    udev_env = {"VFS_AGENT_ROOT": str(warm)}  # udev passes the event's properties only
    return [
        Case("python3 -I -c pass (floor)", [python, "-I", "-c", "pass"], base, None),
        Case("udev helper (shell)", [str(helper), devpath], udev_env, None),
        Case("udev helper (Python, before)", [str(old_helper), devpath], udev_env, None),
        Case("vfs-agent --version", [*cli, "--version"], base, 3.0),
        Case("vfs-agent --help", [*cli, "--help"], base, 3.0, reference=True),
        # What bash runs at every TAB: click's completion protocol through the command tree.
        Case("shell completion (TAB)", cli, {**base, **COMPLETION_ENV}, None),
        Case(
            "vfs-agent status --json",
            [*cli, "--root", str(warm), "status", "--json"],
            base,
            3.0,
            reference=True,
        ),
        Case("vfs-agent plan --json", [*cli, "--root", str(warm), "plan", "--json"], base, 3.0),
        Case("vfs-agent kernel --json", [*cli, "--root", str(warm), "kernel", "--json"], base, 3.0),
        # The prober that answers the boot's waits for virtio-fs hosts (one per burst of waits,
        # started by its FIFO): its start-up and imports only (a usage error after them), since
        # a real wait mounts a share.
        Case(
            "answer prober, start-up",
            [python, "-I", "-m", "vfs_agent.system.answer", "not-hex", "1"],
            base,
            2.0,
            exit_codes=(2,),
        ),
        Case(
            "vfs-agent generate systemd",
            [*cli, "--root", str(warm), "generate", "systemd"],
            base,
            3.0,
        ),
        Case(
            "generator, nothing changed (replay)",
            [python, "-I", str(generator), str(out_same)],
            {**base, "VFS_AGENT_ROOT": str(unchanged), "VFS_AGENT_KMSG": str(work / "kmsg-same")},
            2.0,
            out_same,
        ),
        Case(
            "generator, compiled policy",
            [python, "-I", str(generator), str(out_warm)],
            {**base, "VFS_AGENT_ROOT": str(warm)},
            2.0,
            out_warm,
            reference=True,
        ),
        Case(
            "generator, first boot (YAML)",
            [python, "-I", str(generator), str(out_cold)],
            {**base, "VFS_AGENT_ROOT": str(cold)},
            2.0,
            out_cold,
            reference=True,
        ),
        Case("contract floor: click alone", [python, "-c", "import click"], base, None),
        Case(
            "contract floor: dataclasses alone",
            [python, "-I", "-c", "import dataclasses"],
            base,
            None,
        ),
    ]


def byte_compile_package() -> None:
    """Byte-compile the vfs_agent being measured, as pip and the distributions' packages do on
    install. Where PYTHONDONTWRITEBYTECODE is set (CI and sandboxes set it), a checkout never
    gets its bytecode written, and every run would compile each module it imports from source,
    which no installed system does; the commands that the bench starts without `-I` honour it."""
    import vfs_agent

    if not compileall.compile_dir(os.path.dirname(vfs_agent.__file__), quiet=1):
        sys.exit("cannot byte-compile vfs_agent: the figures would count compiling it")


def empty_output(case: Case) -> None:
    if case.fresh_dir is not None:
        shutil.rmtree(case.fresh_dir, ignore_errors=True)
        case.fresh_dir.mkdir()


def with_references(cases: list[Case]) -> list[Case]:
    """`cases`, each one marked `reference` followed by its "imports alone" line."""
    floor = cases[0]
    out = []
    for case in cases:
        out.append(case)
        if case.reference:
            empty_output(case)
            out.append(imports_alone(case, floor))
    return out


def run_once(case: Case) -> tuple[float, float]:
    """Wall-clock and CPU (user + system) seconds of one run."""
    empty_output(case)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(case.argv, env=case.env, capture_output=True, check=False)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode not in case.exit_codes:
        sys.exit(f"{case.name}: exit {done.returncode}\n{done.stderr.decode()}")
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return elapsed, cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="vfs-bench-startup-") as tmp,
        tempfile.TemporaryDirectory(prefix="vfs-bench-startup-", dir=tmpfs_dir()) as output,
    ):
        byte_compile_package()
        all_cases = with_references(cases(Path(tmp), Path(output)))
        # The cold tree must stay cold: the generator never compiles the policy.
        times: dict[str, list[float]] = {c.name: [] for c in all_cases}
        cpu: dict[str, list[float]] = {c.name: [] for c in all_cases}
        for case in all_cases:  # warm the page cache once, not counted
            run_once(case)
        for _ in range(args.runs):
            for case in all_cases:
                wall, used = run_once(case)
                times[case.name].append(wall)
                cpu[case.name].append(used)
        if (Path(tmp) / "cold/var/lib/vfs-agent/policy.json").exists():
            sys.exit("the first-boot tree got a compiled policy: the figures are wrong")
        from vfs_agent.systemd.replay import REPLAYED

        said = (Path(tmp) / "kmsg-same").read_text()
        if said.count(REPLAYED) != args.runs + 1:
            sys.exit("the replay case did not replay every run: the figures are wrong")
    floor = statistics.median(times[all_cases[0].name])
    cpu_floor = statistics.median(cpu[all_cases[0].name])
    rows = []
    for case in all_cases:
        t = times[case.name]
        ratio = statistics.median(t) / floor
        cpu_median = statistics.median(cpu[case.name])
        rows.append(
            {
                "name": case.name,
                "min_ms": round(min(t) * 1000, 1),
                "median_ms": round(statistics.median(t) * 1000, 1),
                "max_ms": round(max(t) * 1000, 1),
                "ratio": round(ratio, 2),
                "cpu_median_ms": round(cpu_median * 1000, 1),
                "cpu_ratio": round(cpu_median / cpu_floor, 2),
                "goal": case.goal,
                "met": None if case.goal is None else ratio <= case.goal,
            }
        )
    if args.json:
        print(json.dumps({"runs": args.runs, "python": sys.version.split()[0], "rows": rows}))
        return 0
    print(
        f"{args.runs} interleaved runs each, Python {sys.version.split()[0]}, {os.cpu_count()} CPUs"
    )
    w = max(len(c.name) for c in all_cases)
    print(f"{'':{w}} {'wall-clock ms':^23}  {'':5}  {'CPU ms':^12}")
    print(f"{'command':{w}} {'min':>7} {'median':>7} {'max':>7}  ratio  {'median':>6} ratio  goal")
    for r in rows:
        goal = "" if r["goal"] is None else f"<= {r['goal']}x {'ok' if r['met'] else 'MISSED'}"
        print(
            f"{r['name']:{w}} {r['min_ms']:7.1f} {r['median_ms']:7.1f} {r['max_ms']:7.1f}"
            f"  {r['ratio']:5.2f}  {r['cpu_median_ms']:6.1f} {r['cpu_ratio']:5.2f}  {goal}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
