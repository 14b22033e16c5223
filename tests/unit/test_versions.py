"""Package versions: parsing, the refusals and their reasons, SemVer precedence."""
from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.packaging.versions import MAX_LENGTH, Version, parse_or_none


@pytest.mark.parametrize("text, full", [
    ("1", "1.0.0"), ("1.0", "1.0.0"), ("1.0.0", "1.0.0"), ("0.0.0", "0.0.0"),
    ("10.20.30", "10.20.30"), ("1.2-rc1", "1.2.0-rc1"), ("1.2.0-rc.1", "1.2.0-rc.1"),
    ("1.0.0-alpha-beta", "1.0.0-alpha-beta"), ("2.0+build.7", "2.0.0+build.7"),
    ("1.0.0-0.3.7+exp.sha.5114f85", "1.0.0-0.3.7+exp.sha.5114f85"),
    ("1.0.0+001", "1.0.0+001"),  # leading zeros are allowed in build metadata
])
def test_versions_parse_with_missing_parts_as_zero(text, full):
    assert str(Version.parse(text)) == full
    assert Version.parse(full) == Version.parse(text)


def test_missing_parts_are_zero_and_equal_versions_hash_alike():
    assert Version.parse("1") == Version.parse("1.0") == Version.parse("1.0.0")
    assert len({Version.parse("1"), Version.parse("1.0"), Version.parse("1.0.0")}) == 1
    assert Version.parse("1.2.3").release == (1, 2, 3)


@pytest.mark.parametrize("text, reason", [
    ("", "empty"),
    ("v1.0", "without the leading 'v'"),
    ("1.2.3.4", "at most three"),
    ("1.x", "'x' is not a number"),
    ("1..2", "'' is not a number"),
    ("latest", "'latest' is not a number"),
    ("1.02", "leading zero"),
    ("1.0.0-01", "leading zero"),
    ("1.0.0-", "none empty"),
    ("1.0.0-rc..1", "none empty"),
    ("1.0.0+", "none empty"),
    ("1.0.0-rc_1", "'rc_1' is not"),
    ("1.0.0+bü", "is not"),
    ("1.٣", "is not a number"),  # a non-ASCII digit
    (" 1.0", "is not a number"),
    ("1" * (MAX_LENGTH + 1), f"more than {MAX_LENGTH}"),
])
def test_what_does_not_parse_is_refused_with_the_reason(text, reason):
    with pytest.raises(ValueError) as info:
        Version.parse(text)
    assert reason in str(info.value)
    assert parse_or_none(text) is None


def test_semvers_own_precedence_example_is_kept():
    # semver.org 2.0.0, item 11: each is lower than the next.
    ordered = ["1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-beta",
               "1.0.0-beta.2", "1.0.0-beta.11", "1.0.0-rc.1", "1.0.0", "1.0.1", "1.1",
               "2.0.0-rc1", "2", "10.0.0"]
    versions = [Version.parse(v) for v in ordered]
    for lower, higher in itertools.pairwise(versions):
        assert lower < higher and higher > lower and lower != higher, (lower, higher)
    assert sorted(reversed(versions)) == versions


def test_prereleases_are_marked_and_below_their_release():
    assert Version.parse("1.2.0-rc1").is_prerelease
    assert not Version.parse("1.2.0+rc1").is_prerelease
    assert Version.parse("1.2.0-rc1") < Version.parse("1.2.0") < Version.parse("1.2.1-rc1")
    assert max(Version.parse(v) for v in ("1.2.0", "1.3.0-rc1", "1.1.9")) == \
        Version.parse("1.3.0-rc1")


def test_build_metadata_takes_no_part_in_precedence_but_is_shown():
    a, b = Version.parse("1.2.0+a"), Version.parse("1.2.0+b")
    assert a == b == Version.parse("1.2") and not a < b and not b < a
    assert hash(a) == hash(b)
    assert (str(a), str(b)) == ("1.2.0+a", "1.2.0+b")
    assert Version.parse("1.2.0-rc1+z") < Version.parse("1.2.0+a")


def test_comparison_with_other_types_is_not_defined():
    assert Version.parse("1") != "1"
    with pytest.raises(TypeError):
        _ = Version.parse("1") < "2"  # type: ignore[operator]


_numbers = st.integers(min_value=0, max_value=10**6)
_identifier = st.one_of(
    st.integers(min_value=0, max_value=10**4).map(str),
    st.from_regex(r"[A-Za-z-][0-9A-Za-z-]{0,5}", fullmatch=True))
_text = st.builds(
    lambda release, pre, build: ".".join(map(str, release))
    + ("-" + ".".join(pre) if pre else "") + ("+" + ".".join(build) if build else ""),
    st.lists(_numbers, min_size=1, max_size=3),
    st.lists(_identifier, max_size=3),
    st.lists(_identifier, max_size=2))


@settings(max_examples=300, deadline=None)
@given(a=st.tuples(_numbers, _numbers, _numbers), b=st.tuples(_numbers, _numbers, _numbers))
def test_releases_order_as_their_number_tuples(a, b):
    va, vb = Version.parse("%d.%d.%d" % a), Version.parse("%d.%d.%d" % b)
    assert (va < vb, va == vb, va > vb) == (a < b, a == b, a > b)


@settings(max_examples=300, deadline=None)
@given(texts=st.lists(_text, min_size=3, max_size=3))
def test_ordering_is_a_total_order_consistent_with_its_sort_key(texts):
    a, b, c = (Version.parse(t) for t in texts)
    for x, y in ((a, b), (b, c), (a, c)):
        # Exactly one of <, ==, > holds, and it is the sort keys' tuple comparison.
        assert [x < y, x == y, x > y].count(True) == 1
        assert (x < y, x == y) == (x.sort_key() < y.sort_key(), x.sort_key() == y.sort_key())
        if x == y:
            assert hash(x) == hash(y)
    if a <= b and b <= c:
        assert a <= c  # transitive
    # The text round-trips through its full form, to an equal version.
    assert Version.parse(str(a)) == a and str(Version.parse(str(a))) == str(a)
