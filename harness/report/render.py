"""Render the supported-models docs from (Matrix, records): a pure function, then a writer.

The docs may only claim what a record shows, and must say on which releases and where:

- `llm.md`: the seed's table, one row per architecture (`harness/report/llm_table.py` makes a row:
  the seed's columns, the FSDP2 verdict, the other layouts, the transformers releases), the
  regressions listed above it, then real-size measurements and published claims;
- `models/<family>.md`: per architecture, every layout's history by release and place (the
  versions, device, date and run of each result) and the failures with their messages; the
  llm.md marks link here;
- `overview.md`: auto classes and the failure categories the records show;
- `index.html`: the dashboard, one cell per (architecture, method, layout) with its cells'
  results, filterable by architecture, layout and status without a server;
- `stacks/<stack>.md`: llm.md's table for each stack other than the reference one (`native`,
  which llm.md shows), from that stack's records only, with what the stack is and how to
  install it. The family pages put every stack's marks side by side; index.html shows the
  stacks of DASHBOARD_STACKS (the reference stack's rows, to stay under 1 MB).

What the records mean (newest per cell, place and release; current = newest release; required
cells; regressions) is decided in `harness/report/views.py` and `harness/report/releases.py`; this module only
arranges it per page. Output is deterministic (sorted, no clock) so `render --check` can compare
the committed docs with the records, and a nightly docs diff shows only real changes. Absolute
paths of the machines that ran are never shown (`harness/report/machine_paths.py`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import jinja2
import pandas as pd

from harness.failures import FAILURE_CATEGORIES
from harness.report import claims_table, releases
from harness.report.bisects import Finding
from harness.report.headings import llm_header
from harness.report.history import record_key
from harness.report.llm_table import (
    Link,
    by_mark,
    family_page,
    github_anchor,
    implementation_label,
    layout_heading,
    llm_row,
    markdown_row,
    resting_views,
    slug,
    stacks_heading,
)
from harness.report.machine_paths import strip_machine_paths
from harness.report.records import REPO_ROOT
from harness.report.releases import FAILED, RAN
from harness.report.sweeps import Sweep
from harness.report.sweeps import grid as sweep_grid
from harness.report.views import KEY_SUFFIX, STACK_OWN, ArchView, Evidence, Group, arch_views, where_order
from harness.spec.cells import expand
from harness.spec.matrix import (
    AUTO_CLASSES,
    CUSTOM,
    REFERENCE_STACK,
    REMOTE_CODE,
    TRANSFORMERS,
    Matrix,
    StackSpec,
)

DEFAULT_OUT = REPO_ROOT / "reports"
TEMPLATES = Path(__file__).resolve().parent / "templates"
GENERATED_DIRS = ("models", "stacks")
HISTORY_LIMIT = 20

TASKS = {
    "AutoModelForCausalLM": "Text generation (LLM)",
    "AutoModelForImageTextToText": "Image-text-to-text (VLM)",
    "AutoModelForSequenceClassification": "Sequence classification",
}
# category -> (what it means for a user, what they can do about it), in our own words.
CATEGORY_TEXT = {
    "needs-newer-transformers": (
        "The installed transformers does not know the model type yet.",
        "Upgrade transformers to a release that has the model (the matrix row's "
        "`min_transformers` says which), then re-run the row."),
    "init": (
        "The model built from its config holds parameters that nothing initialised (NaN, infinite or "
        "absurd values): its code creates a weight, e.g. with torch.empty, and never fills it.",
        "Fix the model code's weight initialisation (its _init_weights); the message names the parameters."),
    "remote-code": (
        "The model exists only as remote code on the Hub (`trust_remote_code`): the harness runs the "
        "code of the local HF cache only under --trust-remote-code, and fetches nothing.",
        "Fetch the code with `compat-harness prefetch --code-only --arch ROW` on a machine with hub "
        "access, copy the HF cache over and run with --trust-remote-code; or use a custom implementation "
        "(the row's `implementation`), or a transformers-native port."),
    "peft-unsupported": (
        "PEFT cannot attach LoRA adapters to the model's layers.",
        "Set `lora_targets` / `lora_exclude` on the matrix row, or upgrade peft."),
    "oom": (
        "The device ran out of memory.",
        "Shard more (FSDP2, TP), shorten the batch or sequence, or use a larger GPU."),
    "numerics": (
        "The loss was not finite or did not fall, or a parallel layout drifted from the "
        "single-device reference beyond the dtype's tolerance.",
        "Compare with the `single` layout; look for unstable ops or a wrong dtype."),
    "check-failed": (
        "An assertion of the check failed (a weight that should move did not, a roundtrip "
        "was not exact).",
        "The message names the weight or tensor that differed; fix the model or the row."),
    "checkpoint-absent": (
        "The real checkpoint is not in the local Hugging Face cache.",
        "Pre-fetch it with `hf download <id>` on a machine with network access."),
    "no-tp-plan": (
        "The model declares no tensor-parallel plan, so TP cannot shard it.",
        "Add a `tp_plan` to the matrix row, or use FSDP2."),
    "stack-absent": (
        "The stack under test needs packages that were not installed where the cell ran.",
        "Install the stack's extra (e.g. `pip install 'compat-harness[trl]'`) and re-run."),
    "layout-not-applied": (
        "The stack said it applied the layout, but the model that trained was laid out otherwise "
        "(e.g. FSDP2 asked, DistributedDataParallel ran).",
        "Configure the stack as its docs say for this layout; the message says what ran instead."),
    "layout-unsupported": (
        "The parallel layout cannot be applied to this model.",
        "Use another layout, and open an issue with the message."),
    "crash": (
        "A rank died (segfault, abort, killed process).",
        "Re-run the cell alone and read its traceback; check driver and library versions."),
    "timeout": (
        "The cell did not finish within its time limit (a hang or a deadlock).",
        "Look for collectives that differ between ranks; re-run the cell alone."),
    "harness-error": (
        "The harness itself failed (its own code or configuration), not the stack under test.",
        "Open an issue against the harness with the message."),
    "evidence-unavailable": (
        "The check could not gather its own evidence for this layout (torch cannot gather a weight "
        "or gradient whole); no verdict on the stack, which its users never ask for that gather.",
        "Nothing to fix in the stack; the harness needs another way to compare (see the message)."),
    "error": (
        "Any other exception while loading or training the model.",
        "Read the traceback in the record and open an issue with it."),
}


# --- small formatting helpers, also registered as jinja filters -----------------------------

def one_line(text, limit: int = 160) -> str:
    text = " ".join(strip_machine_paths(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def md_text(text, limit: int = 160) -> str:
    """Plain text safe inside a markdown table cell: no pipes, no raw HTML."""
    text = one_line(text, limit)
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def md_code(text, limit: int = 160) -> str:
    """A markdown code span (literal text, so `<script>` stays text) safe in a table cell."""
    text = one_line(text, limit).replace("|", "\\|")
    if not text:
        return ""
    fence = "``" if "`" in text else "`"
    return f"{fence} {text} {fence}" if fence == "``" else f"`{text}`"


def human_bytes(value) -> str:
    if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
        return "not measured"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return ""


def number(value) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return f"{value:.4g}"


def place(e: Evidence) -> str:
    """Where a result was obtained, for a reader: 'cpu (x86_64, 2 cores), gloo' or 'H100 ×8, nccl'."""
    backend = f", {e.backend}" if e.backend else ""
    return f"{e.device_name}{backend}" if e.where == "cpu" else f"{e.where_short} ×{e.device_count}{backend}"


# --- runs: the versions, device, commit and dates behind each result -----------------------

@dataclass(frozen=True)
class Run:
    run_id: str
    short: str  # r1, r2, ... in run-id order: what index.html shows next to a result
    places: str
    versions: str
    git: str
    dates: str

    @property
    def text(self) -> str:
        return f"{self.places}; {self.versions}; git {self.git}; {self.dates}"


def runs_of(evidence: Iterable[Evidence], python: dict[str, str]) -> list[Run]:
    by_run: dict[str, list[Evidence]] = {}
    for e in evidence:
        by_run.setdefault(e.run_id, []).append(e)
    out = []
    for i, run_id in enumerate(sorted(by_run), start=1):
        items = by_run[run_id]
        places = sorted({place(e) for e in items})
        versions = sorted({f"python {python.get(run_id, '?')}, torch {e.torch}, transformers "
                           f"{e.release.transformers}, peft {e.release.peft}" for e in items})
        days = sorted({e.date for e in items})
        out.append(Run(run_id, f"r{i}", " / ".join(places), " / ".join(versions),
                       ", ".join(sorted({e.git_sha[:12] for e in items})),
                       days[0] if len(days) == 1 else f"{days[0]} to {days[-1]}"))
    return out


# --- family pages: every layout's history by release and place ------------------------------

@dataclass
class HistoryRow:
    """One (release, place) of a layout section: each method's outcome there."""

    release: releases.Release
    where: str
    torch: str
    marks: list[str]
    dates: str
    runs: str
    peak: str


@dataclass
class LayoutSection:
    layout: str
    heading: str
    anchor: str
    world_size: int
    groups: list[Group]
    spans: str
    history: list[HistoryRow]
    failures: list[Evidence]
    cells: list[tuple[str, str]]  # (method, 'tiny-train, tiny-parity')


def group_mark(group: Group, found: list[Evidence]) -> str:
    if group.na_reason is not None:
        return "n/a"
    outcome = releases.outcome((e.status, e.category) for e in found)
    if outcome is None:
        return "—"
    passed = sum(e.status == "pass" for e in found)
    return f"{outcome.text} ({passed}/{len(group.cells)} passed)"


def peak_of(found: list[Evidence]) -> str:
    peaks = [e.metrics.get("peak_memory_bytes") for e in found if e.status == "pass"]
    peaks = [p for p in peaks if isinstance(p, int | float) and not isinstance(p, bool)]
    return human_bytes(max(peaks)) if peaks else "not measured"


def layout_section(view: ArchView, layout: str, methods: list[str], world_size: int) -> LayoutSection:
    groups = [view.group(m, layout) for m in methods]
    evidence = [e for g in groups for c in g.cells for e in c.evidence]
    keys = sorted({(e.release, e.where) for e in evidence},
                  key=lambda k: (k[0].key, where_order(k[1])), reverse=True)
    history = []
    for release, where in keys:
        here = [e for e in evidence if e.release == release and e.where == where]
        by_method = [[e for e in here if e.cell_id in {c.cell.id for c in g.cells}] for g in groups]
        history.append(HistoryRow(
            release, " / ".join(sorted({place(e) for e in here})), ", ".join(sorted({e.torch for e in here})),
            [group_mark(g, found) for g, found in zip(groups, by_method, strict=True)],
            ", ".join(sorted({e.date for e in here})), ", ".join(sorted({e.run_id for e in here})),
            peak_of(here)))
    outcomes: dict[releases.Release, list] = {}
    for g in groups:
        for c in g.cells:
            for release, found in c.per_release.items():
                outcomes.setdefault(release, []).append(found)
    heading = layout_heading(layout, view.name, view.stack, view.implementation)
    return LayoutSection(
        layout, heading, github_anchor(heading), world_size, groups,
        releases.spans_text(releases.spans({r: releases.combine(o) for r, o in outcomes.items()})),
        history, newest_release_first(e for e in evidence if e.status in FAILED),
        [(g.method, ", ".join(c.suffix for c in g.cells)) for g in groups if g.cells])


def newest_release_first(evidence: Iterable[Evidence]) -> list[Evidence]:
    by_cell = sorted(evidence, key=lambda e: (e.cell_id, where_order(e.where)))
    return sorted(by_cell, key=lambda e: e.release.key, reverse=True)


def families(views: list[ArchView]) -> list[dict]:
    """One page per family slug (names that differ only in case or punctuation share one)."""
    pages: dict[str, dict] = {}
    for view in views:
        for family in view.arch.families:
            page = pages.setdefault(slug(family), {"slug": slug(family), "names": set(), "archs": []})
            page["names"].add(family)
            if not any(v is view for v in page["archs"]):
                page["archs"].append(view)
            link = (family, f"models/{slug(family)}.md")
            if link not in view.family_links:
                view.family_links.append(link)
    out = []
    for key in sorted(pages):
        page = pages[key]
        out.append({"slug": key, "title": " / ".join(sorted(page["names"])), "archs": page["archs"]})
    return out


# --- overview.md ---------------------------------------------------------------------------

def failure_table(views: list[ArchView]) -> list[dict]:
    """Seed 001's 'when may a model not be supported', one row per observed failure category,
    its example taken from the newest release that shows it."""
    seen: dict[str, dict] = {}
    for view in views:
        for e in view.evidence:
            if e.status not in FAILED and not (e.status == "skip" and e.category):
                continue
            row = seen.setdefault(e.category or e.status, {"examples": [], "archs": set()})
            row["examples"].append(e)
            row["archs"].add(view.name)
    rows = []
    for category in sorted(seen):
        issue, fix = CATEGORY_TEXT.get(category, (f"Failure category `{category}`.", "Read the message."))
        newest = max(e.release.key for e in seen[category]["examples"])
        example = min((e for e in seen[category]["examples"] if e.release.key == newest),
                      key=lambda e: (e.cell_id, where_order(e.where)))
        rows.append({"category": category, "issue": issue, "solution": fix, "example": example,
                     "archs": sorted(seen[category]["archs"])})
    return rows


def known_limit_rows(matrix: Matrix) -> list[dict]:
    """Every declared known limit: where it holds, on which releases, and where upstream tracks it."""
    rows = []
    for name in sorted(matrix.architectures):
        for limit in matrix.architectures[name].known_limits:
            # the stack and implementation only where they are not the native stack's own class
            stack = limit.stack if limit.stack != REFERENCE_STACK else None
            implementation = limit.implementation if limit.implementation != "default" else None
            scope = " · ".join(f"{axis} {value}" for axis, value in (
                ("stack", stack), ("implementation", implementation), ("method", limit.method),
                ("layout", limit.layout), ("check", limit.check), ("tier", limit.tier),
                ("variant", limit.variant)) if value) or "every cell"
            releases = " · ".join(f"{package} {spec}" for package, spec in (
                ("transformers", limit.transformers), ("peft", limit.peft)) if spec) or "every release"
            rows.append({"arch": name, "category": limit.category, "scope": scope, "releases": releases,
                         "reason": limit.reason, "upstream": limit.upstream})
    return rows


def api_releases(api) -> str:
    """The releases that offer a call: from the one that introduced it, every later one."""
    text = f"from {api.since}" if api.since else "every release"
    if api.removed:
        text += f"; removal announced for {api.removed['release']} ([changelog]({api.removed['url']}))"
    return text


def api_rows(matrix: Matrix) -> list[dict]:
    """The documented calls that apply each multi-rank layout, in the order a plain cell tries them."""
    return [{"layout": layout.name, "api": name, "call": matrix.apis[name].call,
             "releases": api_releases(matrix.apis[name]),
             "variant": "plain cells" if i == 0 else f"variant `+{name}`" + (
                 "" if matrix.apis[name].checks else " (fallback only)")}
            for layout in matrix.layouts.values() for i, name in enumerate(layout.apis)]


def auto_class_table(views: list[ArchView]) -> list[dict]:
    rows = []
    for auto in AUTO_CLASSES:
        own = [v for v in views if v.arch.auto_class == auto]
        kinds = {k: sum(v.verdict.kind == k for v in own)
                 for k in ("supported", "not-supported", "not-verified", "not-run")}
        if not own:
            status, notes = "Not in the matrix", "No matrix row uses this auto class."
        else:
            status = ("Supported" if kinds["supported"] else
                      "Failing" if kinds["not-supported"] else
                      "Not verified" if kinds["not-verified"] else "Not run")
            notes = (f"{kinds['supported']} of {len(own)} architectures supported, "
                     f"{kinds['not-supported']} not supported, {kinds['not-verified']} not verified, "
                     f"{kinds['not-run']} not run; see [llm.md](llm.md).")
        rows.append({"auto_class": auto, "task": TASKS.get(auto, auto), "status": status, "notes": notes})
    return rows


# --- index.html ----------------------------------------------------------------------------

# Per cell of the dashboard, the newest results listed (the rest: a count, and the family page).
DASHBOARD_ENTRIES = 6


def grid(matrix: Matrix, views: list[ArchView], run_short: dict[str, str],
         history: dict[str, list[dict]]) -> dict:
    """index.html: one row per architecture, one column per (method, layout), each cell holding its
    runnable cells' results per release and place. Aggregated so the page stays light."""
    columns = [(m, lay) for m in matrix.methods for lay in matrix.layouts]
    rows, anchored = [], set()
    for view in views:
        # a row's first line is #arch-NAME; a second implementation's line beside it #arch-IMPL-NAME
        second = (view.stack, view.name) in anchored
        anchor = f"{view.implementation}-{view.name}" if second else view.name
        anchored.add((view.stack, view.name))
        tds = []
        for method, layout in columns:
            group = view.group(method, layout)
            cells = []
            for c in group.cells:
                newest_first = sorted(c.evidence, key=lambda e: (e.release.key, where_order(e.where)),
                                      reverse=True)
                # One message per cell, its newest failure's (or skip reason): the page stays light;
                # the family page has every release's message.
                messages = [e.message for e in newest_first if e.status in (*FAILED, "skip") and e.message]
                # The newest releases and places only (a sweep adds one per release): the family
                # page lists every one.
                cells.append({"suffix": c.suffix, "message": messages[0] if messages else "",
                              "entries": [{"e": e, "run": run_short[e.run_id]}
                                          for e in newest_first[:DASHBOARD_ENTRIES]],
                              "older": max(0, len(newest_first) - DASHBOARD_ENTRIES)})
            runs = sorted((h for c in group.cells for h in history.get(c.cell.id, [])),
                          key=lambda h: (h["timestamp"], h["run_id"], h["where"], h["status"]))
            tds.append({"group": group, "cells": cells, "history": runs[-HISTORY_LIMIT:]})
        rows.append({"view": view, "cells": tds, "anchor": anchor})
    return {"columns": columns, "rows": rows, "reference": REFERENCE_STACK}


# The stacks whose rows the dashboard shows beside the reference stack's. A second stack's rows
# with the committed records (TRL: 1,604 records) took index.html from 0.99 to 1.5 MB, past the
# 1 MB it must stay under; other stacks are read on their pages (stacks/<stack>.md) and on the
# family pages, and a stack can be named here once the dashboard's rows are lighter.
DASHBOARD_STACKS = (REFERENCE_STACK,)


def grid_views(by_stack: dict[str, list[ArchView]], rows: list[list[ArchView]]) -> list[ArchView]:
    """The dashboard's rows: every architecture as llm.md shows it on the reference stack (`rows`:
    the views each row rests on, so a remote-code row whose custom class ran shows that class, as
    llm.md and the family page do), each followed by its row on every other stack of
    DASHBOARD_STACKS that has records for it (a row of nothing but 'not run' would only weigh the
    page)."""
    return [v for i in range(len(by_stack[REFERENCE_STACK])) for name, views in by_stack.items()
            if name in DASHBOARD_STACKS
            for v in (rows[i] if name == REFERENCE_STACK else [views[i]])
            if v.stack == REFERENCE_STACK or v.evidence]


def history_by_cell(frames: Iterable[pd.DataFrame]) -> dict[str, list[dict]]:
    """Every record of the history database, de-duplicated by content, oldest first, per cell."""
    seen, out = set(), {}
    for frame in frames:
        for row in frame.to_dict("records"):
            key = record_key(row["record"])
            if key in seen:
                continue
            seen.add(key)
            out.setdefault(row["cell_id"], []).append(
                {"timestamp": row["timestamp"], "run_id": row["run_id"], "status": row["status"],
                 "where": row["where_short"], "transformers": row["transformers"]})
    for items in out.values():
        items.sort(key=lambda h: (h["timestamp"], h["run_id"], h["where"], h["status"]))
    return out


# --- stacks: their marks side by side on the family pages, a page for each -----------------

def stack_order(matrix: Matrix) -> list[str]:
    """The declared stacks, the reference one first."""
    return sorted(matrix.stacks, key=lambda name: (name != REFERENCE_STACK, name))


def unused_records(matrix: Matrix, records: pd.DataFrame) -> tuple[int, str]:
    """How many records name no runnable cell of the matrix (an id it no longer has, or a stack
    it does not declare: such a record is shown nowhere), and a note on the undeclared stacks."""
    if records.empty:
        return 0, ""
    cells = {(c.id, c.stack) for c in expand(matrix)[0]}
    unused = sum(key not in cells for key in zip(records["cell_id"], records["stack"], strict=True))
    undeclared = records.loc[~records["stack"].isin(list(matrix.stacks)), "stack"].value_counts()
    if undeclared.empty:
        return unused, ""
    found = ", ".join(f"{int(n)} on stack `{name}`" for name, n in sorted(undeclared.items()))
    return unused, f" ({found}, which the matrix does not declare)"


def second_implementation(spec: StackSpec) -> str:
    """The implementation a stack's second view of each row shows: its own declared alternative
    (automodel's force_hf), else the custom registry's class of a remote-code row."""
    return next((name for name in spec.implementations if name != "default"), CUSTOM)


def column_name(stack: str, implementation: str = "") -> str:
    """A column of the family pages' stacks tables: a stack, or a stack's custom implementation."""
    return f"{stack} · {implementation}" if implementation else stack


@dataclass
class StackColumn:
    """One stack's (or a stack's custom implementation's) column of an architecture's stacks table
    on its family page."""

    name: str
    view: ArchView
    marks: list[str]  # per layout of the matrix, its methods folded where they agree

    @property
    def link(self) -> str:
        """The page with this column's table: llm.md for the reference stack, else the stack's."""
        return "../llm.md" if self.view.stack == REFERENCE_STACK else f"../stacks/{self.view.stack}.md"


def layout_marks(view: ArchView, layout: str, methods: list[str]) -> str:
    """'sft lora ✓', 'sft ✓ · lora ✗ numerics', 'n/a' (no method of the layout can run)."""
    groups = [(m, view.group(m, layout)) for m in methods]
    if all(g.na_reason is not None for _, g in groups):
        return "n/a"
    return " · ".join(f"{' '.join(names)} {g.text}" for names, g in by_mark(groups))


def stack_columns(by_column: dict[str, list[ArchView]], index: int, layouts: list[str],
                  methods: list[str]) -> list[StackColumn]:
    """The stacks table of one architecture (its index in the views): the reference stack, then
    every other stack and custom implementation that has a runnable cell for it; empty when no
    other one has."""
    columns = [StackColumn(name, views[index], [layout_marks(views[index], lay, methods) for lay in layouts])
               for name, views in by_column.items() if name == REFERENCE_STACK or views[index].cells]
    return columns if len(columns) > 1 else []


def implementation_lines(views: list[ArchView]) -> list[str]:
    """What a family page says of the code each of an architecture's verdicts rests on, with the
    sha256 of every code file the records name (a transformers class is the release's own)."""
    lines: dict[str, str] = {}  # by kind: one line each, the one with the records' hashes first
    for view in sorted(views, key=lambda v: not v.code):
        if not view.cells or view.implementation_kind in lines:
            continue
        code, kind = view.code, view.implementation_kind
        files = ", ".join(f"`{name}` sha256 `{digest[:16]}`"
                          for name, digest in sorted(code.get("files", {}).items()))
        if kind == REMOTE_CODE:
            where = f"`{view.arch.remote_repo}`"
            lines[kind] = (f"remote code of {where} @ `{code['revision']}`: {files}" if code.get("revision")
                           else f"remote code of {where}: no record ran it (it needs --trust-remote-code and "
                           "the code in the local HF cache)")
        elif kind == CUSTOM:
            lines[kind] = (f"custom registry: `{view.arch.implementation}` with `{view.arch.config_class}`"
                           + (f": {files}" if files else ""))
        elif kind == STACK_OWN:
            facts = [e.metrics.get(view.stack, {}) for e in view.evidence]
            classes = sorted({f.get("model_class") for f in facts if f.get("own_class")} - {None})
            lines[kind] = (f"{view.stack}'s own class" + (f": `{'`, `'.join(classes)}`" if classes else
                                                          " (none ran: it has no class of its own, or "
                                                          "nothing reached it)"))
        else:
            lines[kind] = "transformers' own class (the release each record names)"
    order = (REMOTE_CODE, CUSTOM, STACK_OWN, TRANSFORMERS)
    return [lines[k] for k in sorted(lines, key=order.index)]


def stack_text(spec: StackSpec) -> dict:
    """What a stack page says about its stack (from the matrix's `stacks` table)."""
    scope = "; ".join(f"{axis} {', '.join(values)}" for axis, values in (
        ("layouts", spec.layouts), ("methods", spec.methods), ("checks", spec.checks),
        ("tiers", spec.tiers)) if values) or "every cell of the matrix"
    return {"spec": spec, "scope": scope}


# --- llm.md: real sizes and published claims ----------------------------------------------

def real_shape_rows(matrix: Matrix, views: list[ArchView]) -> list[dict]:
    """One row per real-shape record: what fitting the real size on a GPU cost (or why it did not)."""
    shapes = {n: s.checkpoint for n, s in matrix.real_shapes.items()}
    rows = []
    for view in views:
        for e in view.evidence:
            if not e.shape or e.status not in RAN:
                continue
            m, shape = e.metrics, e.shape
            passed = e.status == "pass"
            peak = m.get("peak_reserved_bytes") or m.get("peak_memory_bytes")
            planned = m.get("planned_bytes")
            rows.append({
                "cell_id": e.cell_id, "checkpoint": shapes.get(shape, shape),
                "method": e.method, "where": e.where_short,
                "release": e.release.label(),
                "status": e.status + (f" ({e.category})" if e.category else ""),
                "params": number(m.get("params_total")), "peak": human_bytes(peak) if peak else "—",
                "asked": human_bytes(planned) if not passed and planned else "",
                "tokens_per_s": number(m.get("tokens_per_s")) if passed else "—",
                "mfu": f"{m['mfu']:.1%}" if passed and m.get("mfu") is not None else "—",
                "peak_tflops": m.get("peak_tflops")})
    return sorted(rows, key=lambda r: (r["checkpoint"], r["method"], where_order(r["where"]), r["release"]))


def claim_rows(matrix: Matrix, views: list[ArchView]) -> list[dict]:
    """Each published claim with the verdict its real-shape measurements gave (or 'unverified')."""
    from harness.spec.claims import evaluate

    judged: dict[str, list[tuple[Evidence, dict]]] = {}
    for view in views:
        for e in view.evidence:
            for verdict in e.metrics.get("claims") or []:
                judged.setdefault(verdict["claim"], []).append((e, verdict))
    rows = []
    for name, claim in sorted(matrix.claims.items()):
        found = judged.get(name) or [(None, vars(evaluate(
            claim, status=None, category=None, peak_bytes=None, device_name=None,
            device_count=claim.gpus, device_total_bytes=None)))]
        for e, verdict in found:
            rows.append({**verdict, "where": f"{e.where_short}, {e.release.label()}" if e else "—",
                         "source": claim.source})
    return rows


def sweep_notes(view: ArchView, sweeps: list[Sweep]) -> list[str]:
    """'every transformers release 5.15.0–5.25.0 ran (sweep NAME, peft 0.21.2, torch 2.13.0+cpu, cpu)'
    for each sweep that ran every final release of its range (none left out) on this row's cells."""
    notes = []
    for sweep in sweeps:
        found = sweep_grid(sweep, view.name, view.stack)
        if found and found.every_release:
            notes.append(f"every {sweep.package} release {sweep.releases[0]}–{sweep.releases[-1]} ran "
                         f"(sweep {sweep.name}, {sweep.line})")
    return notes


def bisect_text(view: ArchView, groups, findings: Iterable[Finding]) -> str:
    """The bisect findings that name the regressed cells: the package and release where it turned."""
    cells = {c.cell.id for g in groups for c in g.cells if c.regression}
    return "; ".join(f.text for f in findings if cells & set(f.cells))


def regression_items(views: list[ArchView], findings: Iterable[Finding] = ()) -> list[dict]:
    """The regressions listed at the top of llm.md: per row, the layouts that regressed, the first
    failing release seen (and the last passing one), a failing message, the evidence link."""
    items = []
    for view in views:
        groups = view.regressed_groups
        if not groups:
            continue
        first = releases.earliest(g.regression for g in groups)
        # each layout's methods; one that turned later than the row's first says from which release
        layouts: dict[str, list[str]] = {}
        for g in groups:
            turned = g.regression.first_failing
            later = "" if turned.key == first.first_failing.key else f" from **{turned.label()}**"
            layouts.setdefault(g.layout, []).append(f"{g.method}{later}")
        failing = [e for g in groups for c in g.cells for e in c.current
                   if c.regression and e.status in FAILED]
        example = min(failing, key=lambda e: (e.release.key, e.cell_id, where_order(e.where)))
        layout = example.layout
        heading = layout_heading(layout, view.name, view.stack, view.implementation)
        items.append({
            "view": view, "first": first.first_failing.label(), "last": first.last_passing.label(),
            "text": first.text, "bisect": bisect_text(view, groups, findings),
            "layouts": ", ".join(f"`{lay}` ({', '.join(ms)})" for lay, ms in layouts.items()),
            "example": example,
            "link": Link(f"{view.key}.{layout}", f"{family_page(view)}#{github_anchor(heading)}")})
    return items


def link_order(label: str) -> tuple:
    """'12.fsdp2' after '12' and before '12c' (a custom view's, or '12h' a force_hf view's) and '13':
    the link definitions follow the table's rows."""
    key, _, layout = label.partition(".")
    number = key.rstrip("".join(KEY_SUFFIX.values()))
    return (int(number), key != number, layout)


# --- the documents -------------------------------------------------------------------------

def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html", "html.j2"),
                                            default_for_string=True),
        undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(md_text=md_text, md_code=md_code, one_line=one_line, human_bytes=human_bytes)
    return env


def python_versions(records: pd.DataFrame) -> dict[str, str]:
    if records.empty:
        return {}
    return {str(r): str(p) for r, p in zip(records["run_id"], records["env_python"], strict=True)}


def render_docs(matrix: Matrix, records: pd.DataFrame,
                history_frames: Iterable[pd.DataFrame] = (),
                findings: Iterable[Finding] = (), sweeps: Iterable[Sweep] = ()) -> dict[str, str]:
    """Relative path -> text of every generated document. Pure: same inputs, same bytes."""
    unused, undeclared = unused_records(matrix, records)
    by_stack = {name: arch_views(matrix, records, name) for name in stack_order(matrix)}
    second = {name: second_implementation(matrix.stacks[name]) for name in stack_order(matrix)}
    custom = {name: arch_views(matrix, records, name, second[name]) for name in stack_order(matrix)}
    # every column of the family pages' stacks tables: each stack followed by its second implementation
    by_column = {column: views for name in stack_order(matrix) for column, views in
                 ((name, by_stack[name]), (column_name(name, second[name]), custom[name]))}
    views = by_stack[REFERENCE_STACK]
    others = {name: v for name, v in by_stack.items() if name != REFERENCE_STACK}
    pages = families(views)
    methods, layouts = list(matrix.methods), list(matrix.layouts)
    runs = runs_of([e for vs in by_column.values() for v in vs for e in v.evidence], python_versions(records))

    def rows_of(stack: str) -> list[list[ArchView]]:
        """Per architecture, the views a stack's row rests on (llm_table.resting_views)."""
        return [resting_views(own, mine) for own, mine in zip(by_stack[stack], custom[stack], strict=True)]

    def resting(stack: str) -> list[ArchView]:
        """A stack's rows of llm.md: per architecture, the views its verdicts rest on."""
        return [v for row in rows_of(stack) for v in row]

    def leading(stack: str) -> list[ArchView]:
        """Per architecture, the view its row's verdict is: the first it rests on (row_agreement)."""
        return [row[0] for row in rows_of(stack)]
    run_short = {r.run_id: r.short for r in runs}
    env = environment()

    def stats(shown: list[ArchView]) -> dict:
        found = [e for v in shown for e in v.evidence]
        return {"views": shown, "places": sorted({e.where_short for e in found}, key=where_order),
                "counts": {k: sum(v.verdict.kind == k for v in shown)
                           for k in ("supported", "not-supported", "not-verified", "not-run", "n/a")}}

    common = {"matrix": matrix, "unused": unused, "undeclared": undeclared, "records": len(records),
              "stacks": list(others), **stats(leading(REFERENCE_STACK))}
    leading_by_name = {v.name: v for v in leading(REFERENCE_STACK)}

    def table(shown: list[ArchView], prefix: str = "") -> dict:
        """llm.md's table (and the regressions above it) of one stack's views; links prefixed
        with the way from the page to reports/."""
        rows = [llm_row(v, layouts, methods, list(findings), sweep_notes(v, list(sweeps)))
                for v in shown]  # each view's own row
        regressions = regression_items(shown, list(findings))
        found = [*(link for r in rows for link in r.links), *(r["link"] for r in regressions)]
        links = {link.label: Link(link.label, prefix + link.target) for link in found}
        header = llm_header(shown)
        return {"header": markdown_row(header), "rule": markdown_row(("---",) * len(header)),
                "rows": [(v, r, markdown_row(r.cells)) for v, r in zip(shown, rows, strict=True)],
                "links": [links[k] for k in sorted(links, key=link_order)], "regressions": regressions}

    docs = {
        "llm.md": env.get_template("llm.md.j2").render(
            **common, **table(resting(REFERENCE_STACK)),
            real_shapes=real_shape_rows(matrix, views), claims=claim_rows(matrix, views)),
        "overview.md": env.get_template("overview.md.j2").render(
            **common, auto_classes=auto_class_table(views), failures=failure_table(views),
            known=FAILURE_CATEGORIES, apis=api_rows(matrix), choices=list(matrix.choices.values()),
            release_sets=list(matrix.release_sets.values()), known_limits=known_limit_rows(matrix)),
        "index.html": env.get_template("index.html.j2").render(
            **common, runs=runs, layouts=layouts,
            grid=grid(matrix, grid_views(by_stack, rows_of(REFERENCE_STACK)), run_short,
                      history_by_cell(history_frames))),
        "models/index.md": env.get_template("models_index.md.j2").render(**common, pages=pages,
                                                                         leading=leading_by_name),
    }
    stack_page = env.get_template("stack.md.j2")
    for name in others:
        docs[f"stacks/{name}.md"] = stack_page.render(**{**common, **stats(leading(name))},
                                                      **table(resting(name), "../"),
                                                      **stack_text(matrix.stacks[name]))
        if matrix.stacks[name].claims_file:  # the stack's own published table, with the records' verdicts
            docs[f"stacks/{name}/llm.md"] = env.get_template("stack_llm.md.j2").render(
                **claims_table.page_context(matrix, matrix.stacks[name], by_stack[name], custom[name]))
    family = env.get_template("family.md.j2")
    index = {v.name: i for i, v in enumerate(views)}
    for page in pages:
        sections, stacks, implementations = {}, {}, {}
        for v in page["archs"]:
            stacks[v.name] = stack_columns(by_column, index[v.name], layouts, methods)
            implementations[v.name] = implementation_lines([c[index[v.name]] for c in by_column.values()])
            # Another stack's layouts get a section where they ran: the targets of its page's links.
            sections[v.name] = [layout_section(v, lay, methods, matrix.layouts[lay].world_size)
                                for lay in layouts] + [
                s for c in stacks[v.name][1:] for lay in layouts
                for s in [layout_section(c.view, lay, methods, matrix.layouts[lay].world_size)] if s.history]
        shown = [views_of[index[v.name]] for v in page["archs"] for views_of in by_column.values()]
        shown_runs = {e.run_id for v in shown for e in v.evidence}
        page_runs = [r for r in runs if r.run_id in shown_runs]
        grids = {v.name: [g for sweep in sweeps for g in [sweep_grid(sweep, v.name, v.stack)] if g]
                 for v in page["archs"]}
        docs[f"models/{page['slug']}.md"] = family.render(
            **common, page=page, sections=sections, stack_tables=stacks, page_runs=page_runs,
            stacks_heading=stacks_heading, implementations=implementations, leading=leading_by_name,
            implementation_label=implementation_label, sweep_grids=grids)
    return dict(sorted(docs.items()))


def write_docs(out: Path | str, docs: dict[str, str]) -> list[str]:
    """Write every document; remove generated pages that the records no longer give."""
    out = Path(out)
    for extra in stale_files(out, docs):
        if extra not in docs:
            (out / extra).unlink()
    for rel, text in docs.items():
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return sorted(docs)


def stale_files(out: Path | str, docs: dict[str, str]) -> list[str]:
    """Documents that differ from what the records give: changed, missing or left over."""
    out = Path(out)
    stale = [rel for rel, text in docs.items()
             if not (out / rel).is_file() or (out / rel).read_text(encoding="utf-8") != text]
    for directory in GENERATED_DIRS:
        for path in sorted((out / directory).glob("*.md")):
            rel = path.relative_to(out).as_posix()
            if rel not in docs:
                stale.append(rel)
    return sorted(stale)
