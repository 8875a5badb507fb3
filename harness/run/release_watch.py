"""`compat-harness release-watch`: new releases on the package index, run before users meet them.

The last nightly's records name the releases they ran (each record's `env`). For each watched
package (transformers, peft, torch, and the stacks' packages that are installed here) whose newest
release on the index (or in a wheel directory) is newer, the watch runs the selection (the tiny
single-device matrix and the layout slice in CI) under the new release and under the one the
records ran, each in its own environment (harness/run/envs.py, through the bisect's probes, so
every run is kept and never repeated), compares cell by cell, and bisects every pass -> fail
between the two releases: the report names the first bad release and the message.

The report is Markdown: what is new, the regressions with their first bad release, the fixes
(fail -> pass). `issue_body` turns it into the title and body of the issue the nightly opens
(`gh issue create --title ... --body-file ...`, .github/workflows/nightly.yml).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from packaging.version import Version

from harness.run.bisect import (
    FAILED_STATUSES,
    BisectError,
    Probe,
    bisect,
    index_versions,
    probe,
    with_device,
)
from harness.spec.matrix import Matrix, installed_version

# What the watch looks at: the libraries under test, and the stacks' own packages where installed.
CORE_PACKAGES = ("transformers", "peft", "torch")


def watched_packages(matrix: Matrix) -> list[str]:
    """The libraries under test, then every package a declared stack needs (matrix `stacks.*.packages`)
    that is installed here."""
    stacks = dict.fromkeys(p for spec in matrix.stacks.values() for p in spec.packages)
    return [*CORE_PACKAGES, *(p for p in stacks if installed_version(p))]


def last_run_versions(records: Iterable[dict], packages: list[str]) -> dict[str, str]:
    """The releases the newest run of the records ran (its `env`), per package it names."""
    records = list(records)
    if not records:
        return {}
    newest = max(records, key=lambda r: r.get("timestamp", ""))["run_id"]
    out: dict[str, str] = {}
    for record in records:
        if record["run_id"] != newest:
            continue
        for package in packages:
            value = record.get("env", {}).get(package.replace("-", "_")) or record.get("env", {}).get(package)
            if value:
                out[package] = str(value).split("+")[0]
    return out


@dataclass
class Change:
    cell_id: str
    before: str
    after: str
    message: str = ""
    first_bad: str | None = None
    # how many releases the bisect looked at (its runs, or records kept from an earlier probe)
    bisect_probes: int = 0


@dataclass
class PackageWatch:
    package: str
    previous: str
    newest: str
    regressions: list[Change] = field(default_factory=list)
    fixes: list[Change] = field(default_factory=list)
    cells: int = 0
    error: str = ""


def outcome(record: dict) -> str:
    return "fail" if record["status"] in FAILED_STATUSES else record["status"]


def compare(before: list[dict], after: list[dict]) -> tuple[list[Change], list[Change]]:
    """pass -> fail (regressions) and fail -> pass (fixes), cell by cell."""
    old = {r["cell_id"]: r for r in before}
    regressions, fixes = [], []
    for record in sorted(after, key=lambda r: r["cell_id"]):
        earlier = old.get(record["cell_id"])
        if earlier is None:
            continue
        was, now = outcome(earlier), outcome(record)
        if was == "pass" and now == "fail":
            regressions.append(Change(record["cell_id"], was, now, record.get("message", "")))
        elif was == "fail" and now == "pass":
            fixes.append(Change(record["cell_id"], was, now, earlier.get("message", "")))
    return regressions, fixes


def watch(records: list[dict], selections: list[list[str]], *, packages: list[str],
          wheels: Path | None = None, jobs: int = 1, cell_selection: Callable[[str], list[str]],
          log: Callable[[str], None] = print) -> list[PackageWatch]:
    """Every watched package with a newer release than the last run's: its regressions and fixes over
    every selection (e.g. the tiny single-device matrix, and the layout slice)."""
    baseline = last_run_versions(records, packages)
    pins = {p: v for p, v in baseline.items() if p in ("transformers", "peft")}
    out = []
    for package in packages:
        previous = baseline.get(package)
        if previous is None:
            log(f"{package}: no release in the last run's records; not watched")
            continue
        try:
            newest = index_versions(package, wheels)[-1]
        except (BisectError, IndexError) as exc:
            out.append(PackageWatch(package, previous, "?", error=str(exc)))
            continue
        if Version(newest) <= Version(previous):
            log(f"{package}: {previous} is the newest release")
            continue
        log(f"{package}: {newest} is new (the last run had {previous})")
        item = PackageWatch(package, previous, newest)
        ends: dict[str, dict[str, Probe]] = {}  # per regressed cell: its records under both releases
        for selection in selections:
            before = probe({**pins, package: previous}, selection, jobs=jobs, wheels=wheels, log=log)
            after = probe({**pins, package: newest}, selection, jobs=jobs, wheels=wheels, log=log)
            item.cells += len(after.records)
            regressions, fixes = compare(before.records, after.records)
            item.regressions += regressions
            item.fixes += fixes
            for change in regressions:
                ends[change.cell_id] = {previous: before.narrowed(change.cell_id),
                                        newest: after.narrowed(change.cell_id)}
        for change in item.regressions:
            found = bisect(package, previous, newest, with_device(cell_selection(change.cell_id)),
                           others={k: v for k, v in pins.items() if k != package}, jobs=jobs, wheels=wheels,
                           known=ends[change.cell_id], log=log)
            change.first_bad, change.bisect_probes = found.first_bad, len(found.probes)
        out.append(item)
    return out


def report(items: list[PackageWatch], baseline_note: str) -> str:
    """The watch's Markdown report."""
    lines = ["# Release watch", "", baseline_note, ""]
    if not items:
        lines.append("No new release of a watched package.")
    for item in items:
        lines.append(f"## {item.package} {item.newest} (the last run had {item.previous})")
        lines.append("")
        if item.error:
            lines += [f"Not checked: {item.error}", ""]
            continue
        lines.append(f"{item.cells} cell(s) ran under {item.newest}: {len(item.regressions)} regression(s), "
                     f"{len(item.fixes)} fix(es).")
        lines.append("")
        for change in item.regressions:
            lines.append(f"- **regression** `{change.cell_id}`: first bad release **{item.package} "
                         f"{change.first_bad}** (bisect over {change.bisect_probes} release(s)): "
                         f"`{change.message[:300]}`")
        for change in item.fixes:
            lines.append(f"- **fixed** `{change.cell_id}` (it failed under {item.previous}: "
                         f"`{change.message[:200]}`)")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def issue_body(items: list[PackageWatch], text: str) -> tuple[str, str] | None:
    """The issue the nightly opens: (title, body), or None when nothing is new."""
    if not items:
        return None
    regressions = sum(len(i.regressions) for i in items)
    breaking = ", ".join(f"{i.package} {i.newest}" for i in items if i.regressions)
    quiet = ", ".join(f"{i.package} {i.newest}" for i in items if not i.regressions)
    title = (f"Release watch: {regressions} regression(s) under {breaking}" if regressions
             else f"Release watch: {quiet}, no regression")
    if regressions and quiet:
        title += f"; also new, no regression: {quiet}"
    return title, text

