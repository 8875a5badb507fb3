"""The release axis: on which releases of transformers (and peft) cells passed and failed.

A verdict without its releases misleads: "passed with transformers >= 5.17" promises every later
release, and a fresh install takes the newest one. So the docs state, per row and per column,
the releases the records show, compressed into ranges of equal outcome:

    5.17–5.23 ✓ · 5.24 ✗

A range joins releases that the records show next to each other (by version order) with the
same outcome; releases in between that no record ran are not claimed. A release is written
without a zero patch ("5.17.0" -> "5.17"). A range lies on one release line: peft, torch and the
device held fixed. Records that differ in any of them are separate lines, each named where there
are several ("5.15 ✓ · 5.24 ✗ (peft 0.21.2, torch 2.11.0+cu130, cpu); 5.17 ✗ (peft 0.21.0, ...)").
Lines that differ only in peft, each on the same one transformers release (a peft sweep), are one
peft line in peft's ranges: "peft 0.17.0–0.18.1 ✗ · peft 0.19.0–0.21.2 ✓ (transformers 5.25, ...)".

A regression is a cell (or a group of cells) whose newest release on a line fails while an earlier
release of the same line passed; its first failing release is the first of the trailing run of
failures. Only transformers changes between the two: the regression names it, with the rest held.
Nothing here knows about records or pandas: render builds the outcomes, this module orders,
compresses and judges them.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from packaging.version import InvalidVersion, Version

PASS, FAIL, BLOCKED = "✓", "✗", "⊘"
RAN = ("pass", "fail", "xfail")
FAILED = ("fail", "xfail")


@functools.cache
def version_key(text: str | None) -> tuple:
    """Sort key of a version string; unparsable ones ("None") sort before every release. Cached:
    render sorts millions of evidence entries by a few hundred distinct releases."""
    try:
        return (1, Version(str(text)))
    except InvalidVersion:
        return (0, str(text))


def short(version: str | None) -> str:
    """'5.17.0' -> '5.17'; any other spelling is kept."""
    return re.sub(r"^(\d+\.\d+)\.0$", r"\1", str(version))


@dataclass(frozen=True)
class Release:
    """The library releases a record ran with (the axis the docs compress), and what else it ran on.

    A release line holds peft, torch and the device fixed: records that differ in any of them are
    never joined into one range, nor compared as a regression (only transformers changes along it).
    """

    transformers: str
    peft: str | None = None
    torch: str | None = None
    device: str | None = None  # where it ran: "cpu" or the GPU's name

    @property
    def key(self) -> tuple:
        return (version_key(self.transformers), version_key(self.peft), version_key(self.torch),
                str(self.device))

    @property
    def line(self) -> tuple:
        return (self.peft, self.torch, self.device)

    def line_label(self) -> str:
        parts = [f"peft {self.peft}" if self.peft else "", f"torch {self.torch}" if self.torch else "",
                 str(self.device or "")]
        return ", ".join(p for p in parts if p)

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


def lines(per_release: Mapping[Release, Outcome | None]) -> list[dict[Release, Outcome]]:
    """The outcomes split by release line (peft, torch, device held), each in transformers order;
    lines in the order of their peft, torch and device."""
    found: dict[tuple, dict[Release, Outcome]] = {}
    for release, outcome_ in ordered(per_release):
        found.setdefault(release.line, {})[release] = outcome_
    return [found[k] for k in sorted(found, key=lambda k: tuple(version_key(x) for x in k))]


@dataclass(frozen=True)
class Span:
    """Adjacent releases of one line (as the records show them) with one outcome symbol. Along a
    transformers line the releases are transformers'; along a peft line (a peft sweep: transformers,
    torch and the device held) they are peft's, and the text says so."""

    first: str
    last: str
    symbol: str
    line: str = ""  # what is held along it, where the records show several lines
    package: str = "transformers"

    @property
    def text(self) -> str:
        releases = self.first if self.first == self.last else f"{self.first}–{self.last}"
        return f"{'peft ' if self.package == 'peft' else ''}{releases} {self.symbol}"


def _compress(items: list[tuple[str, Outcome]], label: str, package: str) -> list[Span]:
    out: list[Span] = []
    for release, found in items:
        if out and out[-1].symbol == found.symbol:
            out[-1] = Span(out[-1].first, release, found.symbol, label, package)
        else:
            out.append(Span(release, release, found.symbol, label, package))
    return out


def peft_lines(split: list[dict[Release, Outcome]]) -> dict[tuple, list[tuple[Release, Outcome]]]:
    """Release lines that a peft sweep made: each ran one transformers release, and several lines
    ran the same one with the same torch and device (only peft differs). Keyed by what they hold."""
    found: dict[tuple, list[tuple[Release, Outcome]]] = {}
    for line in split:
        if len(line) == 1:  # a line holds peft, torch and device: one entry is one transformers release
            release, outcome_ = next(iter(line.items()))
            found.setdefault((release.transformers, release.torch, release.device), []).append(
                (release, outcome_))
    return {held: sorted(items, key=lambda item: version_key(item[0].peft))
            for held, items in found.items() if len(items) > 1}


def spans(per_release: Mapping[Release, Outcome | None]) -> list[Span]:
    """Ranges of equal outcome within each release line; a range never joins two lines. Lines that
    differ only in peft (transformers, torch and device held) are one peft line, in peft ranges."""
    split = lines(per_release)
    by_peft = peft_lines(split)
    out: list[Span] = []
    for line in split:
        first = next(iter(line))
        if len(line) == 1 and (first.transformers, first.torch, first.device) in by_peft:
            continue
        label = first.line_label() if len(split) > 1 else ""
        out += _compress([(r.label(), o) for r, o in line.items()], label, "transformers")
    for (transformers, torch, device), items in by_peft.items():
        held = (f"transformers {short(transformers)}", f"torch {torch}" if torch else "", str(device or ""))
        label = ", ".join(p for p in held if p)
        out += _compress([(str(r.peft), o) for r, o in items], label, "peft")
    return out


def spans_text(items: list[Span]) -> str:
    """'5.15 ✓ · 5.24 ✗ (peft 0.21.2, torch 2.11.0, cpu); 5.17 ✗ (peft 0.21.0, ...)': one part per line."""
    parts: list[tuple[str, list[str]]] = []
    for span in items:
        if not parts or parts[-1][0] != span.line:
            parts.append((span.line, []))
        parts[-1][1].append(span.text)
    return "; ".join(" · ".join(texts) + (f" ({line})" if line else "") for line, texts in parts) or "—"


@dataclass(frozen=True)
class Regression:
    """Passed on `last_passing`, failing on every release from `first_failing` on: one release line,
    only transformers differs between the two."""

    last_passing: Release
    first_failing: Release

    @property
    def text(self) -> str:
        """'fails from **5.24** with peft 0.21.2, torch 2.11.0, cpu (passed on 5.15, the same held)'."""
        held = self.first_failing.line_label()
        return (f"fails from transformers **{self.first_failing.label()}**{' with ' + held if held else ''} "
                f"(passed on {self.last_passing.label()}, the others the same)")


def regression(per_release: Mapping[Release, Outcome | None]) -> Regression | None:
    """Within one release line (peft, torch, device held): its newest release fails and an earlier one
    passed. Blocked runs (⊘) are neither a pass nor a failure and are left out of the sequence. Of
    several lines, the earliest first failure."""
    found = []
    for line in lines(per_release):
        runs = [(r, o) for r, o in line.items() if o.symbol in (PASS, FAIL)]
        if not runs or runs[-1][1].symbol != FAIL:
            continue
        i = len(runs) - 1
        while i > 0 and runs[i - 1][1].symbol == FAIL:
            i -= 1
        if i > 0:
            found.append(Regression(runs[i - 1][0], runs[i][0]))
    return earliest(found)


def earliest(regressions: Iterable[Regression | None]) -> Regression | None:
    found = [r for r in regressions if r is not None]
    return min(found, key=lambda r: (r.first_failing.key, r.last_passing.key)) if found else None
