"""plan(discovery, policy, mount table) -> actions: what mount-all would do, and why.

Pure and deterministic: no I/O. Liveness of existing mounts is probed at the edge
(system/liveness.py) and passed in: `dead` (ENOTCONN, the device is gone) and `unresponsive` (no
answer: the host's daemon is gone while the device stays). Nothing is planned that would touch
an unresponsive mount or a path below it, so no executor can hang on one. While discovery sees
the kernel removing a virtio-fs device, no virtio-fs mount is planned either: every virtio-fs
mount(2) waits for that removal, which lasts until the guest reboots when the device's host
daemon died.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field, replace
from enum import StrEnum

from vfs_agent.core.mount_options import kernel_options, transport_problem
from vfs_agent.core.mountinfo import top_mounts
from vfs_agent.core.observation import SHARE_FSTYPES, Discovery, Mounted, Share
from vfs_agent.core.paths import derived_path, expand_path, path_problem
from vfs_agent.core.transport import Transport
from vfs_agent.policy.types import NonEmpty, Policy, RuleRef, TransportChoice, UnknownTags

TYPE_CHECKING = False  # typing itself costs the boot-time generator a few ms to import
if TYPE_CHECKING:
    from typing import Any


class ActionKind(StrEnum):
    MOUNT = "mount"  # mount the share at path
    KEEP = "keep"  # already mounted as planned
    UNMOUNT_STALE = "unmount-stale"  # lazily unmount a mount whose share is gone or dead
    IGNORE = "ignore"  # policy says leave it
    ABSENT = "absent"  # a rule names the tag, but no such share is attached
    CONFLICT = "conflict"  # two tags for one path, or the path holds another filesystem
    REFUSE = "refuse"  # unsafe path or unusable options
    UNRESPONSIVE = "unresponsive"  # the mount at (or above) the path does not answer: left alone
    HELD = "held"  # a virtio-fs mount that would wait for a device removal: not tried now


# Kinds that describe a mount the policy wants (generators write units/lines for these).
WANTED = frozenset(
    {
        ActionKind.MOUNT,
        ActionKind.KEEP,
        ActionKind.ABSENT,
        ActionKind.UNRESPONSIVE,
        ActionKind.HELD,
    }
)


@dataclass(frozen=True, kw_only=True)
class Action:
    """One decision of the plan; built by keyword only (thirteen fields, several of one type)."""

    kind: ActionKind
    tag: str
    reason: str
    path: str | None = None
    transport: Transport | None = None
    options: tuple[str, ...] = field(default=())
    required: bool = False
    rule: str | None = None  # which rule decided, for humans
    source_file: str | None = None  # the policy layer that decided (the rule's, or defaults')
    device_timeout: int | None = None  # seconds the boot waits for the share's device
    mount_timeout: int | None = None  # seconds the boot waits for the host to answer (virtio-fs)
    warning: str | None = None  # something a person should know, though the action goes on
    share_gone: bool = False  # UNMOUNT_STALE: its share is no longer attached (not just dead)

    def to_dict(self) -> dict[str, Any]:
        return {
            "action": self.kind.value,
            "tag": self.tag,
            "path": self.path,
            "transport": self.transport.value if self.transport else None,
            "options": list(self.options),
            "required": self.required,
            "rule": self.rule,
            "layer": self.source_file,
            "reason": self.reason,
            "warning": self.warning,
        }


@dataclass(frozen=True)
class _Want:
    """A mount the policy wants, before it is checked against paths and the mount table."""

    tag: str
    transport: Transport
    path: str
    options: tuple[str, ...]
    required: bool
    ref: RuleRef | None
    present: bool
    why: str
    device_timeout: int | None
    mount_timeout: int
    on_nonempty: NonEmpty
    layer: str  # the policy layer that decided: the rule's, or the one that set defaults.unknown


def plan(
    discovery: Discovery,
    policy: Policy,
    table: list[Mounted],
    dead: frozenset[str] = frozenset(),
    unresponsive: frozenset[str] = frozenset(),
    nonempty: frozenset[str] = frozenset(),
) -> list[Action]:
    """Decide, for every share and every rule, what to do. See ActionKind. `nonempty`: paths
    that are directories holding files (the edge looks at the paths of a first plan's mounts)."""
    actions: list[Action] = []
    wants: list[_Want] = []
    by_tag: dict[str, list[Share]] = defaultdict(list)
    for share in discovery.shares:
        by_tag[share.tag].append(share)

    for tag in sorted(by_tag):
        _decide_present(tag, by_tag[tag], policy, actions, wants)
    for ref in policy.exact_rules():
        if ref.rule.tag not in by_tag and not ref.rule.ignore:
            wants.append(_absent_want(ref, policy, discovery.complete))

    top = top_mounts(table)
    claimed: dict[str, list[_Want]] = defaultdict(list)
    for want in wants:
        problem = path_problem(want.path) or transport_problem(want.options, want.transport)
        if problem:
            actions.append(_action(ActionKind.REFUSE, want, f"refusing {want.path}: {problem}"))
        else:
            claimed[want.path].append(want)

    mounted_at: dict[tuple[str, str], list[str]] = defaultdict(list)
    for entry in top.values():
        mounted_at[(entry.fstype, entry.source)].append(entry.target)

    stale_done: set[str] = set()
    for path, group in claimed.items():
        if len({w.tag for w in group}) > 1:
            tags = ", ".join(repr(w.tag) for w in group)
            for want in group:
                actions.append(_action(ActionKind.CONFLICT, want, f"{path} is claimed by {tags}"))
            continue
        want = group[0]
        hung = _hung_mount(path, unresponsive) if want.present else None
        if hung is not None:
            actions.append(_action(ActionKind.UNRESPONSIVE, want, _hung_reason(hung)))
            continue
        elsewhere = [t for t in mounted_at[(want.transport.value, want.tag)] if t != path]
        if want.ref is None and elsewhere and want.present:
            # Only the default rule would mount it; it is in use already (the root filesystem
            # of a virtio-fs-root guest, an fstab line): do not mount it a second time.
            why = f"already mounted at {', '.join(elsewhere)}; no rule names this tag"
            actions.append(_ignored(want.tag, want.transport, why))
            continue
        actions += _against_table(want, top.get(path), dead, stale_done, path in nonempty)

    for entry in top.values():
        if entry.target in stale_done or entry.fstype not in SHARE_FSTYPES:
            continue
        gone = discovery.gone(entry)
        if entry.target in unresponsive and not gone:
            continue  # reported by status; only `umount --abort` may touch it
        if entry.target in dead or gone:
            why = "its share is gone" if gone else "it is dead (ENOTCONN)"
            actions.append(_stale(entry, Transport(entry.fstype), why, share_gone=gone))
    if discovery.removing:
        actions = [_held(a, discovery.removing) for a in actions]
    return sorted(actions, key=_order)


def _held(action: Action, removing: tuple[str, ...]) -> Action:
    """A virtio-fs mount, while the kernel removes a virtio-fs device, becomes HELD: its
    mount(2) would wait for that removal (for good when the device's host daemon died) and
    leave the caller, or a bounded child of it, in uninterruptible sleep."""
    if action.kind is not ActionKind.MOUNT or action.transport is not Transport.VIRTIOFS:
        return action
    return replace(action, kind=ActionKind.HELD, reason=held_reason(removing), warning=None)


def held_reason(removing: tuple[str, ...]) -> str:
    devices = ", ".join(removing)
    return (
        f"not mounted: the kernel is removing virtio-fs device {devices}, and every virtio-fs "
        "mount waits until that ends (retried then); if it stays, that device's host daemon "
        "died with requests in flight: reboot the guest"
    )


def _decide_present(
    tag: str, shares: list[Share], policy: Policy, actions: list[Action], wants: list[_Want]
) -> None:
    ref = policy.match(tag)
    described = ref.describe() if ref else None
    choice = ref.rule.transport if ref else TransportChoice.AUTO
    chosen = _choose_transport(shares, choice)
    for other in shares:
        if other is not chosen:
            why = (
                f"also exported over {chosen.transport.value}, which is used"
                if chosen
                else f"{described} asks for transport {choice.value}"
            )
            actions.append(_ignored(tag, other.transport, why, rule=described))
    if chosen is None:
        return
    if ref is not None and ref.rule.ignore:
        why = f"ignored by {described}"
        actions.append(_ignored(tag, chosen.transport, why, rule=described, layer=ref.file))
    elif ref is None and policy.defaults.unknown is UnknownTags.IGNORE:
        why = f"no rule names this tag and defaults.unknown is 'ignore' ({policy.unknown_from})"
        actions.append(_ignored(tag, chosen.transport, why, layer=policy.unknown_from))
    else:
        wants.append(_want(tag, chosen.transport, ref, policy, present=True))


def _choose_transport(shares: list[Share], choice: TransportChoice) -> Share | None:
    if choice is TransportChoice.AUTO:
        return min(shares, key=lambda s: s.transport is not Transport.VIRTIOFS)
    wanted = Transport(choice.value)
    return next((s for s in shares if s.transport is wanted), None)


def _want(
    tag: str, transport: Transport, ref: RuleRef | None, policy: Policy, *, present: bool
) -> _Want:
    if ref is None:
        path = derived_path(policy.defaults.mount_root, tag)
        why = f"defaults.unknown is 'mount' ({policy.unknown_from})"
    elif ref.rule.path:
        path, why = expand_path(ref.rule.path, tag), f"path from {ref.describe()}"
    else:
        path = derived_path(policy.defaults.mount_root, tag)
        why = f"{ref.describe()}, under defaults.mount_root"
    rule = ref.rule if ref else None
    options = kernel_options(policy.options_for(rule), transport)
    required = rule.required if rule else False
    timeout = policy.device_timeout_for(rule)
    answer = policy.mount_timeout_for(rule)
    nonempty = policy.on_nonempty_for(rule)
    layer = ref.file if ref else policy.unknown_from
    return _Want(
        tag, transport, path, options, required, ref, present, why, timeout, answer, nonempty, layer
    )


def _absent_want(ref: RuleRef, policy: Policy, complete: bool) -> _Want:
    """A rule naming a tag that discovery did not find. When discovery is incomplete (older
    kernel, lockdown) the tag may still exist, so it is treated as present and tried."""
    choice = ref.rule.transport
    transport = Transport.NINEP if choice is TransportChoice.NINEP else Transport.VIRTIOFS
    return _want(ref.rule.tag, transport, ref, policy, present=not complete)


def _against_table(
    want: _Want, entry: Mounted | None, dead: frozenset[str], stale_done: set[str], nonempty: bool
) -> list[Action]:
    if not want.present:
        named = want.ref.describe() if want.ref else "the policy"
        return [
            _action(ActionKind.ABSENT, want, f"named by {named}, but no such share is attached")
        ]
    if entry is None and nonempty:
        if want.on_nonempty is NonEmpty.REFUSE:
            why = f"refusing {want.path}: the directory is not empty (on_nonempty: refuse)"
            return [_action(ActionKind.REFUSE, want, why)]
        warning = f"{want.path} is not empty: its files are hidden while the share is mounted"
        return [replace(_action(ActionKind.MOUNT, want, want.why), warning=warning)]
    if entry is None:
        return [_action(ActionKind.MOUNT, want, want.why)]
    if entry.fstype == want.transport.value and entry.source == want.tag:
        if entry.target not in dead:
            return [_action(ActionKind.KEEP, want, f"already mounted ({want.why})")]
        stale_done.add(entry.target)
        return [
            _stale(entry, want.transport, "it is dead (ENOTCONN)", share_gone=False),
            _action(ActionKind.MOUNT, want, f"remount after a dead mount ({want.why})"),
        ]
    holder = f"{entry.fstype} {entry.source!r}"
    return [_action(ActionKind.CONFLICT, want, f"{want.path} already holds {holder}")]


def _hung_mount(path: str, unresponsive: frozenset[str]) -> str | None:
    """The unresponsive mount at `path` or at one of its parents, if any."""
    return next(
        (m for m in unresponsive if path == m or path.startswith(m.rstrip("/") + "/")), None
    )


def _hung_reason(hung: str) -> str:
    return (
        f"the mount at {hung} does not answer (has the host's virtio-fs daemon died?); "
        f"left alone; 'vfs-agent umount --abort {hung}' recovers it"
    )


def _ignored(
    tag: str, transport: Transport, why: str, *, rule: str | None = None, layer: str | None = None
) -> Action:
    return Action(
        kind=ActionKind.IGNORE,
        tag=tag,
        reason=why,
        transport=transport,
        rule=rule,
        source_file=layer,
    )


def _stale(entry: Mounted, transport: Transport, why: str, *, share_gone: bool) -> Action:
    """Unmount the mount `entry` (dead, or its share gone) before anything is mounted."""
    return Action(
        kind=ActionKind.UNMOUNT_STALE,
        tag=entry.source,
        reason=f"{entry.target}: {why}",
        path=entry.target,
        transport=transport,
        share_gone=share_gone,
    )


def _action(kind: ActionKind, want: _Want, reason: str) -> Action:
    return Action(
        kind=kind,
        tag=want.tag,
        reason=reason,
        path=want.path,
        transport=want.transport,
        options=want.options,
        required=want.required,
        rule=want.ref.describe() if want.ref else None,
        source_file=want.layer,
        device_timeout=want.device_timeout,
        mount_timeout=want.mount_timeout if want.transport is Transport.VIRTIOFS else None,
    )


_KIND_ORDER = {k: i for i, k in enumerate(ActionKind)}


def _order(action: Action) -> tuple[int, int, str, str]:
    """Stale unmounts first (deepest first), then mounts parents-before-children, then the rest."""
    depth = action.path.count("/") if action.path else 0
    if action.kind is ActionKind.UNMOUNT_STALE:
        return (0, -depth, action.path or "", action.tag)
    return (1 + _KIND_ORDER[action.kind], depth, action.path or "", action.tag)
