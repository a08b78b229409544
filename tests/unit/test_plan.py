import random

from vfs_agent.core.observation import Discovery, Mounted, Share, Source
from vfs_agent.core.plan import ActionKind, plan
from vfs_agent.core.transport import Transport
from vfs_agent.policy.document import parse_text
from vfs_agent.policy.pydantic_compat import field_names
from vfs_agent.policy.schema import PolicyFile, to_section
from vfs_agent.policy.types import Rule, RuleRef, merge

V = Transport.VIRTIOFS


def pol(*docs: str):
    return merge(
        [
            to_section(f"/etc/vfs-agent/{i}.yaml", parse_text(d, f"{i}.yaml"))
            for i, d in enumerate(docs)
        ]
    )


def shares(*tags: str, transport: Transport = V, complete: bool = True) -> Discovery:
    return Discovery(tuple(Share(t, transport, f"virtio{i}") for i, t in enumerate(tags)), complete)


def mounted(fstype: str, source: str, target: str, mid: int = 100) -> Mounted:
    return Mounted(mid, 1, target, fstype, source)


def by_tag(actions):
    return {(a.tag, a.kind): a for a in actions}


MEDIA = """
version: 1
mounts:
  - tag: media_tag
    path: /mnt/media
    options: [ro]
"""


def test_rule_path_and_options_default_nosuid_nodev():
    actions = plan(shares("media_tag", "other"), pol(MEDIA), [])
    media = by_tag(actions)[("media_tag", ActionKind.MOUNT)]
    assert media.path == "/mnt/media"
    assert media.options == ("nosuid", "nodev", "ro")
    assert "rule 1" in media.reason
    # Zero-config: a tag no rule names goes to <mount_root>/<tag> with the default options.
    other = by_tag(actions)[("other", ActionKind.MOUNT)]
    assert (other.path, other.options) == ("/mnt/virtiofs/other", ("nosuid", "nodev"))
    assert other.reason == "defaults.unknown is 'mount' (the built-in default)"
    assert other.source_file == "the built-in default"


def test_unknown_ignore_leaves_unnamed_tags_alone():
    actions = plan(
        shares("media_tag", "other"), pol(MEDIA, "version: 1\ndefaults: {unknown: ignore}\n"), []
    )
    assert by_tag(actions)[("media_tag", ActionKind.MOUNT)].path == "/mnt/media"
    assert by_tag(actions)[("other", ActionKind.IGNORE)].path is None
    assert not any(a.tag == "other" and a.kind is ActionKind.MOUNT for a in actions)


def test_unknown_mount_confines_hostile_tags():
    policy = pol("version: 1\ndefaults: {unknown: mount}\n")
    tags = ["../escape", "..", "weird tag#1", "ünï", "a/b", ".hidden"]
    actions = plan(shares(*tags), policy, [])
    paths = {a.tag: a.path for a in actions if a.kind is ActionKind.MOUNT}
    assert set(paths) == set(tags)
    for path in paths.values():
        assert path.startswith("/mnt/virtiofs/")
        component = path.removeprefix("/mnt/virtiofs/")
        assert "/" not in component and component not in (".", "..")
        assert not component.startswith(".")
    assert paths["weird tag#1"] == "/mnt/virtiofs/weird%20tag%231"
    assert len(set(paths.values())) == len(tags)


def test_already_mounted_is_kept_so_a_second_run_changes_nothing():
    policy = pol(MEDIA)
    first = plan(shares("media_tag"), policy, [])
    assert [a.kind for a in first] == [ActionKind.MOUNT]
    second = plan(shares("media_tag"), policy, [mounted("virtiofs", "media_tag", "/mnt/media")])
    assert [a.kind for a in second] == [ActionKind.KEEP]


def test_two_tags_for_one_path_is_a_conflict_for_both():
    policy = pol("""
version: 1
mounts:
  - {tag: a, path: /srv/x}
  - {tag: b, path: /srv/x}
""")
    actions = plan(shares("a", "b"), policy, [])
    assert [a.kind for a in actions] == [ActionKind.CONFLICT, ActionKind.CONFLICT]
    assert "'a', 'b'" in actions[0].reason


def test_path_used_by_another_filesystem_is_a_conflict():
    actions = plan(shares("media_tag"), pol(MEDIA), [mounted("ext4", "/dev/vdb", "/mnt/media")])
    assert actions[0].kind is ActionKind.CONFLICT
    assert "ext4" in actions[0].reason


def test_unsafe_path_from_an_explicit_rule_is_refused():
    policy = pol(MEDIA)
    rule = Rule(tag="media_tag", path="/etc/evil")
    policy = type(policy)(policy.defaults, (RuleRef(rule, "cli", 0), *policy.rules), policy.files)
    actions = plan(shares("media_tag"), policy, [])
    assert actions[0].kind is ActionKind.REFUSE
    assert "/etc" in actions[0].reason


def test_data_option_for_the_wrong_transport_is_refused():
    policy = pol("version: 1\nmounts:\n  - {tag: t, options: [msize=1024]}\n")
    actions = plan(shares("t"), policy, [])
    assert actions[0].kind is ActionKind.REFUSE
    assert "does not apply to virtiofs" in actions[0].reason


def test_absent_rule_tag_is_reported_and_tried_when_discovery_is_incomplete():
    policy = pol("version: 1\nmounts:\n  - {tag: gone, path: /srv/gone, required: true}\n")
    actions = plan(shares(), policy, [])
    assert actions[0].kind is ActionKind.ABSENT and actions[0].required
    tried = plan(shares(complete=False), policy, [])
    assert tried[0].kind is ActionKind.MOUNT and tried[0].path == "/srv/gone"


def test_mount_of_a_gone_share_is_stale_only_when_discovery_is_complete():
    table = [mounted("virtiofs", "unplugged", "/mnt/virtiofs/unplugged")]
    actions = plan(shares(), pol("version: 1\n"), table)
    assert [(a.kind, a.path, a.share_gone) for a in actions] == [
        (ActionKind.UNMOUNT_STALE, "/mnt/virtiofs/unplugged", True)
    ]
    assert plan(shares(complete=False), pol("version: 1\n"), table) == []


def test_dead_mount_of_a_present_share_is_unmounted_then_mounted_again():
    table = [mounted("virtiofs", "media_tag", "/mnt/media")]
    actions = plan(shares("media_tag"), pol(MEDIA), table, dead=frozenset({"/mnt/media"}))
    assert [a.kind for a in actions] == [ActionKind.UNMOUNT_STALE, ActionKind.MOUNT]
    assert not actions[0].share_gone  # its device is still there


def test_only_the_mount_of_a_share_no_longer_attached_is_marked_gone():
    # Which stale mounts systemd unmounts itself as the share's device goes (execute/route.py).
    table = [mounted("virtiofs", "here", "/mnt/here"), mounted("virtiofs", "away", "/mnt/away")]
    ignore = pol("version: 1\ndefaults: {unknown: ignore}\n")
    actions = plan(shares("here"), ignore, table, dead=frozenset({"/mnt/here", "/mnt/away"}))
    stale = [(a.path, a.share_gone) for a in actions if a.kind is ActionKind.UNMOUNT_STALE]
    assert sorted(stale) == [("/mnt/away", True), ("/mnt/here", False)]


def test_dropin_rules_override_and_defaults_merge_key_by_key():
    main = (
        "version: 1\ndefaults: {mount_root: /srv/shares, unknown: mount}\n"
        "mounts:\n  - {tag: t, path: /srv/a}\n"
    )
    dropin = "version: 1\ndefaults: {options: [noexec]}\nmounts:\n  - {tag: t, path: /srv/b}\n"
    policy = pol(main, dropin)
    assert policy.defaults.mount_root == "/srv/shares"
    assert policy.defaults.options == ("noexec",)
    actions = by_tag(plan(shares("t", "u"), policy, []))
    assert actions[("t", ActionKind.MOUNT)].path == "/srv/b"
    assert actions[("u", ActionKind.MOUNT)].path == "/srv/shares/u"
    assert actions[("u", ActionKind.MOUNT)].options == ("noexec",)


def test_first_matching_rule_in_a_file_wins_and_globs_expand_the_encoded_tag():
    policy = pol("""
version: 1
mounts:
  - {tag: "private-*", ignore: true}
  - {tag: "*", path: "/srv/{tag}"}
""")
    actions = by_tag(plan(shares("private-1", "data 1"), policy, []))
    assert ("private-1", ActionKind.IGNORE) in actions
    assert actions[("data 1", ActionKind.MOUNT)].path == "/srv/data%201"


def test_auto_transport_prefers_virtiofs_and_rule_can_choose_9p():
    both = Discovery(
        (Share("t", Transport.NINEP, "virtio1", Source.NINEP_SYSFS), Share("t", V, "virtio2")), True
    )
    auto = plan(both, pol("version: 1\nmounts: [{tag: t}]\n"), [])
    mount = next(a for a in auto if a.kind is ActionKind.MOUNT)
    assert mount.transport is V
    ninep = plan(both, pol("version: 1\nmounts: [{tag: t, transport: 9p}]\n"), [])
    mount = next(a for a in ninep if a.kind is ActionKind.MOUNT)
    assert mount.transport is Transport.NINEP
    assert "trans=virtio" in mount.options and "version=9p2000.L" in mount.options


def test_parents_are_mounted_before_children_and_the_plan_is_deterministic():
    policy = pol("""
version: 1
mounts:
  - {tag: child, path: /srv/a/b/c}
  - {tag: parent, path: /srv/a}
  - {tag: mid, path: /srv/a/b}
""")
    tags = ["child", "parent", "mid"]
    expected = plan(shares(*tags), policy, [])
    assert [a.tag for a in expected] == ["parent", "mid", "child"]
    for _ in range(5):
        random.shuffle(tags)
        assert plan(shares(*tags), policy, []) == expected


def test_policy_file_model_rejects_unknown_keys():
    assert field_names(PolicyFile) == ["version", "defaults", "mounts"]


def test_the_default_rule_leaves_a_share_mounted_elsewhere_alone_but_a_rule_does_not():
    table = [mounted("virtiofs", "rootfs", "/"), mounted("virtiofs", "media_tag", "/data", 101)]
    policy = pol(MEDIA + "defaults: {unknown: mount}\n")
    actions = by_tag(plan(shares("rootfs", "media_tag"), policy, table))
    assert "already mounted at /" in actions[("rootfs", ActionKind.IGNORE)].reason
    assert actions[("media_tag", ActionKind.MOUNT)].path == "/mnt/media"  # named by a rule
