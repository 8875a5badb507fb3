"""Render the supported-models docs from (Matrix, records): a pure function, then a writer.

The docs may only claim what a record shows, and must say where each claim was verified: a
mark reads "✓ cpu" or "✓ H100", never a bare "✓", and every mark carries a footnote naming
the run (versions, device, date) and an evidence table naming the record (cell id, run id).
Output is deterministic (sorted, no clock), so `render --check` can compare the committed
docs with what the records give, and a nightly docs diff shows only real changes.

Marks are computed per (architecture, method, layout) over that group's runnable cells (all
tiers and checks), separately for each place a record came from ("cpu", or a GPU's name):
    ✓        every runnable cell of the group passed there
    ✓ 1/2    the cells that ran passed, the others did not run there (e.g. no checkpoint)
    ✗ cat    a cell failed there (xfail, a declared known limit, counts as a failure)
    n/a      every cell of the group is pruned (the reason is in the evidence)
    —        nothing of the group ran anywhere
An architecture is supported when each of its required cells (runnable cells on tiers whose
source is "tiny", which every machine can run) passed somewhere, and no cell failed anywhere.
Records are taken newest per (cell, place); when one place ran several library versions, the
newest record wins and its run footnote names the versions.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
import pandas as pd

from harness.cells import Cell, expand
from harness.history import record_key
from harness.matrix import AUTO_CLASSES, FAILURE_CATEGORIES, Matrix
from harness.records import REPO_ROOT
from harness.results import FAILED, RAN, latest

DEFAULT_OUT = REPO_ROOT / "reports"
TEMPLATES = Path(__file__).resolve().parent / "templates"
GENERATED_DIRS = ("models",)
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
    "remote-code": (
        "The model exists only as remote code on the Hub (`trust_remote_code`), which the "
        "harness never executes.",
        "Use a transformers-native port of the model, or contribute one upstream."),
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
    "layout-unsupported": (
        "The parallel layout cannot be applied to this model.",
        "Use another layout, and open an issue with the message."),
    "crash": (
        "A rank died (segfault, abort, killed process).",
        "Re-run the cell alone and read its traceback; check driver and library versions."),
    "timeout": (
        "The cell did not finish within its time limit (a hang or a deadlock).",
        "Look for collectives that differ between ranks; re-run the cell alone."),
    "error": (
        "Any other exception while loading or training the model.",
        "Read the traceback in the record and open an issue with it."),
}


# --- small formatting helpers, also registered as jinja filters -----------------------------

def one_line(text, limit: int = 160) -> str:
    text = " ".join(str(text or "").split())
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


def metric_items(metrics: dict) -> list[tuple[str, str]]:
    """Scalar metrics as (name, text), lists as 'n values, first → last'; sorted by name."""
    items = []
    for key in sorted(metrics or {}):
        value = metrics[key]
        if "bytes" in key:
            items.append((key, human_bytes(value)))
        elif isinstance(value, list):
            if value:
                items.append((key, f"{len(value)} values, {number(value[0])} → {number(value[-1])}"))
        elif isinstance(value, dict):
            continue
        else:
            items.append((key, number(value)))
    return items


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-") or "x"


def where_order(where: str) -> tuple:
    return (where != "cpu", where)


# --- view models: plain data the templates only display -------------------------------------

@dataclass(frozen=True)
class Evidence:
    cell_id: str
    where: str
    where_short: str
    status: str
    category: str | None
    message: str
    run_id: str
    note: str
    timestamp: str
    metrics: dict = field(compare=False, repr=False)


@dataclass(frozen=True)
class Mark:
    symbol: str
    where: str
    detail: str
    notes: tuple[str, ...]
    status: str
    title: str


@dataclass(frozen=True)
class Group:
    method: str
    layout: str
    cells: tuple[str, ...]
    marks: tuple[Mark, ...]
    na_reason: str | None

    @property
    def text(self) -> str:
        if self.na_reason is not None:
            return "n/a"
        return " · ".join(f"{m.symbol} {m.where}" + (f" {m.detail}" if m.detail else "")
                          for m in self.marks) or "—"


@dataclass(frozen=True)
class Verdict:
    kind: str  # supported, not-supported, not-verified, n/a
    text: str
    categories: tuple[str, ...] = ()


@dataclass(frozen=True)
class RunNote:
    label: str
    run_id: str
    text: str


@dataclass
class ArchView:
    name: str
    arch: object
    groups: list[Group]
    verdict: Verdict
    evidence: list[Evidence]
    pruned: dict[str, str]
    family_links: list[tuple[str, str]] = field(default_factory=list)


# --- building the views ---------------------------------------------------------------------

def run_notes(shown: pd.DataFrame) -> dict[str, RunNote]:
    """One footnote per run: where it ran, the versions, the commit and the date(s)."""
    notes = {}
    for run_id, group in shown.groupby("run_id", sort=True):
        envs = []
        for where in sorted(set(group["where"]), key=where_order):
            rows = group[group["where"] == where]
            env = rows.iloc[0]
            backends = sorted({str(b) for b in rows["env_backend"] if b})
            if where == "cpu":
                place = "CPU (" + (", ".join(backends) if backends else "single process") + ")"
                place += f", {env['device_name']}"
            else:
                count = max(int(c or 1) for c in rows["env_device_count"])
                place = f"GPU {where} ×{count}" + (f" ({', '.join(backends)})" if backends else "")
            libraries = ("python", "torch", "transformers", "peft")
            versions = ", ".join(f"{k} {env['env_' + k]}" for k in libraries)
            envs.append(f"{place}; {versions}")
        days = sorted({str(t)[:10] for t in group["timestamp"]})
        date = days[0] if len(days) == 1 else f"{days[0]} to {days[-1]}"
        shas = sorted({str(s)[:12] for s in group["git_sha"]})
        text = f"run `{run_id}`: {' / '.join(envs)}; git {', '.join(shas)}; {date}"
        notes[run_id] = RunNote(f"run-{slug(run_id)}", run_id, text)
    return notes


def evidence_rows(shown: pd.DataFrame, notes: dict[str, RunNote]) -> dict[str, list[Evidence]]:
    by_cell: dict[str, list[Evidence]] = {}
    for row in shown.to_dict("records"):
        by_cell.setdefault(row["cell_id"], []).append(Evidence(
            cell_id=row["cell_id"], where=row["where"], where_short=row["where_short"],
            status=row["status"], category=row["category"], message=row["message"] or "",
            run_id=row["run_id"], note=notes[row["run_id"]].label, timestamp=row["timestamp"],
            metrics=row["metrics"] or {}))
    for rows in by_cell.values():
        rows.sort(key=lambda e: where_order(e.where))
    return by_cell


def mark_for(cells: list[str], found: list[Evidence]) -> Mark | None:
    """The verdict of one place on one group of cells (see the module docstring)."""
    ran = [e for e in found if e.status in RAN]
    if not ran:
        return _blocked_mark(found)
    failed = [e for e in ran if e.status in FAILED]
    passed = [e for e in ran if e.status == "pass"]
    notes = tuple(sorted({e.note for e in ran}))
    title = "; ".join(f"{e.cell_id}: {e.status} (run {e.run_id})"
                      for e in sorted(ran, key=lambda e: e.cell_id))
    where = ran[0].where_short
    if failed:
        categories = sorted({e.category or e.status for e in failed})
        return Mark("✗", where, ", ".join(categories), notes, "fail", title)
    detail = "" if len(passed) == len(cells) else f"{len(passed)}/{len(cells)}"
    return Mark("✓", where, detail, notes, "pass", title)


def _blocked_mark(found: list[Evidence]) -> Mark | None:
    """Cells this place could not run (remote code, an older transformers, no checkpoint):
    not a pass and not a failure of the model, but a reason the docs must show."""
    blocked = [e for e in found if e.status == "skip" and e.category]
    if not blocked:
        return None
    title = "; ".join(f"{e.cell_id}: skip {e.category} (run {e.run_id})"
                      for e in sorted(blocked, key=lambda e: e.cell_id))
    return Mark("⊘", blocked[0].where_short, ", ".join(sorted({e.category for e in blocked})),
                tuple(sorted({e.note for e in blocked})), "skip", title)


def group_view(method: str, layout: str, cells: list[Cell], pruned: list[str],
               evidence: dict[str, list[Evidence]]) -> Group:
    ids = [c.id for c in cells]
    if not ids:
        return Group(method, layout, (), (), "; ".join(sorted(set(pruned))) or "no cells")
    places: dict[str, list[Evidence]] = {}
    for cell_id in ids:
        for e in evidence.get(cell_id, []):
            places.setdefault(e.where, []).append(e)
    marks = [m for w in sorted(places, key=where_order) if (m := mark_for(ids, places[w]))]
    return Group(method, layout, tuple(ids), tuple(marks), None)


def verdict_for(required: list[str], runnable: list[str], evidence: dict[str, list[Evidence]]) -> Verdict:
    if not runnable:
        return Verdict("n/a", "n/a: no runnable cell")
    found = [e for cell_id in runnable for e in evidence.get(cell_id, [])]
    failed = sorted({(e.category or e.status, e.where_short) for e in found if e.status in FAILED})
    if failed:
        text = ", ".join(f"{cat} ({where})" for cat, where in failed)
        return Verdict("not-supported", f"✗ not supported: {text}", tuple(sorted({c for c, _ in failed})))
    passed_where = {cell_id: sorted({e.where_short for e in evidence.get(cell_id, []) if e.status == "pass"},
                                    key=where_order) for cell_id in required}
    missing = [cell_id for cell_id, wheres in passed_where.items() if not wheres]
    if missing:
        done = len(required) - len(missing)
        blocked = sorted({(e.category, e.where_short) for cell_id in missing
                          for e in evidence.get(cell_id, []) if e.status == "skip" and e.category},
                         key=lambda x: (x[0], where_order(x[1])))
        if blocked and done == 0:
            text = ", ".join(f"{cat} ({where})" for cat, where in blocked)
            categories = tuple(sorted({c for c, _ in blocked}))
            return Verdict("not-supported", f"✗ not supported: {text}", categories)
        return Verdict("not-verified", f"— not verified: {done} of {len(required)} required cells passed")
    wheres = sorted({w for ws in passed_where.values() for w in ws}, key=where_order)
    return Verdict("supported", f"✓ supported ({', '.join(wheres)})")


def arch_views(matrix: Matrix, evidence: dict[str, list[Evidence]]) -> list[ArchView]:
    cells, pruned = expand(matrix)
    by_arch: dict[str, list[Cell]] = {}
    for cell in cells:
        by_arch.setdefault(cell.architecture, []).append(cell)
    pruned_by_arch: dict[str, dict[str, str]] = {}
    for p in pruned:
        pruned_by_arch.setdefault(p.cell.architecture, {})[p.id] = p.reason
    views = []
    for name in sorted(matrix.architectures):
        arch, own = matrix.architectures[name], by_arch.get(name, [])
        own_pruned = pruned_by_arch.get(name, {})
        groups = []
        for method in matrix.methods:
            for layout in matrix.layouts:
                chosen = [c for c in own if c.method == method and c.layout == layout]
                reasons = [r for i, r in own_pruned.items() if i.startswith(f"{name}-{method}-{layout}-")]
                groups.append(group_view(method, layout, chosen, reasons, evidence))
        tiny_tiers = {t for t, tier in matrix.tiers.items() if tier.source == "tiny"}
        required = ([c.id for c in own if c.tier in tiny_tiers and matrix.layouts[c.layout].required]
                    or [c.id for c in own])
        rows = sorted((e for c in own for e in evidence.get(c.id, [])),
                      key=lambda e: (e.cell_id, where_order(e.where)))
        views.append(ArchView(name, arch, groups, verdict_for(required, required, evidence),
                              rows, own_pruned))
    return views


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


def passed_layouts(view: ArchView, matrix: Matrix) -> list[dict]:
    """Per method × layout × place where every cell that ran passed: the family page's table."""
    rows = []
    for group in view.groups:
        for mark in group.marks:
            if mark.status != "pass":
                continue
            found = [e for e in view.evidence if e.cell_id in group.cells and e.where_short == mark.where
                     and e.status == "pass"]
            peaks = [e.metrics.get("peak_memory_bytes") for e in found]
            peaks = [p for p in peaks if isinstance(p, int | float) and not isinstance(p, bool)]
            rows.append({
                "method": group.method, "layout": group.layout,
                "world_size": matrix.layouts[group.layout].world_size, "mark": mark,
                "cells": ", ".join(e.cell_id.removeprefix(f"{view.name}-{group.method}-{group.layout}-")
                                   for e in found),
                "peak": human_bytes(max(peaks)) if peaks else "not measured",
            })
    return rows


def failure_table(views: list[ArchView]) -> list[dict]:
    """Seed 001's 'when may a model not be supported', one row per observed failure category."""
    seen: dict[str, dict] = {}
    for view in views:
        for e in view.evidence:
            if e.status not in FAILED and not (e.status == "skip" and e.category):
                continue
            category = e.category or e.status
            row = seen.setdefault(category, {"category": category, "example": e, "archs": set()})
            row["archs"].add(view.name)
    rows = []
    for category in sorted(seen):
        issue, fix = CATEGORY_TEXT.get(category, (f"Failure category `{category}`.", "Read the message."))
        archs = sorted(seen[category]["archs"])
        rows.append({"category": category, "issue": issue, "solution": fix,
                     "example": seen[category]["example"], "archs": archs})
    return rows


def auto_class_table(views: list[ArchView]) -> list[dict]:
    rows = []
    for auto in AUTO_CLASSES:
        own = [v for v in views if v.arch.auto_class == auto]
        kinds = {k: sum(v.verdict.kind == k for v in own)
                 for k in ("supported", "not-supported", "not-verified")}
        if not own:
            status, notes = "Not in the matrix", "No matrix row uses this auto class."
        else:
            status = ("Supported" if kinds["supported"] else
                      "Failing" if kinds["not-supported"] else "Not verified")
            notes = (f"{kinds['supported']} of {len(own)} architectures supported, "
                     f"{kinds['not-supported']} not supported, {kinds['not-verified']} not verified; "
                     "see [llm.md](llm.md).")
        rows.append({"auto_class": auto, "task": TASKS.get(auto, auto), "status": status, "notes": notes})
    return rows


def grid(matrix: Matrix, views: list[ArchView], history: dict[str, list[dict]]) -> dict:
    """index.html: one row per architecture, one column per (method, layout, tier, check)."""
    columns = [(m, lay, t, c) for m in matrix.methods for lay in matrix.layouts
               for t in matrix.tiers for c in matrix.checks]
    severity = {"fail": 5, "xfail": 4, "pass": 3, "skip": 2}
    rows = []
    for view in views:
        by_cell: dict[str, list[Evidence]] = {}
        for e in view.evidence:
            by_cell.setdefault(e.cell_id, []).append(e)
        tds = []
        for column in columns:
            cell_id = "-".join((view.name, *column))
            found = by_cell.get(cell_id, [])
            if cell_id in view.pruned:
                status = "na"
            elif found:
                status = max((e.status for e in found), key=lambda s: severity.get(s, 0))
            else:
                status = "notrun"
            tds.append({"cell_id": cell_id, "status": status, "reason": view.pruned.get(cell_id),
                        "entries": [{"e": e, "metrics": metric_items(e.metrics)} for e in found],
                        "history": history.get(cell_id, [])[-HISTORY_LIMIT:]})
        rows.append({"view": view, "cells": tds})
    return {"columns": columns, "rows": rows}


def history_by_cell(frames: Iterable[pd.DataFrame]) -> dict[str, list[dict]]:
    """Every record of every run, de-duplicated by content, oldest first, per cell."""
    seen, out = set(), {}
    for frame in frames:
        for row in frame.to_dict("records"):
            key = record_key(row["record"])
            if key in seen:
                continue
            seen.add(key)
            out.setdefault(row["cell_id"], []).append(
                {"timestamp": row["timestamp"], "run_id": row["run_id"], "status": row["status"],
                 "where": row["where_short"]})
    for items in out.values():
        items.sort(key=lambda h: (h["timestamp"], h["run_id"], h["where"], h["status"]))
    return out


def real_shape_rows(matrix: Matrix, views: list[ArchView]) -> list[dict]:
    """One row per real-shape record: what fitting the real size on a GPU cost (or why it did not)."""
    shapes = {n: s.checkpoint for n, s in matrix.real_shapes.items()}
    rows = []
    for view in views:
        for e in view.evidence:
            if "@" not in e.cell_id or e.status not in RAN:
                continue
            m, shape = e.metrics, e.cell_id.rsplit("@", 1)[1]
            passed = e.status == "pass"
            peak = m.get("peak_reserved_bytes") or m.get("peak_memory_bytes")
            planned = m.get("planned_bytes")
            rows.append({
                "cell_id": e.cell_id, "checkpoint": shapes.get(shape, shape),
                "method": e.cell_id.split("-")[1], "where": e.where_short,
                "status": e.status + (f" ({e.category})" if e.category else ""),
                "params": number(m.get("params_total")), "peak": human_bytes(peak) if peak else "—",
                "asked": human_bytes(planned) if not passed and planned else "",
                "tokens_per_s": number(m.get("tokens_per_s")) if passed else "—",
                "mfu": f"{m['mfu']:.1%}" if passed and m.get("mfu") is not None else "—",
                "peak_tflops": m.get("peak_tflops"), "note": e.note})
    return sorted(rows, key=lambda r: (r["checkpoint"], r["method"], where_order(r["where"])))


def claim_rows(matrix: Matrix, views: list[ArchView]) -> list[dict]:
    """Each published claim with the verdict its real-shape measurements gave (or 'unverified')."""
    from harness.claims import evaluate

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
            rows.append({**verdict, "where": e.where_short if e else "—", "note": e.note if e else None,
                         "source": claim.source})
    return rows


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


def oldest_transformers_passed(records: pd.DataFrame) -> dict[str, str]:
    """Per architecture, the oldest transformers release with which one of its cells passed:
    with a transformers-version axis in CI this is the documented minimum version."""
    from packaging.version import InvalidVersion, Version

    out: dict[str, str] = {}
    if records.empty:
        return out
    passed = records[records["status"] == "pass"]
    for arch, versions in passed.groupby("architecture")["transformers"]:
        parsed = []
        for text in set(versions.dropna()):
            try:
                parsed.append((Version(text), text))
            except InvalidVersion:
                continue
        if parsed:
            out[arch] = min(parsed)[1]
    return out


def render_docs(matrix: Matrix, records: pd.DataFrame,
                history_frames: Iterable[pd.DataFrame] = ()) -> dict[str, str]:
    """Relative path -> text of every generated document. Pure: same inputs, same bytes."""
    in_matrix = {c.id for c in expand(matrix)[0]}
    shown = latest(records, by=("where",))
    unused = int((~shown["cell_id"].isin(in_matrix)).sum()) if not shown.empty else 0
    shown = shown[shown["cell_id"].isin(in_matrix)] if not shown.empty else shown
    notes = run_notes(shown)
    views = arch_views(matrix, evidence_rows(shown, notes))
    pages = families(views)
    real_shapes, claims = real_shape_rows(matrix, views), claim_rows(matrix, views)
    env = environment()
    common = {"matrix": matrix, "views": views, "notes": [notes[k] for k in sorted(notes)],
              "notes_by_run": notes, "unused": unused, "records": len(records),
              "oldest_passed": oldest_transformers_passed(shown),
              "counts": {k: sum(v.verdict.kind == k for v in views)
                         for k in ("supported", "not-supported", "not-verified", "n/a")}}
    docs = {
        "llm.md": env.get_template("llm.md.j2").render(**common, real_shapes=real_shapes, claims=claims),
        "overview.md": env.get_template("overview.md.j2").render(
            **common, auto_classes=auto_class_table(views), failures=failure_table(views),
            known=FAILURE_CATEGORIES),
        "index.html": env.get_template("index.html.j2").render(
            **common, grid=grid(matrix, views, history_by_cell([records, *history_frames]))),
        "models/index.md": env.get_template("models_index.md.j2").render(**common, pages=pages),
    }
    family = env.get_template("family.md.j2")
    for page in pages:
        used = sorted({e.run_id for v in page["archs"] for e in v.evidence})
        docs[f"models/{page['slug']}.md"] = family.render(
            **common, page=page, page_notes=[notes[r] for r in used],
            passed={v.name: passed_layouts(v, matrix) for v in page["archs"]})
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
