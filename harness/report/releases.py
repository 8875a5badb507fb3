"""The release axis: on which releases of transformers (and peft) cells passed and failed.

A verdict without its releases misleads: "passed with transformers >= 5.17" promises every later
release, and a fresh install takes the newest one. So the docs state, per row and per column,
the releases the records show, compressed into ranges of equal outcome:

    5.17–5.23 ✓ · 5.24 ✗

A range joins releases that the records show next to each other (by version order) with the
same outcome; releases in between that no record ran are not claimed. A release is written
without a zero patch ("5.17.0" -> "5.17"). peft is named only where it matters: when two
peft releases under one transformers release have different outcomes, that release is split
("5.17 (peft 0.21.0) ✓ · 5.17 (peft 0.21.2) ✗").

A regression is a cell (or a group of cells) whose newest release fails while an earlier
release passed; its first failing release is the first of the trailing run of failures.
Nothing here knows about records or pandas: render builds the outcomes, this module orders,
compresses and judges them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from packaging.version import InvalidVersion, Version

PASS, FAIL, BLOCKED = "✓", "✗", "⊘"
RAN = ("pass", "fail", "xfail")
FAILED = ("fail", "xfail")


def version_key(text: str | None) -> tuple:
    """Sort key of a version string; unparsable ones ("None") sort before every release."""
    try:
        return (1, Version(str(text)))
    except InvalidVersion:
        return (0, str(text))


def short(version: str | None) -> str:
    """'5.17.0' -> '5.17'; any other spelling is kept."""
    return re.sub(r"^(\d+\.\d+)\.0$", r"\1", str(version))


@dataclass(frozen=True)
class Release:
    """The library releases a record ran with (the axis the docs compress)."""

    transformers: str
    peft: str | None = None

    @property
    def key(self) -> tuple:
        return (version_key(self.transformers), version_key(self.peft))

    def label(self, with_peft: bool = False) -> str:
        text = short(self.transformers)
        return f"{text} (peft {self.peft})" if with_peft and self.peft else text


@dataclass(frozen=True)
class Outcome:
    """What a set of cells showed: ✓ every one that ran passed, ✗ one failed (its categories;
    an xfail, a declared known limit, is a failure too), ⊘ none could run here (the reason)."""

    symbol: str
    categories: tuple[str, ...] = ()

    @property
    def text(self) -> str:
        return f"{self.symbol} {', '.join(self.categories)}" if self.categories else self.symbol


def outcome(results: Iterable[tuple[str, str | None]]) -> Outcome | None:
    """The outcome of (status, category) pairs; None when nothing ran or was blocked."""
    results = list(results)
    failed = sorted({category or status for status, category in results if status in FAILED})
    if failed:
        return Outcome(FAIL, tuple(failed))
    if any(status == "pass" for status, _ in results):
        return Outcome(PASS)
    blocked = sorted({category for status, category in results if status == "skip" and category})
    return Outcome(BLOCKED, tuple(blocked)) if blocked else None


def combine(outcomes: Iterable[Outcome | None]) -> Outcome | None:
    """Several outcomes as one: a failure wins, then a pass, then a blocked run."""
    found = [o for o in outcomes if o is not None]
    for symbol in (FAIL, PASS, BLOCKED):
        same = [o for o in found if o.symbol == symbol]
        if same:
            return Outcome(symbol, tuple(sorted({c for o in same for c in o.categories})))
    return None


def ordered(per_release: Mapping[Release, Outcome | None]) -> list[tuple[Release, Outcome]]:
    return sorted(((r, o) for r, o in per_release.items() if o is not None), key=lambda item: item[0].key)


@dataclass(frozen=True)
class Span:
    """Adjacent releases (as the records show them) with one outcome symbol."""

    first: str
    last: str
    symbol: str

    @property
    def text(self) -> str:
        releases = self.first if self.first == self.last else f"{self.first}–{self.last}"
        return f"{releases} {self.symbol}"


def labelled(per_release: Mapping[Release, Outcome | None]) -> list[tuple[str, str]]:
    """(release label, symbol) in version order, peft named only where it changes the outcome."""
    by_transformers: dict[str, list[tuple[Release, Outcome]]] = {}
    for release, found in ordered(per_release):
        by_transformers.setdefault(release.transformers, []).append((release, found))
    out = []
    for items in by_transformers.values():
        if len({found.symbol for _, found in items}) == 1:
            out.append((items[0][0].label(), combine(found for _, found in items).symbol))
        else:
            out.extend((release.label(with_peft=True), found.symbol) for release, found in items)
    return out


def spans(per_release: Mapping[Release, Outcome | None]) -> list[Span]:
    out: list[Span] = []
    for label, symbol in labelled(per_release):
        if out and out[-1].symbol == symbol:
            out[-1] = Span(out[-1].first, label, symbol)
        else:
            out.append(Span(label, label, symbol))
    return out


def spans_text(items: list[Span]) -> str:
    return " · ".join(span.text for span in items) or "—"


@dataclass(frozen=True)
class Regression:
    """Passed on `last_passing`, failing on every release from `first_failing` on."""

    last_passing: Release
    first_failing: Release


def regression(per_release: Mapping[Release, Outcome | None]) -> Regression | None:
    """Blocked runs (⊘) are neither a pass nor a failure and are left out of the sequence."""
    runs = [(r, o) for r, o in ordered(per_release) if o.symbol in (PASS, FAIL)]
    if not runs or runs[-1][1].symbol != FAIL:
        return None
    i = len(runs) - 1
    while i > 0 and runs[i - 1][1].symbol == FAIL:
        i -= 1
    return Regression(runs[i - 1][0], runs[i][0]) if i > 0 else None


def earliest(regressions: Iterable[Regression | None]) -> Regression | None:
    found = [r for r in regressions if r is not None]
    return min(found, key=lambda r: (r.first_failing.key, r.last_passing.key)) if found else None
