"""Diff two runs: regressions (pass -> fail), fixes (fail -> pass), new and vanished cells.

Nightly CI needs one question answered with an exit code: did anything that passed stop
passing? A side of the diff is a run id from the history database or a record file; within a
side, the newest record of each cell counts. Without arguments the newest run is compared
with the run before it on the same kind of device (CPU with CPU, GPU with GPU), because a CPU
run and a GPU run cover different cells and would show everything as new or vanished.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from harness.report import history
from harness.report.results import FAILED, latest, load_results


class DiffError(ValueError):
    """The runs to compare cannot be found; the message says what exists instead."""


@dataclass(frozen=True)
class Side:
    label: str
    run_ids: tuple[str, ...]
    devices: tuple[str, ...]
    started: str
    statuses: dict[str, dict] = field(repr=False)


@dataclass(frozen=True)
class Change:
    cell_id: str
    before: str | None
    after: str | None
    category: str | None
    message: str


@dataclass(frozen=True)
class RunDiff:
    a: Side
    b: Side
    regressions: list[Change]
    fixes: list[Change]
    new: list[Change]
    vanished: list[Change]
    changed: list[Change]


def side(frame: pd.DataFrame, label: str) -> Side:
    """One run (or file) reduced to the newest record per cell."""
    newest = latest(frame, by=())
    statuses = {
        row["cell_id"]: {"status": row["status"], "category": row["category"],
                         "message": row["message"] or "", "where": row["where"]}
        for row in newest.to_dict("records")
    }
    return Side(
        label=label,
        run_ids=tuple(sorted(set(frame["run_id"]))),
        devices=tuple(sorted(set(frame["where"]))),
        started=min(frame["timestamp"], default=""),
        statuses=statuses,
    )


def _change(cell_id: str, before: dict | None, after: dict | None) -> Change:
    shown = after or before or {}
    return Change(cell_id, (before or {}).get("status"), (after or {}).get("status"),
                  shown.get("category"), shown.get("message", ""))


def compare(a: Side, b: Side) -> RunDiff:
    regressions, fixes, new, vanished, changed = [], [], [], [], []
    for cell_id in sorted(set(a.statuses) | set(b.statuses)):
        before, after = a.statuses.get(cell_id), b.statuses.get(cell_id)
        change = _change(cell_id, before, after)
        if before is None:
            new.append(change)
        elif after is None:
            vanished.append(change)
        elif before["status"] == "pass" and after["status"] == "fail":
            regressions.append(change)
        elif before["status"] in FAILED and after["status"] == "pass":
            fixes.append(change)
        elif before["status"] != after["status"]:
            changed.append(change)
    return RunDiff(a, b, regressions, fixes, new, vanished, changed)


def _run_frame(frame: pd.DataFrame, run_id: str) -> pd.DataFrame:
    chosen = frame[frame["run_id"] == run_id]
    if chosen.empty:
        known = ", ".join(sorted(set(frame["run_id"]))[-10:]) or "none"
        raise DiffError(f"no run {run_id!r} in the history (latest runs: {known}); "
                        "pass a record file or `compat-harness ingest` it first")
    return chosen


def default_pair(frame: pd.DataFrame) -> tuple[str, str]:
    """The newest run and the run before it on the same device class."""
    starts = frame.groupby("run_id")["timestamp"].min().reset_index()
    order = sorted(zip(starts["timestamp"], starts["run_id"], strict=True))
    if len(order) < 2:
        raise DiffError(f"need two runs to compare, found {len(order)}")
    classes = frame.groupby("run_id")["device_class"].agg(lambda s: frozenset(s))
    newest = order[-1][1]
    earlier = [run for _, run in order[:-1]]
    same = [run for run in earlier if classes[run] & classes[newest]]
    return (same or earlier)[-1], newest


def load_sides(
    run_a: str | None, run_b: str | None, db: Path | str, records: list[str]
) -> tuple[Side, Side]:
    """Each argument is a record file or a run id; run ids come from the db, else the records."""

    def frame() -> pd.DataFrame:
        return history.load_frame(db) if Path(db).exists() else load_results(records)

    if run_a is None or run_b is None:
        everything = frame()
        run_a, run_b = default_pair(everything)
        return (side(_run_frame(everything, run_a), f"run {run_a}"),
                side(_run_frame(everything, run_b), f"run {run_b}"))
    sides, cache = [], {}
    for arg in (run_a, run_b):
        if Path(arg).is_file():
            loaded = load_results([arg])
            if loaded.empty:
                raise DiffError(f"{arg} holds no valid records")
            sides.append(side(loaded, f"file {arg}"))
        else:
            if "all" not in cache:
                cache["all"] = frame()
            sides.append(side(_run_frame(cache["all"], arg), f"run {arg}"))
    return sides[0], sides[1]


def as_json(diff: RunDiff) -> dict:
    def summary(s: Side) -> dict:
        return {"label": s.label, "run_ids": list(s.run_ids), "devices": list(s.devices),
                "started": s.started, "cells": len(s.statuses)}

    out = {"a": summary(diff.a), "b": summary(diff.b)}
    for name in ("regressions", "fixes", "new", "vanished", "changed"):
        out[name] = [asdict(c) for c in getattr(diff, name)]
    return out


def _one_line(text: str, limit: int = 100) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def format_table(diff: RunDiff) -> str:
    lines = []
    for name, s in (("A", diff.a), ("B", diff.b)):
        lines.append(f"{name}: {s.label} ({len(s.statuses)} cells on {', '.join(s.devices)}; "
                     f"started {s.started})")
    sections = (("Regressions (pass -> fail)", diff.regressions), ("Fixes", diff.fixes),
                ("New cells", diff.new), ("Vanished cells", diff.vanished),
                ("Other status changes", diff.changed))
    for title, changes in sections:
        lines.append("")
        lines.append(f"{title}: {len(changes)}")
        width = max((len(c.cell_id) for c in changes), default=0)
        for c in changes:
            move = f"{c.before or '-':>5} -> {c.after or '-':<5}"
            detail = f"[{c.category}] {_one_line(c.message)}" if c.category else ""
            lines.append(f"  {c.cell_id:<{width}}  {move}  {detail}".rstrip())
    return "\n".join(lines)


def to_json_text(diff: RunDiff) -> str:
    return json.dumps(as_json(diff), indent=2, sort_keys=True)
