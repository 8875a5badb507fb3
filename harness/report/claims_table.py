"""Where a row of a stack's own supported-models page comes from (reports/stacks/<stack>/llm.md).

A stack whose matrix entry names a `claims_file` publishes a table of its own: NeMo AutoModel's
"Supported Models" (seed 000) lists the architectures it "tests against (FSDP2 combined with
SFT/PEFT)". This page keeps that table's shape and order, one row per published row
(architectures sharing their example checkpoints were one row there, e.g. `CohereForCausalLM` /
`Cohere2ForCausalLM`), and gives each the verdict of the stack's own records:

- the scope is what the claim says: the stack's cells of methods sft and lora under the layouts
  that shard with FSDP2 or not at all (`single`, FSDP2 over one GPU as its recipes run, and
  `fsdp2`), every check and tier the stack runs;
- a row's **status** is its default path's, what a user gets without options: the stack's own
  class where it has one for the row (its cells ran), else the other implementation
  (force_hf); the verdict cell names both where both ran;
- **verified**: every cell that ran passed, and each method passed at least one;
  **failing**: a cell failed (the first failure's check and message are shown);
  **not run**: nothing got a verdict (the skip's reason is shown).

Rows of the matrix outside the claims file that the stack verified are "also passes". The
declaration the stack makes of each row (`declared`: e.g. AutoModel's `query_capabilities`) is
set against the layouts that ran.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.report import releases
from harness.report.headings import ran_on
from harness.report.views import ArchView, CellView, Evidence
from harness.spec.matrix import Matrix, StackSpec

# The published claim: FSDP2 combined with SFT and PEFT (one GPU's FSDP2 is `single`).
SCOPE_LAYOUTS = ("single", "fsdp2")
SCOPE_METHODS = ("sft", "lora")
VERIFIED, FAILING, NOT_RUN = "verified", "failing", "not run"
# The capabilities a declaration names, and the layout whose cells show each.
CAPABILITY_LAYOUTS = {"supports_tp": "tp", "supports_ep": "ep"}


def in_scope(cell: CellView) -> bool:
    return cell.cell.layout in SCOPE_LAYOUTS and cell.cell.method in SCOPE_METHODS


def first(evidence: list[Evidence], statuses: tuple[str, ...]) -> Evidence | None:
    return next((e for e in sorted(evidence, key=lambda e: e.cell_id) if e.status in statuses), None)


def short(text: str, limit: int = 150) -> str:
    """A message for a table cell: one line, no pipes, at most `limit` characters."""
    text = " ".join(str(text or "").split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def method_mark(view: ArchView, method: str) -> tuple[str, str]:
    """(status, mark) of one method of a view over the scope, e.g. ('failing', '✗ generate error:
    `AttributeError: ...`')."""
    cells = [c for c in view.cells if c.cell.method == method and in_scope(c)]
    current = [e for c in cells for e in c.current]
    failed = first(current, releases.FAILED)
    if failed is not None:
        return FAILING, f"✗ {failed.check} {failed.category}: `{short(failed.message)}`"
    if any(e.status == "pass" for e in current):
        return VERIFIED, "✓"
    skipped = first(current, ("skip",))
    if skipped is not None:
        return NOT_RUN, f"⊘ {skipped.category}: {short(skipped.message, 110)}"
    return NOT_RUN, "—"


def view_status(view: ArchView) -> tuple[str, str]:
    """(status, text) of a view: failing if a method fails, verified if every method passed; the
    methods with one mark are named together ('sft, lora ✓')."""
    marks = {m: method_mark(view, m) for m in SCOPE_METHODS}
    statuses = [s for s, _ in marks.values()]
    status = FAILING if FAILING in statuses else VERIFIED if all(s == VERIFIED for s in statuses) else NOT_RUN
    together: dict[str, list[str]] = {}
    for method, (_, mark) in marks.items():
        together.setdefault(mark, []).append(method)
    return status, " · ".join(f"{', '.join(methods)} {mark}" for mark, methods in together.items())


def implementation_name(view: ArchView) -> str:
    return view.implementation or "own class"


@dataclass(frozen=True)
class ArchClaim:
    """One architecture's verdict on the stack: its default path, and every path that ran."""

    name: str
    status: str
    text: str
    views: tuple[ArchView, ...]


def offered(view: ArchView) -> bool:
    """Whether the view's implementation exists for the row: some record of it is more than a
    `not-offered` skip (e.g. AutoModel has no class of its own for the row)."""
    current = [e for c in view.cells for e in c.current]
    return bool(current) and any(e.category != "not-offered" for e in current)


def arch_claim(own: ArchView, other: ArchView) -> ArchClaim:
    """The default path is the stack's own class where its cells ran, else the other implementation;
    the text names every implementation the row has (one that could not run says why)."""
    ran = [v for v in (own, other) if v.ran]
    default = ran[0] if ran else own
    status, _ = view_status(default)
    shown = [v for v in (own, other) if offered(v)] or [own]
    if len(shown) == 1:
        text = f"{implementation_name(shown[0])}: {view_status(shown[0])[1]}"
    else:
        text = " · ".join(f"{implementation_name(v)}: {view_status(v)[1]}" for v in shown)
    return ArchClaim(own.name, status, text, tuple(shown))


@dataclass(frozen=True)
class ClaimRow:
    """One row of the published table, with the records' verdict."""

    architectures: tuple[str, ...]
    models: str
    examples: str
    status: str
    verdict: str

    @property
    def names(self) -> str:
        return " / ".join(f"`{a}`" for a in self.architectures)

    @property
    def cells(self) -> tuple[str, ...]:
        mark = {VERIFIED: "✓", FAILING: "✗", NOT_RUN: "⊘"}[self.status]
        return self.names, self.models, self.examples, f"**{mark} {self.status}** — {self.verdict}"


def published_groups(matrix: Matrix, spec: StackSpec) -> list[list[str]]:
    """The claims file's rows in file order, joined where they share their example checkpoints
    (one row of the published table)."""
    groups: dict[tuple[str, ...], list[str]] = {}
    for name, arch in matrix.architectures.items():
        if arch.source_file == spec.claims_file:
            groups.setdefault(arch.examples, []).append(name)
    return list(groups.values())


def examples_text(matrix: Matrix, names: list[str]) -> str:
    archs = [matrix.architectures[n] for n in names]
    examples = list(dict.fromkeys(e for a in archs for e in a.examples))
    recipes = list(dict.fromkeys(r for a in archs for r in a.recipes))
    text = ", ".join(f"`{e}`" for e in examples[:3]) + (" etc." if len(examples) > 1 else "")
    return text + (" — example recipes: " + ", ".join(f"`{r}`" for r in recipes) if recipes else "")


def claim_rows(matrix: Matrix, spec: StackSpec, claims: dict[str, ArchClaim]) -> list[ClaimRow]:
    rows = []
    for names in published_groups(matrix, spec):
        mine = [claims[n] for n in names]
        statuses = {c.status for c in mine}
        status = FAILING if FAILING in statuses else VERIFIED if statuses == {VERIFIED} else NOT_RUN
        verdict = (mine[0].text if len(mine) == 1
                   else "; ".join(f"`{c.name}` {c.text}" for c in mine))
        families = list(dict.fromkeys(f for n in names for f in matrix.architectures[n].families))
        rows.append(ClaimRow(tuple(names), ", ".join(families), examples_text(matrix, names), status,
                             verdict))
    return rows


@dataclass(frozen=True)
class Declaration:
    """What the stack declares for a row against what its cells under that layout showed."""

    architecture: str
    declared: dict | None
    note: str
    observed: dict[str, str]
    disagreements: tuple[str, ...]


def declaration(claim: ArchClaim, stack: str) -> Declaration | None:
    """The row's declaration from its newest record that carries one, set against the layouts
    that show each capability (None where no record of the row got as far as asking)."""
    found = [e for v in claim.views for c in v.cells for e in c.current if stack in e.metrics]
    if not found:
        return None
    facts = max(found, key=lambda e: e.timestamp).metrics[stack]
    declared = facts.get("declared")
    observed, disagreements = {}, []
    for capability, layout in CAPABILITY_LAYOUTS.items():
        cells = [c for v in claim.views for c in v.cells if c.cell.layout == layout]
        result = releases.combine(c.outcome for c in cells)
        observed[capability] = (result.text if result else "not run") if cells else "n/a"
        said = (declared or {}).get(capability)
        if result and result.symbol == releases.FAIL and said:
            disagreements.append(f"declares {capability}, {layout} fails")
        if result and result.symbol == releases.PASS and declared is not None and not said:
            disagreements.append(f"does not declare {capability}, {layout} passes")
        if said and not result and cells:
            disagreements.append(f"declares {capability}, no {layout} cell has run")
    return Declaration(claim.name, declared, short(facts.get("declared_error", ""), 120), observed,
                       tuple(disagreements))


def versions(claims: list[ArchClaim], stack: str) -> dict[str, list[str]]:
    """The releases and devices behind the verdicts."""
    found = [e for c in claims for v in c.views for e in v.evidence]
    own = sorted({e.metrics[stack].get("release") for e in found if stack in e.metrics} - {None})
    return {"stack": own, "transformers": sorted({str(e.release.transformers) for e in found}),
            "torch": sorted({e.torch for e in found}), "devices": sorted({e.device_name for e in found})}


def undeclared(declarations: list[Declaration]) -> tuple[list[Declaration], list[str], str]:
    """The rows the stack declares something for, and the names of those it declares nothing for
    with the stack's own reason (its first one: they are alike)."""
    silent = [d for d in declarations if d.declared is None]
    return ([d for d in declarations if d.declared is not None], [d.architecture for d in silent],
            silent[0].note if silent else "")


def page_context(matrix: Matrix, spec: StackSpec, own: list[ArchView], other: list[ArchView]) -> dict:
    """Everything stacks/<stack>/llm.md shows."""
    claims = {o.name: arch_claim(o, x) for o, x in zip(own, other, strict=True)}
    claimed = {n for group in published_groups(matrix, spec) for n in group}
    rows = claim_rows(matrix, spec, claims)
    also = [c for name, c in claims.items() if name not in claimed and c.status == VERIFIED]
    declarations = [d for c in claims.values() for d in [declaration(c, spec.name)] if d is not None]
    by_status = {s: [r for r in rows if r.status == s] for s in (VERIFIED, FAILING, NOT_RUN)}
    not_run_reasons = sorted({e.category for r in by_status[NOT_RUN] for n in r.architectures
                              for v in claims[n].views for c in v.cells for e in c.current
                              if e.status == "skip" and e.category})
    declared, silent, silent_reason = undeclared(declarations)
    return {"spec": spec, "rows": rows, "also": also, "declarations": declared, "silent": silent,
            "silent_reason": silent_reason, "by_status": by_status,
            "not_run_reasons": not_run_reasons, "versions": versions(list(claims.values()), spec.name),
            "header": ("Architecture", "Models", "Example HF Models", verdict_head(claims.values()))}


def verdict_head(claims) -> str:
    """The verdict column's head names what ran, from the records (harness/report/headings.py): the
    published promise is FSDP2 with SFT / PEFT, and at world size 1 AutoModel applies no FSDP2."""
    evidence = [e for c in claims for v in c.views for e in v.evidence]
    return f"Verified (SFT / PEFT; {ran_on(evidence, 'FSDP2', 'fsdp2')})"
