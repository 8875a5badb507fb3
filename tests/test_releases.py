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


def test_a_range_and_a_regression_hold_peft_fixed():
    per_release = {Release("5.17.0", "0.21.0"): OK, Release("5.23.0", "0.21.2"): OK,
                   Release("5.24.0", "0.21.2"): BAD}
    assert spans_text(spans(per_release)) == "5.17 ✓ (peft 0.21.0); 5.23 ✓ · 5.24 ✗ (peft 0.21.2)"
    found = regression(per_release)
    assert (found.last_passing.label(), found.first_failing.label()) == ("5.23", "5.24")
    assert found.text == ("fails from transformers **5.24** with peft 0.21.2 "
                          "(passed on 5.23, the others the same)")


def test_records_of_another_peft_torch_or_device_are_never_one_regression_line():
    """A pass on one peft (torch, device) and a failure on another are two lines, not a regression."""
    assert regression({Release("5.15.0", "0.21.2"): OK, Release("5.17.0", "0.21.0"): BAD}) is None
    assert regression({Release("5.15.0", "0.21.2", "2.11.0+cu130", "cpu"): OK,
                       Release("5.24.0", "0.21.2", "2.13.0+cpu", "cpu"): BAD}) is None
    assert regression({Release("5.15.0", "0.21.2", "2.11.0", "cpu"): OK,
                       Release("5.24.0", "0.21.2", "2.11.0", "NVIDIA H100"): BAD}) is None
    line = {Release("5.15.0", "0.21.2", "2.11.0", "cpu"): OK,
            Release("5.24.0", "0.21.2", "2.11.0", "cpu"): BAD,
            Release("5.25.0", "0.21.2", "2.13.0", "cpu"): BAD}
    found = regression(line)
    assert (found.last_passing.torch, found.first_failing.torch, found.first_failing.label()) == (
        "2.11.0", "2.11.0", "5.24")
    assert spans_text(spans(line)) == ("5.15 ✓ · 5.24 ✗ (peft 0.21.2, torch 2.11.0, cpu); "
                                       "5.25 ✗ (peft 0.21.2, torch 2.13.0, cpu)")


def test_first_failing_release_is_the_first_of_the_trailing_failures():
    per_release = {Release(v): o for v, o in
                   [("5.0.0", BAD), ("5.1.0", OK), ("5.2.0", BAD), ("5.3.0", SKIP), ("5.4.0", BAD)]}
    found = regression(per_release)
    assert (found.last_passing.label(), found.first_failing.label()) == ("5.1", "5.2")
    assert regression({Release("5.0.0"): BAD, Release("5.1.0"): OK}) is None  # fixed, not regressed
    assert regression({Release("5.0.0"): BAD, Release("5.1.0"): BAD}) is None  # never passed


def test_lines_that_differ_only_in_peft_are_one_peft_line_in_peft_ranges():
    same = {Release("5.17.0", "0.21.0"): OK, Release("5.17.0", "0.21.2"): OK}
    assert spans_text(spans(same)) == "peft 0.21.0–0.21.2 ✓ (transformers 5.17)"
    differ = {Release("5.17.0", "0.21.0"): OK, Release("5.17.0", "0.21.2"): BAD}
    assert spans_text(spans(differ)) == "peft 0.21.0 ✓ · peft 0.21.2 ✗ (transformers 5.17)"
    # a peft sweep beside a transformers line: the transformers line keeps its own ranges, and a
    # peft release seen on one transformers release only is never joined with another torch's
    mixed = {Release("5.24.0", "0.21.2", "2.13", "cpu"): OK, Release("5.25.0", "0.21.2", "2.13", "cpu"): BAD,
             Release("5.25.0", "0.17.0", "2.13", "cpu"): BAD, Release("5.25.0", "0.18.0", "2.13", "cpu"): OK,
             Release("5.25.0", "0.18.0", "2.11", "cpu"): OK}
    assert spans_text(spans(mixed)) == (
        "5.25 ✓ (peft 0.18.0, torch 2.11, cpu); 5.24 ✓ · 5.25 ✗ (peft 0.21.2, torch 2.13, cpu); "
        "peft 0.17.0 ✗ · peft 0.18.0 ✓ (transformers 5.25, torch 2.13, cpu)")


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
