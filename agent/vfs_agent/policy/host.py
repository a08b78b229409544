"""The host's policy layers: the systemd credential `vfs-agent.policy` and the kernel command
line's `vfs_agent.mount=` arguments (policy/layers.py says where they sit).

Whoever writes the VM definition controls them, and a mistake there must not stop the boot:
each problem is returned as a warning (file:line:col like the files' errors, naming the
credential or the argument) and the bad part is left out: a whole credential, or one argument.
"""

from __future__ import annotations

from vfs_agent.policy.cmdline import KEY, mount_arguments, parse_value
from vfs_agent.policy.files import POLICY_MAX
from vfs_agent.policy.layers import Layer, LayerKind
from vfs_agent.policy.load import PolicyError, PolicyProblem, parse_text, validate_data
from vfs_agent.policy.schema import to_section
from vfs_agent.policy.types import FileSection
from vfs_agent.system.safe_io import read_regular
from vfs_agent.system.sysroot import SysRoot


def load_host_layer(sysroot: SysRoot, layer: Layer) -> tuple[FileSection | None, list[str]]:
    """The layer's section (None when nothing of it is usable) and the warnings."""
    if layer.kind is LayerKind.CREDENTIAL:
        return _credential(sysroot, layer)
    return _cmdline(sysroot, layer)


def _credential(sysroot: SysRoot, layer: Layer) -> tuple[FileSection | None, list[str]]:
    ignoring = f"{layer.name}: invalid, ignoring it; the other policy layers still apply."
    try:
        # Bounded and non-blocking like every policy file: a FIFO in its place cannot hang us.
        text = read_regular(sysroot.path(layer.path), POLICY_MAX).decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        return None, [f"{layer.name}: cannot read {layer.path}: {e}", ignoring]
    try:
        return to_section(layer.name, parse_text(text, layer.name)), []
    except PolicyError as e:
        return None, [*(str(p) for p in e.problems), ignoring]


def _cmdline(sysroot: SysRoot, layer: Layer) -> tuple[FileSection | None, list[str]]:
    """One rule per valid argument; a tag given twice keeps its first argument."""
    rules: list[dict[str, object]] = []
    columns: dict[str, int] = {}
    warnings: list[str] = []
    for arg in mount_arguments(sysroot.read_text(layer.path) or ""):

        def warn(message: str, column: int = arg.column, value: str = arg.value) -> None:
            problem = PolicyProblem(layer.name, 1, column, f"{KEY}={_printable(value)}", message)
            warnings.append(f"{problem}; ignoring this argument.")

        try:
            spec = parse_value(arg.value)
        except ValueError as e:
            warn(str(e))
            continue
        rule: dict[str, object] = {"tag": spec.tag, "path": spec.path}
        if spec.options:
            rule["options"] = list(spec.options)
        try:
            validate_data({"version": 1, "mounts": [rule]}, layer.name, arg.column)
        except PolicyError as e:
            for problem in e.problems:
                warn(f"{problem.field.removeprefix('mounts[0].')}: {problem.message}")
            continue
        if spec.tag in columns:
            warn(f"tag {spec.tag!r} is already given by the argument at column {columns[spec.tag]}")
            continue
        columns[spec.tag] = arg.column
        rules.append(rule)
    if not rules:
        return None, warnings
    parsed = validate_data({"version": 1, "mounts": rules}, layer.name, 1)
    return to_section(layer.name, parsed), warnings


def _printable(text: str) -> str:
    """The command line as a log line can carry it: control characters and bytes that are
    not UTF-8 (surrogate escapes) written as Python escapes."""
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)
