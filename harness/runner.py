"""Run one cell and turn whatever happens into an Outcome: status, category, message, metrics.

This is the only place that maps failures to statuses:
- a check that passes is `pass`;
- a cell that cannot run in this environment (remote code, a newer transformers, a checkpoint
  not in the cache) is `skip`, with its category and the real message;
- a failure that a row declares in `known_limits` is `xfail`;
- anything else is `fail`, with its category and the real message and traceback.
"""

from __future__ import annotations

import importlib
import resource
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness.cells import Cell
from harness.failures import classify, format_traceback
from harness.matrix import Matrix

SKIP_CATEGORIES = ("remote-code", "needs-newer-transformers", "checkpoint-absent")


@dataclass
class Outcome:
    status: str
    category: str | None = None
    message: str = ""
    traceback: str = ""
    metrics: dict = field(default_factory=dict)
    known_limit_stale: str | None = None


def _peak_memory(device: str) -> dict:
    import torch

    if device == "cuda":
        return {"peak_memory_bytes": int(torch.cuda.max_memory_allocated())}
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is KiB on Linux
    return {"peak_memory_bytes": None,
            "process_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale}


def run_check(matrix: Matrix, cell: Cell, device: str) -> dict:
    """Run the cell's check (harness/checks/<name>.py) on this device; return its metrics."""
    import torch

    from harness.cellrun import CellRun

    check = importlib.import_module(f"harness.checks.{cell.check}")
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory(prefix=f"{cell.id}-") as scratch:
        metrics = check.run(CellRun(matrix, cell, device, scratch_root=Path(scratch)))
    return {**metrics, **_peak_memory(device)}


def run_cell(matrix: Matrix, cell: Cell, device: str) -> Outcome:
    arch = matrix.architectures[cell.architecture]
    limit = next(
        (lim for lim in arch.known_limits
         if lim.covers(cell.method, cell.layout, cell.tier, cell.check)),
        None,
    )
    start = time.perf_counter()
    try:
        metrics = run_check(matrix, cell, device)
    except Exception as exc:  # noqa: BLE001 - every failure becomes a categorised record
        category, message = classify(exc)
        duration = {"duration_s": time.perf_counter() - start}
        if category in SKIP_CATEGORIES:
            return Outcome("skip", category, message, metrics=duration)
        status = "xfail" if limit and limit.category == category else "fail"
        if status == "xfail":
            message = f"known limit ({limit.reason}): {message}"
        return Outcome(status, category, message, format_traceback(exc), metrics=duration)
    metrics["duration_s"] = time.perf_counter() - start
    stale = None
    if limit:
        stale = (f"{cell.id} passed, but {arch.source_file} declares a known limit for it "
                 f"({limit.category}: {limit.reason}); remove that known_limits entry")
    return Outcome("pass", metrics=metrics, known_limit_stale=stale)

