"""A sweep's table: cells x releases, one short mark per status, and where a release changed any.

Built from the records the harness wrote in each release's session (nothing else): a cell's mark
is P pass, F:CATEGORY fail, x:CATEGORY xfail (a fail a known limit declares), s skip, n n/a, and
`-` where the release did not collect the cell; a release whose session ended without a verdict
(a harness problem) is a column of `!`, and is left out when releases are compared, so a harness
failure is never read as a change. An xfail compares as the fail it is, so a limit declared
between two releases' runs is no change either.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

NOT_COLLECTED = "-"
HARNESS_FAILURE = "!"
SHORT = {"pass": "P", "skip": "s", "n/a": "n"}
LEGEND = ("P pass, F:CATEGORY fail, x:CATEGORY xfail (a fail a known limit declares), s skip, n n/a, "
          "- not collected in that release, ! no verdict (the release's session failed: a harness problem)")


def mark(record: dict) -> str:
    status = record["status"]
    if status in ("fail", "xfail"):
        return f"{'F' if status == 'fail' else 'x'}:{record.get('category') or '?'}"
    return SHORT.get(status, status)


def verdict(mark_: str) -> str:
    """What the stack did, whether or not a known limit declared it: a sweep's releases may have run
    under commits that declared different limits, and a declaration is not a change of the stack."""
    return "F:" + mark_[2:] if mark_.startswith("x:") else mark_


@dataclass
class Grid:
    releases: list[str]
    cells: list[str]
    marks: dict[str, dict[str, str]]  # cell -> release -> mark
    failed: set[str]  # releases without a verdict

    @property
    def verdicts(self) -> list[str]:
        """The releases whose session ended with a verdict."""
        return [r for r in self.releases if r not in self.failed]

    def row(self, cell: str) -> list[str]:
        return [HARNESS_FAILURE if r in self.failed else self.marks[cell].get(r, NOT_COLLECTED)
                for r in self.releases]

    def varies(self, cell: str) -> bool:
        return len({self.marks[cell].get(r, NOT_COLLECTED) for r in self.verdicts}) > 1

    def changed_releases(self) -> dict[str, list[str]]:
        """Each release (with a verdict) whose marks differ from the previous release with one: the
        cells that changed, as `CELL: BEFORE -> AFTER`."""
        out: dict[str, list[str]] = {}
        previous = None
        for release in self.releases:
            if release in self.failed:
                continue
            if previous is not None:
                changes = [f"{cell}: {self.marks[cell].get(previous, NOT_COLLECTED)} -> "
                           f"{self.marks[cell].get(release, NOT_COLLECTED)}" for cell in self.cells
                           if verdict(self.marks[cell].get(previous, NOT_COLLECTED))
                           != verdict(self.marks[cell].get(release, NOT_COLLECTED))]
                if changes:
                    out[release] = changes
            previous = release
        return out

    def constant_counts(self) -> Counter:
        """The rows that are the same in every release with a verdict, by their mark."""
        return Counter(next((self.marks[c].get(r, NOT_COLLECTED) for r in self.verdicts), HARNESS_FAILURE)
                       for c in self.cells if not self.varies(c))


def build_grid(records_by_release: dict[str, list[dict]], releases: list[str],
               failed: set[str] | frozenset = frozenset()) -> Grid:
    """The grid of `releases` (in order) from each release's records (the last record of a cell wins)."""
    marks: dict[str, dict[str, str]] = {}
    for release in releases:
        for record in records_by_release.get(release, []):
            marks.setdefault(record["cell_id"], {})[release] = mark(record)
    return Grid(list(releases), sorted(marks), marks, set(failed))


def counts(records: list[dict]) -> dict[str, int]:
    """Status counts of one release's records (one per cell: the last)."""
    last = {r["cell_id"]: r["status"] for r in records}
    return dict(sorted(Counter(last.values()).items()))


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows, strict=True)]
    line = lambda cells: "| " + " | ".join(f"{c:<{w}}" for c, w in zip(cells, widths, strict=True)) + " |"  # noqa: E731
    return [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)]


def markdown(grid: Grid, title: str) -> str:
    """Every row, for OUT/grid.md."""
    header = ["cell", *[f"{r}{' (no verdict)' if r in grid.failed else ''}" for r in grid.releases]]
    rows = [[cell, *grid.row(cell)] for cell in grid.cells]
    return "\n".join([f"# {title}", "", LEGEND, "", *_table(header, rows), ""])


def compact(grid: Grid) -> list[str]:
    """For the terminal: the rows whose mark changes across releases in full, the others counted."""
    varying = [c for c in grid.cells if grid.varies(c)]
    lines = []
    if varying:
        lines += _table(["cell", *grid.releases], [[c, *grid.row(c)] for c in varying])
    constant = grid.constant_counts()
    if constant:
        lines.append(f"{sum(constant.values())} row(s) the same in every release: "
                     + ", ".join(f"{n} {m}" for m, n in sorted(constant.items())))
    if not grid.cells:
        lines.append("no records")
    return lines
