"""The sweeps' grids for the family pages: cells x releases of one package, the others held.

`compat-harness sweep` writes reports/sweeps/NAME/<package>-<version>.jsonl (normal records) and
reports/sweeps/NAME/sweep.json (`package`, `held`, `releases`: every final release it meant to
run). A sweep is one release line: the records of one NAME that differ in torch, peft or device
from the sweep's first line are left out of its grid (they are still evidence elsewhere), so a
column never mixes two lines. Where a sweep's records cover every release of its `releases` and its
`unswept` (the range's final releases it left out, from the index) is empty, the page says so: the
range then claims every release in between, not only the sampled ones.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from harness.report.releases import FAIL, outcome, short, version_key
from harness.report.results import read_records

SWEEPS_DIR = Path(__file__).resolve().parents[2] / "reports" / "sweeps"
NOT_RUN = "·"


@dataclass
class Sweep:
    name: str
    package: str
    held: dict[str, str]
    releases: list[str]  # what the sweep meant to run, in version order
    records: list[dict] = field(default_factory=list)
    # the final releases of its range that it left out; None: not known (a summary without the key)
    unswept: list[str] | None = None

    @property
    def line(self) -> str:
        """The peft, torch and device its records held (the first record's, which every grid row shares)."""
        if not self.records:
            return ", ".join(f"{k} {v}" for k, v in sorted(self.held.items()))
        env = self.records[0]["env"]
        held = [f"{name} {env.get(name)}" for name in ("transformers", "peft", "torch")
                if name != self.package]
        return ", ".join([*held, str(env.get("device_type") or "cpu")])


def line_of(record: dict, package: str) -> tuple:
    env = record["env"]
    return tuple(str(env.get(k)) for k in ("transformers", "peft", "torch", "device_type") if k != package)


def sweep_record_files(directory: Path, recursive: bool = False) -> list[Path]:
    """A sweep's records, one file per release that ended with a verdict: PACKAGE-VERSION.jsonl.gz
    (or .jsonl, as an earlier sweep left it); never those of a session without a verdict.
    recursive: every sweep's under `directory`."""
    where = "**/*" if recursive else "*"
    files = [*directory.glob(f"{where}.jsonl"), *directory.glob(f"{where}.jsonl.gz")]
    return sorted(f for f in files if ".no-verdict." not in f.name)


def load_sweeps(directory: Path | str = SWEEPS_DIR) -> list[Sweep]:
    out = []
    for summary in sorted(Path(directory).glob("*/sweep.json")):
        data = json.loads(summary.read_text())
        package = str(data["package"])
        records = [s.record for s in read_records(sweep_record_files(summary.parent))]
        if records:
            first = line_of(records[0], package)
            records = [r for r in records if line_of(r, package) == first]
        releases = sorted((str(v) for v in data.get("releases", [])), key=version_key)
        out.append(Sweep(summary.parent.name, package, dict(data.get("held", {})), releases, records,
                         data.get("unswept")))
    return out


@dataclass(frozen=True)
class Grid:
    sweep: str
    package: str
    line: str
    releases: list[str]
    rows: list[tuple[str, list[str]]]  # cell id, a mark per release
    every_release: bool  # every final release of the range has records (none left out, none unknown)
    unswept: list[str] | None = None  # the range's final releases that did not run (None: not known)

    @property
    def header(self) -> str:
        return "| cell | " + " | ".join(short(v) for v in self.releases) + " |"

    @property
    def rule(self) -> str:
        return "|---|" + "---|" * len(self.releases)

    def lines(self) -> list[str]:
        return [f"| `{cell}` | " + " | ".join(marks) + " |" for cell, marks in self.rows]


def grid(sweep: Sweep, architecture: str, stack: str = "native") -> Grid | None:
    """The sweep's cells of one row: ✓, ✗ with the category, ⊘ blocked, · not run."""
    mine = [r for r in sweep.records
            if r["architecture"] == architecture and (r.get("stack") or "native") == stack]
    if not mine:
        return None
    by_cell: dict[str, dict[str, list[dict]]] = {}
    for record in mine:
        version = str(record["env"].get(sweep.package))
        by_cell.setdefault(record["cell_id"], {}).setdefault(version, []).append(record)
    ran = {v for cells in by_cell.values() for v in cells}
    releases = sorted(set(sweep.releases) | ran, key=version_key)
    rows = []
    for cell_id in sorted(by_cell):
        marks = []
        for version in releases:
            found = by_cell[cell_id].get(version)
            if not found:
                marks.append(NOT_RUN)
                continue
            newest = max(found, key=lambda r: str(r.get("timestamp")))
            result = outcome([(newest["status"], newest.get("category"))])
            if result is None:
                marks.append(NOT_RUN)
            elif result.symbol == FAIL:
                marks.append(f"{FAIL} {', '.join(result.categories)}")
            else:
                marks.append(result.symbol)
        rows.append((cell_id, marks))
    every = bool(sweep.releases) and set(sweep.releases) <= ran and sweep.unswept == []
    return Grid(sweep.name, sweep.package, sweep.line, releases, rows, every, sweep.unswept)
