"""Views: what the records show for each architecture row, by cell, release and place.

Render is a pure function from (Matrix, records) to documents; this module is its first half:
it turns the records into plain view objects that the templates only display.

- Records are taken newest per (cell, place, release): a place is "cpu" or a GPU by name, a
  release is the transformers and peft versions (`harness.report.releases`). An older release is
  never hidden by a newer one; it is history that the family pages show and the release
  ranges compress.
- A cell's *current* result is its newest release (over every place that ran that release).
- A group is one (method, layout) of a row: its cells over every tier and check. Its mark is
  the combined current outcome of its cells (`releases.combine`).
- A row's verdict is about its *required* cells (tiny tier, layouts the matrix marks
  `required`): supported when each one's current result is a pass.
- A regression is a cell whose newest release fails while an earlier one passed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from harness.report import releases
from harness.report.machine_paths import strip_machine_paths
from harness.report.releases import FAIL, PASS, Outcome, Regression, Release
from harness.report.results import latest
from harness.spec.cells import Cell, PrunedCell, expand
from harness.spec.constraints import violated_constraint
from harness.spec.matrix import CUSTOM, FORCE_HF, REFERENCE_STACK, TRANSFORMERS, Architecture, Matrix

# The skip category of a remote-code cell without the opt-in or without its code in the cache.
OPT_IN_SKIP = "remote-code"
# A verdict, per release and per group, is about a (cell, place, releases): newest record of each.
# torch is one of the releases: two torch builds are two release lines (harness.report.releases).
BY = ("where", "transformers", "env_peft", "torch")


def where_order(where: str) -> tuple:
    return (where != "cpu", where)


@dataclass(frozen=True)
class Evidence:
    """One record as the docs show it (machine paths stripped from its message).

    It carries the cell's fields from the record, so that the docs group and label it by them
    and never take `cell_id` apart (the id is shown, and matched, whole).
    """

    cell_id: str
    method: str
    layout: str
    tier: str
    check: str
    shape: str
    variant: str
    where: str
    where_short: str
    status: str
    category: str | None
    message: str
    run_id: str
    timestamp: str
    release: Release
    torch: str
    device_name: str
    device_count: int
    backend: str | None
    git_sha: str
    metrics: dict = field(compare=False, repr=False)
    # whose model code ran (the record's `code`: harness/ckpt/implementations.provenance)
    code: dict = field(default_factory=dict, compare=False, repr=False)
    world_size: int = 1  # the record's env world size: how many ranks the cell ran on

    @property
    def date(self) -> str:
        return self.timestamp[:10]

    @property
    def outcome(self) -> Outcome | None:
        return releases.outcome([(self.status, self.category)])


@dataclass
class CellView:
    cell: Cell
    evidence: list[Evidence]  # oldest release first, then place
    per_release: dict[Release, Outcome | None]
    current: list[Evidence]  # the evidence of its newest release
    outcome: Outcome | None
    regression: Regression | None

    @property
    def suffix(self) -> str:
        """What tells the cells of one (architecture, method, layout) group apart (Cell.tail)."""
        return self.cell.tail


@dataclass
class Group:
    """One (method, layout) of a row: its runnable cells, or why none can run (n/a)."""

    method: str
    layout: str
    cells: list[CellView]
    na_reason: str | None
    outcome: Outcome | None
    regression: Regression | None

    @property
    def passed(self) -> int:
        return sum(c.outcome is not None and c.outcome.symbol == PASS for c in self.cells)

    @property
    def text(self) -> str:
        """The short mark: '✓', '✗ numerics', '⊘ remote-code', 'n/a', '—' (nothing ran)."""
        if self.na_reason is not None:
            return "n/a"
        if self.outcome is None:
            return "—"
        return self.outcome.text + (" regression" if self.regression else "")

    @property
    def status(self) -> str:
        """For the dashboard: pass, fail, xfail, skip, na or notrun."""
        if self.na_reason is not None:
            return "na"
        if self.outcome is None:
            return "notrun"
        if self.outcome.symbol == FAIL:
            statuses = {e.status for c in self.cells for e in c.current}
            return "fail" if "fail" in statuses else "xfail"
        return "pass" if self.outcome.symbol == PASS else "skip"


@dataclass(frozen=True)
class Verdict:
    kind: str  # supported, not-supported, not-verified, not-run, n/a
    text: str
    categories: tuple[str, ...] = ()


# The link-label suffix of a view of another implementation than the row's own.
KEY_SUFFIX = {CUSTOM: "c", FORCE_HF: "h"}
# A stack's own model class (e.g. NeMo AutoModel's, where its registry has one).
STACK_OWN = "stack-own"


@dataclass
class ArchView:
    name: str
    arch: Architecture
    number: int  # the row's position in llm.md (1-based), also its link labels
    groups: list[Group]
    verdict: Verdict
    required: list[CellView]
    per_release: dict[Release, Outcome | None]  # over the required cells
    regression: Regression | None  # of a required cell
    pruned: list[PrunedCell]  # the row's combinations that cannot run, with their reasons
    family_links: list[tuple[str, str]] = field(default_factory=list)
    stack: str = REFERENCE_STACK  # the stack whose cells (and records) the view shows
    implementation: str = ""  # the cells' implementation axis ("" the row's own, "custom", "force_hf")
    # A stack with classes of its own (StackSpec.implementations): its "" cells run its class.
    stack_classes: bool = False

    @property
    def implementation_kind(self) -> str:
        """Whose model code the view's cells run: transformers, remote-code, custom, or the stack's own."""
        if self.implementation == CUSTOM:
            return CUSTOM
        if self.implementation == FORCE_HF:
            return TRANSFORMERS
        return STACK_OWN if self.stack_classes else self.arch.implementation_kind

    @property
    def key(self) -> str:
        """The view's link labels in llm.md: the row's number, and another implementation's beside it."""
        return f"{self.number}{KEY_SUFFIX.get(self.implementation, '')}"

    @property
    def code(self) -> dict:
        """The newest provenance its records carry (records before schema 4 carry none)."""
        found = [e for e in self.evidence if e.code]
        return max(found, key=lambda e: e.timestamp).code if found else {}

    @property
    def ran(self) -> bool:
        """Whether any of its cells has a verdict (not only skips): what a row rests on."""
        return any(c.outcome is not None and c.outcome.symbol != releases.BLOCKED for c in self.cells)

    @property
    def cells(self) -> list[CellView]:
        return [c for g in self.groups for c in g.cells]

    @property
    def evidence(self) -> list[Evidence]:
        return sorted((e for c in self.cells for e in c.evidence),
                      key=lambda e: (e.cell_id, e.release.key, where_order(e.where)))

    @property
    def release_spans(self) -> list[releases.Span]:
        return releases.spans(self.per_release)

    @property
    def release_text(self) -> str:
        """The ranges of every release line (harness.report.releases.spans_text)."""
        return releases.spans_text(self.release_spans)

    @property
    def regressed_groups(self) -> list[Group]:
        return [g for g in self.groups if g.regression]

    def group(self, method: str, layout: str) -> Group:
        return next(g for g in self.groups if g.method == method and g.layout == layout)


# --- building -------------------------------------------------------------------------------

def evidence_by_cell(records: pd.DataFrame) -> dict[str, list[Evidence]]:
    shown = latest(records, by=BY)
    by_cell: dict[str, list[Evidence]] = {}
    for row in shown.to_dict("records"):
        by_cell.setdefault(row["cell_id"], []).append(Evidence(
            cell_id=row["cell_id"], method=row["method"], layout=row["layout"], tier=row["tier"],
            check=row["check"], shape=row["shape"], variant=row["variant"], where=row["where"],
            where_short=row["where_short"], status=row["status"], category=row["category"],
            message=strip_machine_paths(row["message"]), run_id=str(row["run_id"]),
            timestamp=str(row["timestamp"]),
            release=Release(str(row["transformers"]), row["env_peft"] and str(row["env_peft"]),
                            str(row["torch"]), str(row["where"])),
            torch=str(row["torch"]), device_name=str(row["device_name"]),
            device_count=int(row["env_device_count"] or 1), backend=row["env_backend"] or None,
            git_sha=str(row["git_sha"] or "unknown"), metrics=row["metrics"] or {},
            code=row["code"] or {}, world_size=int(row["env_world_size"] or 1)))
    for items in by_cell.values():
        items.sort(key=lambda e: (e.release.key, where_order(e.where)))
    return by_cell


def cell_view(cell: Cell, evidence: list[Evidence]) -> CellView:
    per_release: dict[Release, list[Evidence]] = {}
    for e in evidence:
        per_release.setdefault(e.release, []).append(e)
    outcomes = {r: releases.outcome((e.status, e.category) for e in found)
                for r, found in per_release.items()}
    ran = [r for r, o in outcomes.items() if o is not None]
    newest = max(ran, key=lambda r: r.key) if ran else None
    current = per_release.get(newest, []) if newest else []
    return CellView(cell, evidence, outcomes, current, outcomes.get(newest) if newest else None,
                    releases.regression(outcomes))


def group_view(method: str, layout: str, cells: list[CellView], reason: str | None) -> Group:
    if not cells:
        return Group(method, layout, [], reason or "no cells", None, None)
    return Group(method, layout, cells, None, releases.combine(c.outcome for c in cells),
                 releases.earliest(c.regression for c in cells))


def not_run_verdict(categories: tuple[str, ...]) -> Verdict:
    """No required cell ran, each said why: never 'not supported', which is a claim about the model.
    Remote code that only waits for the opt-in (and its code in the local HF cache) says so."""
    if categories == (OPT_IN_SKIP,):
        return Verdict("not-run", "⊘ not run (remote code, opt-in)", categories)
    return Verdict("not-run", f"⊘ not run: {', '.join(categories)}", categories)


def verdict_for(required: list[CellView]) -> Verdict:
    if not required:
        return Verdict("n/a", "n/a: no runnable cell")
    current = releases.combine(c.outcome for c in required)
    if current is not None and current.symbol == releases.BLOCKED:
        return not_run_verdict(current.categories)
    if current is not None and current.symbol == FAIL:
        return Verdict("not-supported", f"✗ not supported: {', '.join(current.categories)}",
                       current.categories)
    passed = sum(c.outcome is not None and c.outcome.symbol == PASS for c in required)
    if passed == len(required):
        return Verdict("supported", "✓ supported")
    if passed == 0 and current is not None:
        return Verdict("not-supported", f"✗ not supported: {', '.join(current.categories)}",
                       current.categories)
    return Verdict("not-verified", f"— not verified: {passed} of {len(required)} required cells passed")


def per_release_outcomes(cells: list[CellView]) -> dict[Release, Outcome | None]:
    found: dict[Release, list[Outcome | None]] = {}
    for c in cells:
        for release, outcome in c.per_release.items():
            found.setdefault(release, []).append(outcome)
    return {r: releases.combine(o) for r, o in found.items()}


def na_reason(matrix: Matrix, name: str, method: str, layout: str, pruned: list[PrunedCell]) -> str:
    """Why no cell of (method, layout) can run: the layout's constraint where one rules the row
    out ('EP needs a MoE model'), else the reasons of the row's pruned cells of that group."""
    arch = matrix.architectures[name]
    constraint = violated_constraint(matrix, arch, matrix.layouts[layout])
    if constraint:
        return constraint
    reasons = {p.reason for p in pruned if p.cell.method == method and p.cell.layout == layout}
    return "; ".join(sorted(reasons)) or "no cells"


def arch_views(matrix: Matrix, records: pd.DataFrame, stack: str = REFERENCE_STACK,
               implementation: str = "") -> list[ArchView]:
    """One view per architecture row, in the matrix's (sorted) order, of one stack's cells and
    records (a record counts for a cell only when both name the same stack), and of one
    implementation (the row's own, the custom registry's class of a remote-code row, or a stack's
    force_hf)."""
    if not records.empty:
        records = records[(records["stack"] == stack) & (records["implementation"] == implementation)]
    evidence = evidence_by_cell(records)
    cells, pruned = expand(matrix)
    cells = [c for c in cells if c.stack == stack and c.implementation == implementation]
    pruned = [p for p in pruned if p.cell.stack == stack and p.cell.implementation == implementation]
    by_arch: dict[str, list[Cell]] = {}
    for cell in cells:
        by_arch.setdefault(cell.architecture, []).append(cell)
    pruned_by_arch: dict[str, list[PrunedCell]] = {}
    for p in pruned:
        pruned_by_arch.setdefault(p.cell.architecture, []).append(p)
    tiny_tiers = {t for t, tier in matrix.tiers.items() if tier.source == "tiny"}
    views = []
    for number, name in enumerate(sorted(matrix.architectures), start=1):
        own = [cell_view(c, evidence.get(c.id, [])) for c in by_arch.get(name, [])]
        own_pruned = pruned_by_arch.get(name, [])
        groups = []
        for method in matrix.methods:
            for layout in matrix.layouts:
                chosen = [c for c in own if c.cell.method == method and c.cell.layout == layout]
                groups.append(group_view(method, layout, chosen, na_reason(matrix, name, method, layout,
                                                                           own_pruned)))
        required = ([c for c in own if c.cell.tier in tiny_tiers and matrix.layouts[c.cell.layout].required]
                    or own)
        views.append(ArchView(
            name=name, arch=matrix.architectures[name], number=number, groups=groups,
            verdict=verdict_for(required), required=required,
            per_release=per_release_outcomes(required),
            regression=releases.earliest(c.regression for c in required), pruned=own_pruned,
            stack=stack, implementation=implementation,
            stack_classes=bool(matrix.stacks[stack].implementations) if stack in matrix.stacks else False))
    return views
