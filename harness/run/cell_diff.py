"""Baseline against candidate, cell by cell: what a new release changes.

- a **regression** is pass -> fail (the candidate's failure is undeclared: it needs a known limit);
  pass -> xfail is a regression a limit already declares for the new release;
- a **fix** is fail/xfail -> pass;
- a **stale limit** is a known limit that names passing cells of the candidate and whose version
  ranges hold for the candidate's releases: the runner records such a cell as "pass" and pytest
  fails it (harness/run/runner.py), so the gates would fail once the lock is bumped. The ranges are
  evaluated against the candidate's releases, never the releases installed in this process.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from harness.run.bisect import FAILED_STATUSES
from harness.spec.matrix import KnownLimit, Matrix, version_in

PASS, FAIL = "pass", "fail"


def outcome(record: dict) -> str:
    return FAIL if record["status"] in FAILED_STATUSES else record["status"]


@dataclass
class Change:
    """One cell whose outcome changed; the bisect fills in the release range of a regression."""

    cell_id: str
    before: str  # the baseline's status
    after: str  # the candidate's status
    message: str
    record: dict  # the candidate's record (a fix: the baseline's, whose message says what was fixed)
    first_bad: str | None = None
    last_good: str | None = None
    bisect_note: str = ""  # how the range was found (or why it was not)


@dataclass(frozen=True)
class LimitRef:
    """A known_limits entry, as the matrix file that declares it holds it (by index in its row)."""

    architecture: str
    index: int
    source_file: str
    limit: KnownLimit

    @property
    def key(self) -> tuple[str, int]:
        return (self.architecture, self.index)


@dataclass
class StaleLimit:
    """A limit that holds for the candidate's releases, with the candidate's cells it names."""

    ref: LimitRef
    passing: list[str]
    failing: list[str]  # cells it names that still fail: then it cannot simply be narrowed

    @property
    def retirable(self) -> bool:
        return bool(self.passing) and not self.failing


@dataclass
class CellDiff:
    cells: int = 0
    unchanged: int = 0
    regressions: list[Change] = field(default_factory=list)  # pass -> fail
    declared: list[Change] = field(default_factory=list)  # pass -> xfail (a limit names it already)
    fixes: list[Change] = field(default_factory=list)
    stale: list[StaleLimit] = field(default_factory=list)
    new: list[str] = field(default_factory=list)  # cells only the candidate ran
    vanished: list[str] = field(default_factory=list)


def limit_holds(limit: KnownLimit, releases: dict[str, str], narrowed: dict[str, str] | None = None) -> bool:
    """Whether the limit's version ranges (`narrowed` replaces some, as an earlier step left them)
    contain these releases."""
    specs = {"transformers": limit.transformers, "peft": limit.peft, **(narrowed or {})}
    return all(version_in(releases[name], (spec,)) for name, spec in specs.items()
               if spec is not None and name in releases)


def names_cell(limit: KnownLimit, record: dict) -> bool:
    return limit.covers_axes(record["method"], record["layout"], record["tier"], record["check"],
                             record.get("variant") or "", record.get("stack") or limit.stack,
                             record.get("implementation") or "")


def stale_limits(matrix: Matrix, after: list[dict], releases: dict[str, str],
                 narrowed: dict[tuple[str, int], dict[str, str]] | None = None) -> list[StaleLimit]:
    """Limits that hold for `releases` and name cells that pass in `after`."""
    narrowed = narrowed or {}
    by_arch: dict[str, list[dict]] = {}
    for record in after:
        by_arch.setdefault(record["architecture"], []).append(record)
    out = []
    for name, records in sorted(by_arch.items()):
        arch = matrix.architectures.get(name)
        if arch is None:
            continue
        for index, limit in enumerate(arch.known_limits):
            ref = LimitRef(name, index, arch.source_file, limit)
            if not limit_holds(limit, releases, narrowed.get(ref.key)):
                continue
            named = [r for r in records if names_cell(limit, r)]
            passing = sorted(r["cell_id"] for r in named if r["status"] == PASS)
            if passing:
                failing = sorted(r["cell_id"] for r in named if r["status"] in FAILED_STATUSES)
                out.append(StaleLimit(ref, passing, failing))
    return out


def compare(before: list[dict], after: list[dict], matrix: Matrix, releases: dict[str, str],
            narrowed: dict[tuple[str, int], dict[str, str]] | None = None) -> CellDiff:
    """The candidate's records (`after`, run under `releases`) against the baseline's."""
    old = {r["cell_id"]: r for r in before}
    now = {r["cell_id"]: r for r in after}
    diff = CellDiff(cells=len(now))
    diff.new = sorted(set(now) - set(old))
    diff.vanished = sorted(set(old) - set(now))
    for cell_id in sorted(set(now) & set(old)):
        earlier, record = old[cell_id], now[cell_id]
        was, is_now = outcome(earlier), outcome(record)
        if was == PASS and is_now == FAIL:
            change = Change(cell_id, earlier["status"], record["status"], record.get("message", ""), record)
            (diff.regressions if record["status"] == FAIL else diff.declared).append(change)
        elif was == FAIL and is_now == PASS:
            diff.fixes.append(Change(cell_id, earlier["status"], record["status"], earlier.get("message", ""),
                                     earlier))
        else:
            diff.unchanged += 1
    diff.stale = stale_limits(matrix, after, releases, narrowed)
    return diff
