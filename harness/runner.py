"""Run one cell and turn whatever happens into an Outcome: status, category, message, metrics.

This is the only place that maps failures to statuses:
- a check that passes is `pass`;
- a cell that cannot run in this environment (remote code, a newer transformers, a checkpoint
  not in the cache) is `skip`, with its category and the real message;
- a failure that a row declares in `known_limits` is `xfail`;
- anything else is `fail`, with its category and the real message and traceback.
"""

from __future__ import annotations

import resource
import sys
import time
from dataclasses import dataclass, field

from harness.cells import Cell
from harness.failures import CellFailure, classify, format_traceback
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


def run_train(matrix: Matrix, cell: Cell, device: str) -> dict:
    """The `train` check on one device; returns the metrics for the record."""
    import torch

    from harness.checks.train import assert_loss_falls, assert_updates, snapshot
    from harness.methods import apply_method
    from harness.models import checkpoint_for, load_model
    from harness.train import fixed_batch, make_optimizer, train_steps

    arch, method, tier = (matrix.architectures[cell.architecture], matrix.methods[cell.method],
                          matrix.tiers[cell.tier])
    start = time.perf_counter()
    path = checkpoint_for(arch, tier, matrix)
    torch.manual_seed(0)
    model = load_model(arch, path, tier.dtype, device)
    load_s = time.perf_counter() - start
    trainable = apply_method(model, arch, method)
    model = trainable.model
    before = snapshot(model)
    vocab = model.get_input_embeddings().num_embeddings
    batch = fixed_batch(vocab, tier.batch_size, tier.seq_len)
    optimizer = make_optimizer(model, method.lr)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    result = train_steps(model, batch, optimizer, tier.steps)
    assert_loss_falls(result)
    counts = assert_updates(trainable, before, snapshot(model), method.is_lora)
    return {
        "losses": result.losses,
        "grad_norms": result.grad_norms,
        "step_times_s": result.step_times_s,
        "tokens_per_s": result.tokens_per_s,
        "load_s": load_s,
        "params_total": sum(t.numel() for t in before.values()),
        "params_trainable": sum(before[n].numel() for n in trainable.trainable),
        "lora_modules": trainable.lora_modules,
        "checkpoint": str(path),
        "model_class": type(model).__name__,
        **counts,
        **_peak_memory(device),
    }


CHECK_RUNNERS = {"train": run_train}


def run_cell(matrix: Matrix, cell: Cell, device: str) -> Outcome:
    arch = matrix.architectures[cell.architecture]
    limit = next(
        (lim for lim in arch.known_limits
         if lim.covers(cell.method, cell.layout, cell.tier, cell.check)),
        None,
    )
    start = time.perf_counter()
    try:
        metrics = CHECK_RUNNERS[cell.check](matrix, cell, device)
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


__all__ = ["Outcome", "run_cell", "CellFailure", "SKIP_CATEGORIES"]
