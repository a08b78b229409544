"""Policy.match: the first rule in match order whose pattern matches, found by lookup for exact
tags and by globs compiled once, with the same answer as trying every rule in order."""

from hypothesis import given, settings
from hypothesis import strategies as st

from vfs_agent.policy.types import DefaultsPatch, FileSection, Policy, Rule, RuleRef, merge

ALPHABET = "ab-*?[]!x"
patterns = st.text(alphabet=ALPHABET, min_size=1, max_size=5)
tags = st.text(alphabet="ab-*?[]!x", min_size=1, max_size=5)


def first_match(policy: Policy, tag: str) -> RuleRef | None:
    """The definition: try every rule in match order."""
    return next((ref for ref in policy.rules if ref.rule.matches(tag)), None)


def two_files(main: list[str], dropin: list[str]) -> Policy:
    return merge(
        [
            FileSection("main.yaml", DefaultsPatch(), tuple(Rule(t) for t in main)),
            FileSection("drop.yaml", DefaultsPatch(), tuple(Rule(t) for t in dropin)),
        ]
    )


@settings(max_examples=400, deadline=None)
@given(st.lists(patterns, max_size=8), st.lists(patterns, max_size=4), st.lists(tags, max_size=8))
def test_match_is_the_first_matching_rule_in_order(main, dropin, probe):
    policy = two_files(main, dropin)
    for tag in [*probe, *main, *dropin]:
        assert policy.match(tag) == first_match(policy, tag), tag


def test_a_glob_before_an_exact_rule_wins_and_one_after_it_does_not():
    policy = two_files(["data-1", "data-*"], ["data-?"])
    ref = policy.match("data-1")
    assert ref is not None and (ref.file, ref.rule.tag) == ("drop.yaml", "data-?")
    policy = two_files(["data-*"], ["data-1"])
    ref = policy.match("data-1")
    assert ref is not None and (ref.file, ref.rule.tag) == ("drop.yaml", "data-1")


def test_a_pattern_also_matches_its_own_text():
    policy = two_files(["[ab]"], [])
    assert policy.match("[ab]") is not None  # the literal tag, as Rule.matches says
    assert policy.match("a") is not None
    assert policy.match("c") is None


def test_exact_tags_are_looked_up_not_tried_one_by_one(monkeypatch):
    policy = two_files([f"share-{i}" for i in range(1000)], ["data-*"])
    calls = []
    original = Rule.matches

    def counting(self: Rule, tag: str) -> bool:
        calls.append(self.tag)
        return original(self, tag)

    monkeypatch.setattr(Rule, "matches", counting)
    ref = policy.match("share-999")
    assert ref is not None and ref.rule.tag == "share-999"
    assert calls == ["data-*"]  # only the glob that comes first in match order
    calls.clear()
    assert policy.match("nothing") is None
    assert calls == ["data-*"]
