"""Known limits measured against the records: where each limit's cells failed and passed.

A known limit promises that its cells fail on the releases its specifiers name. The records (and
the bisect findings) say where they did: this module derives, for every limit, the releases where
its cells failed and passed, and finds the two ways a limit can be wrong:

- it **covers a measured pass**: a record of a cell it names passed on releases inside its
  specifiers (the runner would record that pass as a stale limit, and pytest fail it);
- a **measured stack failure has no limit**: a record failed (`fail`) with a declarable category
  on releases where no limit of its row names it.

For each limit it also derives the narrowest specifiers the evidence supports, in the form the
matrix takes (`transformers = ">=5.21.0", peft = "==0.21.2"`), one entry per peft release where
peft changes where the failure starts.

Which evidence counts (and why):
- every record of `reports/records/*.jsonl` and of the sweeps, `reports/sweeps/**/*.jsonl`
  (`reports/retired/` never: those verdicts were a harness bug's); local runs never;
- a record that ran (`pass`, `fail`, `xfail`), but never a `harness-error` or `matrix-error`:
  those are our bugs, not the stack's;
- **latest run wins**: of several records of one cell on the same releases (transformers, peft,
  torch) and device type, the newest (timestamp, then file and line order) counts; records that
  differ in any of these are separate evidence, never merged;
- a bisect finding (`reports/bisects/*.json`) adds each release it probed, for the cells it names,
  with the other packages held at its `held` releases; a bad probe is a failure of whatever
  category the limit declares (the finding does not record one).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from packaging.version import InvalidVersion, Version

from harness.report.bisects import DEFAULT_BISECTS, Finding, load_findings
from harness.report.results import read_records, shape_and_variant
from harness.report.sweeps import sweep_record_files
from harness.spec.matrix import REFERENCE_STACK, REPO_ROOT, KnownLimit, Matrix, version_in

RECORDS_DIR = REPO_ROOT / "reports" / "records"
SWEEPS_DIR = REPO_ROOT / "reports" / "sweeps"
# Local runs (reports/records/local*.jsonl) are gitignored: not evidence.
LOCAL_PREFIX = "local"
# The packages a limit's specifiers name (KnownLimit.transformers, KnownLimit.peft).
LIMIT_PACKAGES = ("transformers", "peft")
RAN = ("pass", "fail", "xfail")
NOT_THE_STACKS = ("harness-error", "matrix-error", "evidence-unavailable")


def evidence_files(records_dir: Path | str = RECORDS_DIR, sweeps_dir: Path | str = SWEEPS_DIR) -> list[Path]:
    """The committed record files: reports/records/*.jsonl and every sweep's records
    (reports/sweeps/NAME/PACKAGE-VERSION.jsonl.gz)."""
    found = [p for p in sorted(Path(records_dir).glob("*.jsonl")) if not p.name.startswith(LOCAL_PREFIX)]
    found += sweep_record_files(Path(sweeps_dir), recursive=True)
    return found


def vkey(text: str | None) -> tuple:
    try:
        return (1, Version(str(text)))
    except InvalidVersion:
        return (0, str(text))


@dataclass(frozen=True)
class Observation:
    """One cell on one set of releases: it failed or passed (a record, or a bisect probe)."""

    cell_id: str
    architecture: str
    method: str
    layout: str
    tier: str
    check: str
    variant: str
    stack: str
    implementation: str
    transformers: str
    peft: str | None
    torch: str | None
    device: str
    failed: bool
    category: str | None  # None: a bisect probe (the finding records no category)
    source: str
    message: str = ""

    @property
    def probe(self) -> bool:
        return self.source.startswith("bisect ")

    @property
    def releases(self) -> dict[str, str | None]:
        return {"transformers": self.transformers, "peft": self.peft}

    @property
    def line(self) -> tuple:
        """What is held fixed along a release line: peft, torch and the device."""
        return (self.peft, self.torch, self.device)

    def label(self) -> str:
        torch = f", torch {self.torch}" if self.torch else ""
        return f"transformers {self.transformers} (peft {self.peft}{torch}, {self.device})"


def observation(record: dict, source: str) -> Observation | None:
    """The record as evidence, or None when it says nothing of the stack (a skip, our own bug)."""
    if record["status"] not in RAN or record.get("category") in NOT_THE_STACKS:
        return None
    env = record["env"]
    # schema 1 records did not write their variant: it is read from the end of the cell id
    variant = (shape_and_variant(record) or {}).get("variant")
    return Observation(
        record["cell_id"], record["architecture"], record["method"], record["layout"], record["tier"],
        record["check"], variant or "default", record.get("stack") or REFERENCE_STACK,
        record.get("implementation") or "default", str(env.get("transformers")),
        env.get("peft") and str(env["peft"]), env.get("torch") and str(env["torch"]),
        str(env.get("device_type") or "cpu"), record["status"] != "pass", record.get("category"), source,
        record.get("message") or "")


def latest_observations(records: Iterable[tuple[dict, str]]) -> list[Observation]:
    """Latest run wins per (cell, transformers, peft, torch, device); see the module docstring."""
    newest: dict[tuple, tuple[str, int, Observation]] = {}
    for seq, (record, source) in enumerate(records):
        found = observation(record, source)
        if found is None:
            continue
        key = (found.cell_id, found.transformers, found.peft, found.torch, found.device)
        stamp = str(record.get("timestamp") or "")
        if key not in newest or (stamp, seq) >= newest[key][:2]:
            newest[key] = (stamp, seq, found)
    return [item[2] for item in newest.values()]


def probe_observations(finding: Finding, cells: dict[str, dict]) -> list[Observation]:
    """Each release a finding probed, for each of its cells whose fields a record gave us."""
    held = dict(finding.held)
    out = []
    for cell_id in finding.cells:
        fields = cells.get(cell_id) or fields_of_id(cell_id)
        if fields is None:
            continue
        for version, verdict in finding.probed:
            releases = {"transformers": None, "peft": held.get("peft"), finding.package: version}
            if releases["transformers"] is None:
                continue
            out.append(Observation(
                cell_id, **fields, transformers=releases["transformers"], peft=releases["peft"],
                torch=held.get("torch"), device="cpu", failed=verdict == "bad", category=None,
                source=f"bisect {finding.source}", message=finding.message))
    return out


def fields_of_id(cell_id: str) -> dict | None:
    """A plain native cell id (`Arch-method-layout-tier-check`, no stack, shape or variant)."""
    if ":" in cell_id or "@" in cell_id or "+" in cell_id or "~" in cell_id:
        return None
    parts = cell_id.split("-")
    if len(parts) != 5:
        return None
    arch, method, layout, tier, check = parts
    return {"architecture": arch, "method": method, "layout": layout, "tier": tier, "check": check,
            "variant": "default", "stack": REFERENCE_STACK, "implementation": "default"}


def _shown(path: str) -> str:
    """A record file as the docs name it: relative to the repository where it lies inside it."""
    try:
        return str(Path(path).resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def load_evidence(paths: Iterable[Path | str],
                  bisects: Path | str | None = DEFAULT_BISECTS) -> list[Observation]:
    sourced = read_records(list(paths))
    found = latest_observations((s.record, f"{_shown(s.path)}:{s.line}") for s in sourced)
    cells = {o.cell_id: {k: getattr(o, k) for k in ("architecture", "method", "layout", "tier", "check",
                                                    "variant", "stack", "implementation")} for o in found}
    if bisects is not None and Path(bisects).is_dir():
        for finding in load_findings(bisects):
            found += probe_observations(finding, cells)
    return found


# --- limits against the evidence ------------------------------------------------------------------

def names(limit: KnownLimit, obs: Observation) -> bool:
    return limit.covers_axes(obs.method, obs.layout, obs.tier, obs.check, obs.variant, obs.stack,
                             obs.implementation)


def holds(limit: KnownLimit, releases: dict[str, str | None],
          specs: dict[str, str | None] | None = None) -> bool:
    """Whether the limit's specifiers (or `specs`) contain these releases."""
    specs = specs if specs is not None else {p: getattr(limit, p) for p in LIMIT_PACKAGES}
    return all(releases.get(p) is not None and version_in(str(releases[p]), (spec,))
               for p, spec in specs.items() if spec is not None)


def declares(limit: KnownLimit, obs: Observation) -> bool:
    """The failure is the limit's: its cell, its category (a probe: any), its releases."""
    return (names(limit, obs) and obs.category in (None, limit.category) and holds(limit, obs.releases))


@dataclass(frozen=True)
class Entry:
    """One known_limits entry's specifiers, as the matrix spells them."""

    transformers: str | None
    peft: str | None

    @property
    def toml(self) -> str:
        return ", ".join(f'{p} = "{v}"' for p, v in (("transformers", self.transformers), ("peft", self.peft))
                         if v is not None)


def _runs(outcomes: list[tuple[str, bool]]) -> list[str]:
    """Specifiers for the runs of failures in (version, failed) ordered by version: `>=first` up to the
    next pass (`<pass`), or open when nothing passed after it."""
    specs, start = [], None
    for version, failed in outcomes:
        if failed and start is None:
            start = version
        elif not failed and start is not None:
            specs.append(f">={start},<{version}")
            start = None
    if start is not None:
        specs.append(f">={start}")
    return specs


def narrowest(failures: list[Observation], passes: list[Observation]) -> tuple[list[Entry], list[str]]:
    """The entries that cover every failure and no pass, per peft release (peft held fixed), and the
    releases where a failure and a pass disagree on the same transformers and peft (a limit cannot
    tell torch builds or devices apart)."""
    by_peft: dict[str | None, dict[str, dict[str, set[bool]]]] = {}
    for obs in [*failures, *passes]:
        cells = by_peft.setdefault(obs.peft, {}).setdefault(obs.transformers, {})
        cells.setdefault(obs.cell_id, set()).add(obs.failed)
    per_peft: dict[str | None, tuple[str, ...]] = {}
    conflicts = []
    for peft, versions in by_peft.items():
        outcomes = []
        for version in sorted(versions, key=vkey):
            cells = versions[version]
            failed = sorted(c for c, seen in cells.items() if True in seen)
            passed = sorted(c for c, seen in cells.items() if False in seen)
            if failed and passed:
                both = sorted(set(failed) & set(passed))
                conflicts.append(
                    f"transformers {version} with peft {peft}: "
                    + (f"{', '.join(both)} failed and passed (another torch or device)" if both else
                       f"{', '.join(failed[:3])} failed while {', '.join(passed[:3])} passed (the limit's "
                       "selectors name cells that do not fail here: narrow them)"))
            # a release where a cell it names passed is never covered
            outcomes.append((version, bool(failed) and not passed))
        specs = tuple(_runs(outcomes))
        if specs:
            per_peft[peft] = specs
    # peft releases with the same transformers specifiers become one entry when no other measured
    # peft release lies between them
    measured_peft = sorted({p for p in by_peft if p is not None}, key=vkey)
    entries: list[Entry] = []
    by_specs: dict[tuple[str, ...], list[str | None]] = {}
    for peft, specs in per_peft.items():
        by_specs.setdefault(specs, []).append(peft)
    for specs, pefts in sorted(by_specs.items(), key=lambda item: [vkey(p) for p in item[1]]):
        for peft_spec in _peft_specs(sorted(pefts, key=vkey), measured_peft):
            entries.extend(Entry(spec, peft_spec) for spec in specs)
    return entries, conflicts


def _peft_specs(pefts: list[str | None], measured: list[str]) -> list[str | None]:
    if pefts == [None]:
        return [None]
    named = [p for p in pefts if p is not None]
    if len(named) == 1:
        return [f"=={named[0]}"]
    lo, hi = named[0], named[-1]
    between = [p for p in measured if vkey(lo) < vkey(p) < vkey(hi) and p not in named]
    if between:
        return [f"=={p}" for p in named]
    return [f">={lo},<={hi}"]


@dataclass
class LimitEvidence:
    """One known_limits entry and what the evidence says of it."""

    architecture: str
    index: int
    source_file: str
    limit: KnownLimit
    failures: list[Observation] = field(default_factory=list)  # its cells, its category, any release
    passes: list[Observation] = field(default_factory=list)  # its cells that passed, any release
    covered_passes: list[Observation] = field(default_factory=list)
    suggestion: list[Entry] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)

    @property
    def where(self) -> str:
        return f"{self.source_file} [architectures.{self.architecture}] known_limits[{self.index}]"

    @property
    def selectors(self) -> str:
        keys = ("method", "layout", "tier", "check", "variant")
        shown = [f"{k} {getattr(self.limit, k)}" for k in keys if getattr(self.limit, k) is not None]
        if self.limit.stack != REFERENCE_STACK:
            shown.append(f"stack {self.limit.stack}")
        if self.limit.implementation != "default":
            shown.append(f"implementation {self.limit.implementation}")
        return ", ".join([f"category {self.limit.category}", *shown])

    @property
    def current(self) -> Entry:
        return Entry(self.limit.transformers, self.limit.peft)


@dataclass
class LimitsReport:
    limits: list[LimitEvidence]
    # failures of cells a limit names (its axes and category) on releases none of them covers: the
    # limits are narrower than the evidence. Failures of cells no limit names are the matrix's plain
    # `fail` verdicts (rows outside the gated slices), published as such, and are not counted here.
    undeclared: list[Observation]

    @property
    def too_wide(self) -> list[LimitEvidence]:
        return [e for e in self.limits if e.covered_passes]

    @property
    def ok(self) -> bool:
        return not self.too_wide and not self.undeclared


def check_limits(matrix: Matrix, evidence: list[Observation]) -> LimitsReport:
    by_arch: dict[str, list[Observation]] = {}
    for obs in evidence:
        by_arch.setdefault(obs.architecture, []).append(obs)
    out = []
    for name in sorted(matrix.architectures):
        arch = matrix.architectures[name]
        seen = by_arch.get(name, [])
        items = []
        for index, limit in enumerate(arch.known_limits):
            named = [o for o in seen if names(limit, o)]
            failures = [o for o in named if o.failed and o.category in (None, limit.category)]
            passes = [o for o in named if not o.failed]
            items.append(LimitEvidence(name, index, arch.source_file, limit, failures, passes,
                                       [o for o in passes if holds(limit, o.releases)]))
        for item in items:
            # what this limit has to declare: its failures that no other limit of the row, one that
            # covers no pass, already declares (e.g. LoRA's own limit under the same layout), so
            # that the advice never widens an entry over another entry's failures
            sound = [other.limit for other in items if other is not item and not other.covered_passes]
            own = [o for o in item.failures if not any(declares(limit, o) for limit in sound)]
            item.suggestion, item.conflicts = narrowest(own, item.passes)
            out.append(item)
    undeclared = []
    for obs in evidence:
        arch = matrix.architectures.get(obs.architecture)
        if arch is None or not obs.failed or obs.category is None:
            continue
        scoped = [limit for limit in arch.known_limits
                  if names(limit, obs) and limit.category == obs.category]
        if scoped and not any(holds(limit, obs.releases) for limit in scoped):
            undeclared.append(obs)
    undeclared.sort(key=lambda o: (o.architecture, o.cell_id, vkey(o.transformers), vkey(o.peft)))
    return LimitsReport(out, undeclared)


def stale_advice(matrix: Matrix, architecture: str, index: int | None, record: dict,
                 paths: list[Path] | None = None, bisects: Path | str | None = DEFAULT_BISECTS) -> str:
    """For a cell that passed under a limit (the runner's stale limit): the entries to write instead,
    from the committed records, the bisect findings and this pass. "" where that cannot be said."""
    arch = matrix.architectures.get(architecture)
    passed = observation(record, "this run")
    if arch is None or index is None or passed is None:
        return ""
    try:
        evidence = [*load_evidence(evidence_files() if paths is None else paths, bisects), passed]
    except Exception as exc:  # noqa: BLE001 - the verdict stands; only the advice is missing
        return f"\n(the committed records could not be read for the narrower specifiers: {exc})"
    limit = arch.known_limits[index]
    named = [o for o in evidence if o.architecture == architecture and names(limit, o)]
    failures = [o for o in named if o.failed and o.category in (None, limit.category)]
    entries, _ = narrowest(failures, [o for o in named if not o.failed])
    item = LimitEvidence(architecture, index, arch.source_file, limit, failures, suggestion=entries)
    return "\n" + suggestion_text(item)


# --- the text -----------------------------------------------------------------------------------

def releases_text(observations: list[Observation]) -> str:
    """'5.15.0, 5.24.0 (peft 0.21.2); 5.17.0 (peft 0.21.0)': transformers releases per peft release."""
    by_peft: dict[str | None, set[str]] = {}
    for obs in observations:
        by_peft.setdefault(obs.peft, set()).add(obs.transformers)
    parts = [f"{', '.join(sorted(v, key=vkey))} (peft {p})"
             for p, v in sorted(by_peft.items(), key=lambda i: vkey(i[0]))]
    return "; ".join(parts) or "none"


def suggestion_text(item: LimitEvidence) -> str:
    if not item.suggestion:
        return "no failure of its cells is recorded: remove that known_limits entry"
    lines = [f"  {{ {entry.toml}, ... }}" for entry in item.suggestion]
    head = ("write this entry" if len(lines) == 1
            else f"write these {len(lines)} entries (the rest of the entry as it is)")
    return f"{head} in {item.where}:\n" + "\n".join(lines)


def report_text(report: LimitsReport, verbose: bool = False) -> str:
    out = []
    for item in report.limits:
        if not (item.covered_passes or verbose):
            continue
        status = "TOO WIDE" if item.covered_passes else "ok"
        out.append(f"{status}: {item.where} ({item.selectors}; {item.current.toml or 'every release'})")
        out.append(f"  failed on: {releases_text(item.failures)}")
        out.append(f"  passed on: {releases_text(item.passes)}")
        for obs in item.covered_passes[:5]:
            out.append(f"  covers a measured pass: {obs.cell_id} on {obs.label()} [{obs.source}]")
        if len(item.covered_passes) > 5:
            out.append(f"  ... and {len(item.covered_passes) - 5} more passes it covers")
        for conflict in item.conflicts:
            out.append(f"  the records disagree: {conflict}")
        if item.covered_passes:
            out.append("  " + suggestion_text(item).replace("\n", "\n  "))
    if report.undeclared:
        out.append(f"UNDECLARED: {len(report.undeclared)} recorded failure(s) of a limit's cells that no "
                   "limit's releases cover:")
        for obs in report.undeclared:
            out.append(f"  {obs.cell_id} on {obs.label()}: {obs.category}: {obs.message[:160]} "
                       f"[{obs.source}]")
    measured = sum(1 for item in report.limits if item.failures or item.passes)
    out.append(f"limits --check: {len(report.limits)} known limits ({measured} with evidence), "
               f"{len(report.too_wide)} cover a measured pass, "
               f"{len(report.undeclared)} undeclared failure(s)")
    return "\n".join(out)
