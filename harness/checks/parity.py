"""The `parity` check: training under a parallel layout matches training on one device.

Under the cell's layout, the model is placed (sharded, method applied; LoRA adapters drawn
from a per-name generator by parallel.reset_adapters so both runs start from identical weights)
and trained on the fixed global batch. Rank 0 then trains the single-device reference: the
same checkpoint, method, optimizer, batch and steps on a plain unsharded model. Pass means the
global loss curves and the gradient norms agree within the matrix tolerance for the tier's
dtype (matrix `tolerances`); anything else is a `numerics` failure that shows both curves.

Dropout is turned off in both runs (nn.Dropout modules and the float dropout rates models
keep on their modules, e.g. GPTBigCode's attn_dropout): its random masks depend on how the
RNG is consumed per rank and per shard, so with it the curves differ by construction. The
record counts what was turned off (`dropout_disabled`).
"""

from __future__ import annotations

import math
import time

from harness.checks.train import training_metrics
from harness.failures import CellFailure


def close(got: list[float], want: list[float], rtol: float, atol: float) -> bool:
    return len(got) == len(want) and all(
        math.isfinite(g) and abs(g - w) <= atol + rtol * abs(w) for g, w in zip(got, want, strict=True)
    )


def _worst(got: list[float], want: list[float]) -> float:
    return max((abs(g - w) / max(abs(w), 1e-30) for g, w in zip(got, want, strict=False)), default=0.0)


def compare(layout: str, got, ref, tolerance: dict) -> dict:
    """Raise CellFailure('numerics') unless both curves agree; return the comparison metrics."""
    rtol, atol = float(tolerance["rtol"]), float(tolerance["atol"])
    problems = []
    for what, a, b in (("loss", got.losses, ref.losses), ("grad norm", got.grad_norms, ref.grad_norms)):
        if not close(a, b, rtol, atol):
            problems.append(f"{what} curve under {layout}: {a}\n{what} curve on one device: {b}\n"
                            f"(worst relative difference {_worst(a, b):.3g}; rtol {rtol:g}, atol {atol:g})")
    if problems:
        raise CellFailure("numerics", "parity with one device failed:\n" + "\n".join(problems))
    return {"max_rel_diff_loss": _worst(got.losses, ref.losses),
            "max_rel_diff_grad_norm": _worst(got.grad_norms, ref.grad_norms),
            "rtol": rtol, "atol": atol}


def disable_dropout(model) -> int:
    """Set every dropout rate in the model to 0; return how many nonzero rates there were."""
    import torch

    count = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout) and module.p > 0:
            module.p = 0.0
            count += 1
        for name, value in list(vars(module).items()):
            if (("dropout" in name or "pdrop" in name) and isinstance(value, float)
                    and not isinstance(value, bool) and value > 0):
                setattr(module, name, 0.0)
                count += 1
    return count


def run(cr) -> dict:
    if not cr.distributed:
        raise CellFailure("error", f"parity compares a multi-rank layout with one device; "
                                   f"layout {cr.layout.name} has one rank")
    start = time.perf_counter()
    trainable = cr.trainable()
    dropout = disable_dropout(trainable.model)
    result = cr.train(trainable)
    layout_s = time.perf_counter() - start
    metrics = {**training_metrics(result), "layout_s": layout_s, "dropout_disabled": dropout}
    if not cr.is_main:
        return metrics
    start = time.perf_counter()
    reference_trainable = cr.place(cr.one_device_layout).trainable
    disable_dropout(reference_trainable.model)
    reference = cr.train(reference_trainable)
    metrics["reference_s"] = time.perf_counter() - start
    metrics["reference_losses"] = reference.losses
    metrics["reference_grad_norms"] = reference.grad_norms
    return {**metrics, **compare(cr.layout.name, result, reference, cr.tolerance)}
