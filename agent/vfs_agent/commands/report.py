"""Text for people: plans, outcomes, status and the kernel report. (JSON comes from to_dict.)"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vfs_agent.system.kernel_features import KernelReport, ModuleState

if TYPE_CHECKING:  # types only: `kernel` needs no planner
    from vfs_agent.core.plan import Action
    from vfs_agent.core.status import ShareStatus
    from vfs_agent.execute.outcome import Outcome


def show(text: str) -> str:
    """A tag as a person should read it: quoted, with control and odd characters escaped."""
    return ascii(text) if not text.isprintable() or not text.isascii() else repr(text)


def table(rows: list[list[str]]) -> str:
    if not rows:
        return ""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = []
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines)


def plan_text(actions: list[Action]) -> str:
    if not actions:
        return "Nothing to do: no shares are attached and the policy names none."
    rows = [["ACTION", "TAG", "PATH", "OPTIONS", "WHY"]]
    for a in actions:
        why = f"{a.reason}; warning: {a.warning}" if a.warning else a.reason
        rows.append([a.kind.value, show(a.tag), a.path or "-", ",".join(a.options) or "-", why])
    return table(rows)


def outcomes_text(outcomes: list[Outcome]) -> str:
    lines = []
    for o in outcomes:
        mark = "ok  " if o.ok else ("FAIL" if o.fatal else "warn")
        lines.append(f"{mark} {o.action.kind.value:<13} {show(o.action.tag)}: {o.message}")
    changed = sum(o.changed for o in outcomes)
    failed = sum(not o.ok for o in outcomes)
    lines.append(f"{changed} changed, {failed} failed, {len(outcomes)} actions")
    return "\n".join(lines)


def kernel_text(r: KernelReport) -> str:
    def yes(value: bool | None) -> str:
        return "unknown" if value is None else ("yes" if value else "no")

    lines = [
        f"Kernel:            {r.release}",
        f"virtiofs:          {r.virtiofs.value}{' (usable)' if r.usable else ''}",
        f"9p:                {r.ninep.value}",
        f"Tags in sysfs:     {yes(r.sysfs_tags)} (/sys/fs/virtiofs)",
        f"virtio-fs devices: {', '.join(r.virtiofs_devices) or 'none'}",
        f"virtio-9p devices: {', '.join(r.ninep_devices) or 'none'}",
        f"DAX:               {yes(r.dax)}",
        f"Lockdown:          {r.lockdown or 'unknown'}",
    ]
    if r.problems:
        lines.append("")
        for p in r.problems:
            lines.append(f"* {p.message}")
            lines += [f"  {hint}" for hint in p.hint.splitlines()]
    return "\n".join(lines)


def kernel_summary(r: KernelReport) -> str:
    state = "usable" if r.usable else "NOT usable"
    note = " (module, loaded on demand)" if r.virtiofs is ModuleState.MODULE else ""
    return f"Kernel {r.release}: virtiofs {r.virtiofs.value}{note}, {state}"


def status_text(r: KernelReport, shares: list[ShareStatus]) -> str:
    lines = [kernel_summary(r), ""]
    if not shares:
        lines.append("No shares attached, and the policy names none.")
        return "\n".join(lines)
    rows = [["TAG", "TRANSPORT", "HEALTH", "MOUNTED AT", "DECIDED BY", "DETAIL"]]
    for s in shares:
        rows.append(
            [
                show(s.tag),
                s.transport.value if s.transport else "-",
                s.health.value,
                ", ".join(s.mounted_at) or "-",
                s.layer or "-",
                s.detail,
            ]
        )
    lines.append(table(rows))
    return "\n".join(lines)
