"""`compat-harness release-bump`: a new release enters the default release set as a reviewed change.

The baseline is the default release set of matrix/releases.toml and its lock (locks/NAME.txt): what
`make setup` installs, on any clone, with no record prepared by hand. For each watched package
(transformers, peft, torch, and the set's `also` packages) with a newer final release, the bump makes
the candidate lock (the set's lock with that release, harness/run/locks.py), runs the selections
(`make -s selections`: what `make test` and `make matrix` run) in the environment of each lock, and
compares them cell by cell (harness/run/cell_diff.py). Every pass -> fail is bisected between the two
releases (harness/run/bisect.py, with both ends' records as known probes) and becomes a known limit
scoped to its cell and measured range; every limit whose cells now pass is narrowed to exclude the
new release (harness/run/limit_edits.py).

Packages go one by one: after package A, package B's baseline is A's candidate (its records are kept,
not run again), so the proposal is one chain of locks, each measured against the one before.
Writing the proposal (lock, releases.toml, limits, records, docs, report) is harness/run/proposal.py;
the report is harness/run/bump_report.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from harness.failures import DECLARABLE_CATEGORIES
from harness.lockfile import lock_path, pinned_versions
from harness.run.bisect import BisectError, Probe, bisect, verdict_of, with_device
from harness.run.candidates import TORCH, Candidate, newest_candidate
from harness.run.candidates import local_dirs as wheel_dirs
from harness.run.cell_diff import PASS, CellDiff, Change, StaleLimit, compare
from harness.run.envs import EnvError, torch_spec
from harness.run.limit_edits import LIBRARIES, NewLimit, narrowed_spec, regression_entry
from harness.run.lock_runs import LockRun, RunError, run_lock
from harness.run.locks import LockError, candidate_lock, default_set
from harness.spec.matrix import Matrix, ReleaseSet

CORE_PACKAGES = ("transformers", "peft", TORCH)


def watched_packages(release_set: ReleaseSet) -> list[str]:
    """The libraries under test and the packages the set holds at exact releases (`also`)."""
    return list(dict.fromkeys([*CORE_PACKAGES, *release_set.also]))


def parse_packages(text: str, release_set: ReleaseSet) -> list[tuple[str, str | None]]:
    """`transformers==5.25.0,accelerate` -> [(transformers, 5.25.0), (accelerate, None: the newest)]."""
    out = []
    allowed = watched_packages(release_set)
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, version = item.partition("==")
        if name not in allowed:
            raise ValueError(
                f"--packages {item!r}: {name} is not watched; release set "
                f"`{release_set.name}` holds {', '.join(allowed)} (add others to its `also`)"
            )
        out.append((name, version or None))
    return out


def torch_release(spec: str) -> str:
    """torch==2.13.0 -> 2.13.0 (the baseline torch: the host's)."""
    return spec.partition("==")[2] or "?"


@dataclass
class Retired:
    stale: StaleLimit
    package: str
    before: str | None
    after: str


@dataclass
class Step:
    """One package's bump: its candidate, the two runs, what changed and the matrix edits it needs."""

    candidate: Candidate
    releases_before: dict[str, str]
    releases_after: dict[str, str] = field(default_factory=dict)
    torch_before: str = ""
    torch_after: str = ""
    lock_before: Path | None = None
    lock_after: Path | None = None
    baseline: LockRun | None = None
    after: LockRun | None = None
    diff: CellDiff | None = None
    added: list[NewLimit] = field(default_factory=list)
    retired: list[Retired] = field(default_factory=list)
    left: list[tuple[StaleLimit, str]] = field(default_factory=list)  # stale limits not edited, and why
    not_limits: list[tuple[Change, str]] = field(default_factory=list)  # regressions no limit can declare
    error: str = ""

    @property
    def package(self) -> str:
        return self.candidate.package

    @property
    def proposed(self) -> bool:
        return self.candidate.newest is not None and not self.error and self.after is not None

    @property
    def label(self) -> str:
        return f"{self.package} {self.candidate.newest}"


@dataclass
class Bump:
    set_name: str
    base_lock: Path
    selections: list[list[str]]
    steps: list[Step]
    date: str
    command: str = ""

    @property
    def proposed(self) -> list[Step]:
        return [s for s in self.steps if s.proposed]

    @property
    def final_lock(self) -> Path | None:
        return self.proposed[-1].lock_after if self.proposed else None

    @property
    def name(self) -> str:
        """transformers-5.25.0-accelerate-1.16.0: the branch's and the report's name."""
        return "-".join(f"{s.package}-{s.candidate.newest}" for s in self.proposed)

    @property
    def branch(self) -> str:
        return f"release-bump/{self.name}"


def lock_changes(before: Path, after: Path) -> list[str]:
    """The packages whose pinned releases differ between two locks ("numpy 2.3.4 -> 2.3.5")."""
    old, new = pinned_versions(before), pinned_versions(after)
    out = []
    for name in sorted(set(old) | set(new)):
        a, b = ", ".join(sorted(old.get(name, set()))) or "-", ", ".join(sorted(new.get(name, set()))) or "-"
        if a != b:
            out.append(f"{name} {a} -> {b}")
    return out


def _known(
    change: Change,
    before: LockRun,
    after: LockRun,
    package: str,
    previous: str,
    newest: str,
    others: dict[str, str],
) -> dict[str, Probe]:
    """Both runs' records of the regressed cell as the bisect's probes of its two ends."""
    out = {}
    for version, run in ((previous, before), (newest, after)):
        records = [r for r in run.records if r["cell_id"] == change.cell_id]
        out[version] = Probe({package: version, **others}, verdict_of(records), records, True, 0.0, run.path)
    return out


def bisect_regressions(
    step: Step,
    *,
    cell_selection: Callable[[str], list[str]],
    jobs: int,
    wheels: Path | None,
    enabled: bool,
    log: Callable[[str], None],
) -> None:
    """The first bad release of every regressed cell (both ends known: only releases between run)."""
    package, previous, newest = step.package, step.candidate.previous, step.candidate.newest
    others = {k: v for k, v in step.releases_before.items() if k in LIBRARIES and k != package}
    for change in step.diff.regressions:
        change.first_bad, change.last_good = newest, previous
        if not enabled:
            change.bisect_note = "not bisected (--no-bisect): the range is the two releases"
            continue
        if package == TORCH and wheels is None:
            change.bisect_note = "not bisected: torch's releases between are CUDA builds on the index"
            continue
        try:
            found = bisect(
                package,
                previous,
                newest,
                with_device(cell_selection(change.cell_id)),
                others=others,
                jobs=jobs,
                wheels=wheels,
                known=_known(change, step.baseline, step.after, package, previous, newest, others),
                log=log,
            )
        except (BisectError, EnvError) as exc:
            change.bisect_note = f"not bisected: {exc}"
            continue
        change.first_bad, change.last_good = found.first_bad, found.last_good
        between = len(found.releases) - 2
        change.bisect_note = (
            f"bisected over {between} release(s) between ({found.runs} run, {found.reused} kept)"
            if between
            else "no release between the two"
        )


def _needs_tier(change: Change, records: list[dict]) -> bool:
    """Whether a limit without `tier` would name a cell of another tier that passes (then scope it)."""
    r = change.record
    same = ("architecture", "method", "layout", "check", "variant", "stack", "implementation")
    return any(
        o["status"] == PASS and o["tier"] != r["tier"] and all(o.get(k) == r.get(k) for k in same)
        for o in records
    )


def plan_limits(step: Step, narrowed: dict[tuple[str, int], dict[str, str]]) -> None:
    """The limits the step's regressions need, and the stale limits it retires (narrowing `narrowed`,
    the ranges earlier steps left, in place)."""
    package = step.package
    seen: dict[tuple[str, str], NewLimit] = {}
    for change in step.diff.regressions:
        record = change.record
        if record.get("category") not in DECLARABLE_CATEGORIES:
            step.not_limits.append(
                (
                    change,
                    f"category {record.get('category')!r} cannot be a known limit: "
                    "a harness error is fixed, not declared",
                )
            )
            continue
        entry = regression_entry(
            record,
            package,
            change.first_bad,
            change.last_good,
            step.releases_before,
            with_tier=_needs_tier(change, step.after.records),
        )
        key = (record["architecture"], repr(sorted((k, v) for k, v in entry.items() if k != "reason")))
        if key in seen:
            seen[key] = NewLimit(
                seen[key].architecture,
                seen[key].source_file,
                seen[key].entry,
                (*seen[key].cells, change.cell_id),
            )
            continue
        source = record.get("source_file") or ""
        seen[key] = NewLimit(record["architecture"], source, entry, (change.cell_id,))
    step.added = list(seen.values())
    for stale in step.diff.stale:
        if package not in LIBRARIES:
            step.left.append(
                (
                    stale,
                    f"known limits hold ranges of {' and '.join(LIBRARIES)} only: the {package} "
                    "bump cannot narrow it; edit it by hand",
                )
            )
        elif not stale.retirable:
            step.left.append(
                (
                    stale,
                    f"{len(stale.failing)} of the cells it names still fail "
                    f"({', '.join(stale.failing[:3])}): narrow its scope by hand",
                )
            )
        else:
            current = narrowed.get(stale.ref.key, {})
            before = current.get(package, getattr(stale.ref.limit, package))
            after = narrowed_spec(before, step.candidate.newest)
            narrowed[stale.ref.key] = {**current, package: after}
            step.retired.append(Retired(stale, package, before, after))


def bump(
    matrix: Matrix,
    packages: list[tuple[str, str | None]],
    selections: list[list[str]],
    *,
    wheels: Path | None = None,
    jobs: int = 1,
    cell_selection: Callable[[str], list[str]],
    bisect_enabled: bool = True,
    log: Callable[[str], None] = print,
) -> Bump:
    """Measure each package's newer release against the chain so far; nothing is written here."""
    release_set = default_set(matrix)
    base_lock = lock_path(release_set.name)
    if not base_lock.is_file():
        raise LockError(
            f"{base_lock}: the default release set `{release_set.name}` has no lock: run "
            f"`compat-harness lock {release_set.name}`"
        )
    result = Bump(release_set.name, base_lock, selections, [], datetime.now(UTC).strftime("%Y-%m-%d"))
    overrides: dict[str, str] = {}
    torch = torch_spec()
    lock, before_run = base_lock, None
    narrowed: dict[tuple[str, int], dict[str, str]] = {}
    architectures = {name: arch.source_file for name, arch in matrix.architectures.items()}
    for package, wanted in packages:
        releases = {**release_set.releases, **overrides}
        previous = torch_release(torch) if package == TORCH else releases[package]
        try:
            candidate = newest_candidate(package, previous, wheels, wanted)
        except BisectError as exc:
            candidate = Candidate(package, previous, None, f"not checked: {exc}")
        step = Step(candidate, releases, torch_before=torch, lock_before=lock)
        result.steps.append(step)
        if candidate.newest is None:
            log(f"{package}: {candidate.note}")
            continue
        log(f"{package}: {candidate.newest} is new (the set holds {previous})")
        new_overrides = overrides if package == TORCH else {**overrides, package: candidate.newest}
        step.torch_after = f"torch=={candidate.newest}" if package == TORCH else torch
        step.releases_after = {**release_set.releases, **new_overrides}
        try:
            step.lock_after = candidate_lock(
                release_set, new_overrides, torch=step.torch_after, find_links=wheel_dirs(wheels)
            )
            step.baseline = before_run or run_lock(
                lock, selections, set_name=release_set.name, torch=torch, jobs=jobs, wheels=wheels, log=log
            )
            step.after = run_lock(
                step.lock_after,
                selections,
                set_name=release_set.name,
                torch=step.torch_after,
                jobs=jobs,
                wheels=wheels,
                log=log,
            )
        except (LockError, EnvError, RunError) as exc:
            step.error = str(exc)
            log(f"{package}: {exc}")
            continue
        for record in step.after.records:  # which file declares the row: where its limits go
            record.setdefault("source_file", architectures.get(record["architecture"], ""))
        step.diff = compare(step.baseline.records, step.after.records, matrix, step.releases_after, narrowed)
        bisect_regressions(
            step, cell_selection=cell_selection, jobs=jobs, wheels=wheels, enabled=bisect_enabled, log=log
        )
        plan_limits(step, narrowed)
        overrides, torch, lock, before_run = new_overrides, step.torch_after, step.lock_after, step.after
    return result
