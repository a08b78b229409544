"""The generator's first step: write its last output again when none of its inputs changed.

The full generator (systemd/generator.py) imports the policy, discovery and unit rendering,
which under emulation costs several times Python's own start-up, at every boot. Its output is
a function of what it reads, and it reads everything through a recording SysRoot
(system/observed.py). So after a run that wrote its units, it leaves a memo in its output
directory (MEMO_NAME, hidden: systemd loads no dot file as a unit):

- the stamp: the interpreter, the effective user, the two environment variables the
  generator reads, where this package is;
- the journal: every read it made, and what came back: the policy layers and their
  fingerprint (the policy is a function of that, as the compiled policy's cache key says), the
  shares in sysfs, the udev rule and mount helper it looks for, the interpreter's file, and
  the package's own files and directories, so an upgrade or a changed module counts as a
  change;
- the files and links it wrote, in order, and the messages it logged.

It writes the memo only if every read of the journal still returns the same after the run,
so a share plugged during the run cannot pair one input with another output. The daemon keeps
it in KEPT (keep_memo). At the next boot, main() checks KEPT's memo: if its stamp is this
process's and every read returns the same, it writes the files and links again and logs the
messages again; otherwise (or on any error) the full generator runs. There is one planner and
one renderer: this module only writes again what they wrote.

The memo holds the host's policy credential and command line: it is written 0600, and is
trusted only as the compiled policy is (owned by root, writable by nobody else, in a directory
the same) and only when readable by root alone. It imports only os, sys, marshal and the
small modules below, which is what makes it fast.
"""

from __future__ import annotations

import marshal
import os
import sys

from vfs_agent.system import observed
from vfs_agent.system.atomic import symlink_atomic, write_atomic
from vfs_agent.system.kmsg import INFO, kmsg
from vfs_agent.system.safe_io import read_regular
from vfs_agent.system.strict_modes import mode_problems

TYPE_CHECKING = False  # typing itself costs a few ms to import
if TYPE_CHECKING:
    from typing import Any

    from vfs_agent.system.observed import Observation

    Output = tuple[str, str, str | None]  # path inside the output directory, text, link target

IDENT = "vfs-agent-generator"
ROOT_ENV = "VFS_AGENT_ROOT"  # lets tests and image builds point the generator at another tree
CREDENTIALS_ENV = "CREDENTIALS_DIRECTORY"  # systemd's, read by policy/layers.py
MEMO_NAME = ".vfs-agent-generator.memo"
SYSTEM_GENERATOR_DIR = "/run/systemd/generator"  # systemd's normal directory for generators
KEPT = "/var/lib/vfs-agent/generator.memo"
MAGIC = b"vfs-agent generator memo 1\n"
MEMO_MAX = 16 << 20  # bytes
REPLAYED = "no input changed since its last full run"  # how the kernel log tells a replay


def root_from_environ() -> str:
    return os.environ.get(ROOT_ENV, "/")


def stamp() -> tuple[Any, ...]:
    """What of this process the generator's output may depend on besides its reads."""
    return (
        sys.version,
        sys.executable,
        os.geteuid(),
        os.environ.get(ROOT_ENV),
        os.environ.get(CREDENTIALS_ENV),
        _package_dir(),
    )


def _package_dir() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def remember(
    normal_dir: str, journal: list[Observation], outputs: list[Output], said: list[tuple[int, str]]
) -> bool:
    """Leave the memo of a full run in `normal_dir`: its reads (`journal`), the files and
    links it wrote (`outputs`) and its messages. False, and no memo, when a read returns
    something else now than during the run."""
    journal = list(journal)
    _record_code(journal)
    if not observed.holds(journal):
        return False
    # The policy's layers are read twice in a run (recorded first, then by the loader): the
    # replay at boot checks each read once.
    memo = MAGIC + marshal.dumps((stamp(), observed.distinct(journal), outputs, said))
    write_atomic(os.path.join(normal_dir, MEMO_NAME), memo, mode=0o600, keep_attrs=False)
    return True


def _record_code(journal: list[Observation]) -> None:
    """The interpreter and this package's modules, so that a changed one is a changed input."""
    observed.read(journal, "identity", sys.executable)
    for directory, subdirs, files in os.walk(_package_dir()):
        subdirs[:] = sorted(d for d in subdirs if d != "__pycache__")
        observed.read(journal, "listdir", directory)
        for name in sorted(files):
            if name.endswith(".py"):
                observed.read(journal, "identity", os.path.join(directory, name))


def replay(normal_dir: str, memo_path: str) -> int | None:
    """Write the output of the memo at `memo_path` into `normal_dir` if it holds: its stamp is
    this process's and every read returns the same. The number of files and links written, or
    None when the full generator must run."""
    memo = load(memo_path)
    if memo is None:
        return None
    memo_stamp, journal, outputs, said = memo
    if memo_stamp != stamp() or not observed.holds(journal):
        return None
    targets = [os.path.join(normal_dir, relpath) for relpath, _, _ in outputs]
    # The full generator's rules decide about anything already there (another generator's
    # unit of the same name): it runs instead.
    if any(os.path.lexists(target) for target in targets):
        return None
    for (_, text, link_to), target in zip(outputs, targets, strict=True):
        if link_to is None:
            write_atomic(target, text)
        else:
            symlink_atomic(target, link_to)
    kmsg(INFO, IDENT, f"{REPLAYED} ({memo_path}): its output written again")
    for level, message in said:
        kmsg(level, IDENT, message)
    return len(outputs)


def load(path: str) -> tuple[Any, ...] | None:
    """The memo at `path` if it is trusted and well formed, else None."""
    raw = _trusted_bytes(path)
    return None if raw is None else _parse(raw)


def _trusted_bytes(path: str) -> bytes | None:
    """The file at `path` if it is trusted as a memo (owner, modes, bounded), else None."""
    try:
        if mode_problems(path) or os.stat(path).st_mode & 0o077:
            return None
        return read_regular(path, MEMO_MAX)
    except OSError:
        return None


def _parse(raw: bytes) -> tuple[Any, ...] | None:
    """The memo in `raw` if it is well formed, else None."""
    if not raw.startswith(MAGIC):
        return None
    try:
        memo = marshal.loads(raw[len(MAGIC) :])
    except (EOFError, ValueError, TypeError):
        return None
    return memo if _well_formed(memo) else None


def _well_formed(memo: Any) -> bool:
    if not (isinstance(memo, tuple) and len(memo) == 4):
        return False
    _, journal, outputs, said = memo
    return (
        isinstance(journal, list)
        and all(_observation(entry) for entry in journal)
        and isinstance(outputs, list)
        and all(_output(entry) for entry in outputs)
        and isinstance(said, list)
        and all(
            isinstance(e, tuple) and len(e) == 2 and type(e[0]) is int and isinstance(e[1], str)
            for e in said
        )
    )


def _observation(entry: Any) -> bool:
    return (
        isinstance(entry, tuple)
        and len(entry) == 3
        and entry[0] in observed.READERS
        and isinstance(entry[1], tuple)
        and isinstance(entry[2], tuple)
    )


def _output(entry: Any) -> bool:
    if not (isinstance(entry, tuple) and len(entry) == 3):
        return False
    relpath, text, link_to = entry
    if not (isinstance(relpath, str) and isinstance(text, str)):
        return False
    if link_to is not None and not isinstance(link_to, str):
        return False
    parts = relpath.split("/")
    return "\0" not in relpath and all(p not in ("", ".", "..") for p in parts)


def keep_memo(root: str = "/") -> bool:
    """Keep the memo the generator left at this boot in KEPT, for the next boot to replay.
    False when there is none (the generator replayed, or its inputs changed during its run)
    or KEPT holds it already. OSError when KEPT cannot be written."""
    source = os.path.join(root, SYSTEM_GENERATOR_DIR.lstrip("/"), MEMO_NAME)
    memo = _trusted_bytes(source)  # read once: the bytes checked are the bytes kept
    if memo is None or _parse(memo) is None:
        return False
    kept = os.path.join(root, KEPT.lstrip("/"))
    try:
        if read_regular(kept, MEMO_MAX) == memo:
            return False
    except OSError:
        pass
    # 0755 whatever the umask: a group-writable directory would make load() distrust it.
    os.makedirs(os.path.dirname(kept), mode=0o755, exist_ok=True)
    write_atomic(kept, memo, mode=0o600, keep_attrs=False)
    return True


def main(argv: list[str]) -> int:
    """The generator's entry point: the memo's output when it holds, else the full generator."""
    if len(argv) in (1, 3):
        memo = os.path.join(root_from_environ(), KEPT.lstrip("/"))
        try:
            if replay(argv[0], memo) is not None:
                return 0
        except Exception:  # never fail the boot: the full generator writes everything again
            pass
    from vfs_agent.systemd.generator import main as generate_in_full

    return generate_in_full(argv)
