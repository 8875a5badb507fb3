"""The release axis: outcomes ordered by version, compressed into ranges, regressions found."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from harness.report.releases import (
    BLOCKED,
    FAIL,
    PASS,
    Outcome,
    Release,
    combine,
    outcome,
    regression,
    short,
    spans,
    spans_text,
)

OK, BAD, SKIP = Outcome(PASS), Outcome(FAIL, ("error",)), Outcome(BLOCKED, ("remote-code",))


def test_versions_sort_as_versions_and_lose_only_a_zero_patch():
    per_release = {Release("5.10.0"): OK, Release("5.9.0"): OK, Release("5.17.1"): BAD}
    assert spans_text(spans(per_release)) == "5.9–5.10 ✓ · 5.17.1 ✗"
    assert short("5.0.0") == "5.0" and short("5.24.0.dev0") == "5.24.0.dev0"


def test_the_issue_example_and_its_regression():
    per_release = {Release("5.17.0", "0.21.0"): OK, Release("5.23.0", "0.21.2"): OK,
                   Release("5.24.0", "0.21.2"): BAD}
    assert spans_text(spans(per_release)) == "5.17–5.23 ✓ · 5.24 ✗"
    found = regression(per_release)
    assert (found.last_passing.label(), found.first_failing.label()) == ("5.23", "5.24")


def test_first_failing_release_is_the_first_of_the_trailing_failures():
    per_release = {Release(v): o for v, o in
                   [("5.0.0", BAD), ("5.1.0", OK), ("5.2.0", BAD), ("5.3.0", SKIP), ("5.4.0", BAD)]}
    found = regression(per_release)
    assert (found.last_passing.label(), found.first_failing.label()) == ("5.1", "5.2")
    assert regression({Release("5.0.0"): BAD, Release("5.1.0"): OK}) is None  # fixed, not regressed
    assert regression({Release("5.0.0"): BAD, Release("5.1.0"): BAD}) is None  # never passed


def test_peft_is_split_out_only_where_it_changes_the_outcome():
    same = {Release("5.17.0", "0.21.0"): OK, Release("5.17.0", "0.21.2"): OK}
    assert spans_text(spans(same)) == "5.17 ✓"
    differ = {Release("5.17.0", "0.21.0"): OK, Release("5.17.0", "0.21.2"): BAD}
    assert spans_text(spans(differ)) == "5.17 (peft 0.21.0) ✓ · 5.17 (peft 0.21.2) ✗"


def test_outcomes_of_statuses_and_their_combination():
    assert outcome([("pass", None), ("xfail", "peft-unsupported")]) == Outcome(FAIL, ("peft-unsupported",))
    assert outcome([("pass", None), ("skip", "checkpoint-absent")]) == OK
    assert outcome([("skip", "remote-code")]) == SKIP and outcome([("skip", None)]) is None
    assert combine([SKIP, OK, None]) == OK and combine([OK, BAD]) == BAD and combine([None]) is None


@given(st.lists(st.tuples(st.integers(0, 30), st.sampled_from([OK, BAD, SKIP])), min_size=1, max_size=12))
def test_spans_cover_every_release_once_in_order(items):
    per_release = {Release(f"5.{minor}.0"): found for minor, found in items}
    text = spans_text(spans(per_release))
    minors = sorted(per_release, key=lambda r: r.key)
    # Adjacent spans never share a symbol, and the first and last releases are named.
    symbols = [s.symbol for s in spans(per_release)]
    assert all(a != b for a, b in zip(symbols, symbols[1:], strict=False))
    assert text.startswith(minors[0].label()) and minors[-1].label() in text.rsplit(" · ", 1)[-1]
