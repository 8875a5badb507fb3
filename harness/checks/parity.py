"""The `parity` check: training under a parallel layout matches training on one device.

Under the cell's layout the model is placed by its documented call and trained on the tier's
global batches; rank 0 trains the single-device reference (same checkpoint, method, optimizer,
batches and steps on an unsharded model) in lockstep with it. After every backward, every
trainable parameter's gradient under the layout is gathered whole (`Placed.global_grads`:
DTensor or plain local shard alike) and compared with the reference's:

    max |g_layout - g_one_device| <= grad_atol + grad_rtol * max |g_one_device|   (per parameter)

(where torch cannot gather a gradient whole, e.g. transformers' `_StridedShard` expert shards on
torch 2.11, each rank compares its own shard with the same piece of the one-device gradient
instead: `shard_comparison`; the record's `grads_compared` says so), with the matrix tolerance
for the tier's dtype (`grad_rtol`/`grad_atol`, declared with how they
were measured; rtol/atol where a dtype has none). The loss curves and the total gradient norms
must agree too (`compare_curves`). Anything else is a `numerics` failure naming the worst
parameters with their difference and their largest gradient. Comparing every parameter
catches what two aggregate numbers hide: a missing all-reduce on a replicated weight, or one
parameter's gradient off by 0.1% (AdamW normalises its scale away, so the loss barely moves).

Both sides start from the same weights: the checkpoint's, and for LoRA the same values in
every A (the stack's `align_for_parity`, the matrix choice `parity_adapter_start`: values written
into the tensors peft built, never reshaped). Dropout is turned off on both sides (matrix choice
`parity_dropout`): its masks depend on how each rank consumes the RNG.
"""

from __future__ import annotations

import math
import time

import torch

from harness.cellrun import CellRun
from harness.failures import CellFailure
from harness.spec.matrix import Layout
from harness.stacks.placed import EVIDENCE_UNAVAILABLE, Placed, grad_or_zeros
from harness.stacks.result import TrainResult, run_to_end, training_metrics

WORST_SHOWN = 5


def close(got: list[float], want: list[float], rtol: float, atol: float) -> bool:
    return len(got) == len(want) and all(
        math.isfinite(g) and abs(g - w) <= atol + rtol * abs(w) for g, w in zip(got, want, strict=True)
    )


def _worst(got: list[float], want: list[float]) -> float:
    return max((abs(g - w) / max(abs(w), 1e-30) for g, w in zip(got, want, strict=False)), default=0.0)


def compare_curves(layout: str, got, ref, tolerance: dict) -> tuple[list[str], dict]:
    """The loss curves and total gradient norms: (problems, metrics)."""
    rtol, atol = float(tolerance["rtol"]), float(tolerance["atol"])
    problems = []
    for what, a, b in (("loss", got.losses, ref.losses), ("grad norm", got.grad_norms, ref.grad_norms)):
        if not close(a, b, rtol, atol):
            problems.append(f"{what} curve under {layout}: {a}\n{what} curve on one device: {b}\n"
                            f"(worst relative difference {_worst(a, b):.3g}; rtol {rtol:g}, atol {atol:g})")
    return problems, {"max_rel_diff_loss": _worst(got.losses, ref.losses),
                      "max_rel_diff_grad_norm": _worst(got.grad_norms, ref.grad_norms),
                      "rtol": rtol, "atol": atol}


def grad_tolerance(tolerance: dict) -> dict:
    """The per-parameter gradient bound of a dtype's tolerances (`grad_rtol`/`grad_atol`, else rtol/atol)."""
    return {"rtol": float(tolerance.get("grad_rtol", tolerance["rtol"])),
            "atol": float(tolerance.get("grad_atol", tolerance["atol"]))}


def name_mismatch(got: dict, want: dict) -> str | None:
    """Why the two runs' trainable parameters cannot be compared name by name, or None."""
    only_layout, only_one = sorted(set(got) - set(want)), sorted(set(want) - set(got))
    if not only_layout and not only_one:
        return None
    return (f"the trainable parameters under the layout and on one device differ by name: only under the "
            f"layout {only_layout[:WORST_SHOWN]}, only on one device {only_one[:WORST_SHOWN]}")


def compare_grads(step: int, got: dict, want: dict, tolerance: dict) -> list[tuple]:
    """Every parameter's gradient at one step: [(diff / bound, name, step, diff, largest)] for each."""
    if name_mismatch(got, want):
        raise CellFailure("check-failed", name_mismatch(got, want))
    rtol, atol = grad_tolerance(tolerance)["rtol"], grad_tolerance(tolerance)["atol"]
    over = []
    for name, ref in want.items():
        if tuple(got[name].shape) != tuple(ref.shape):
            raise CellFailure("check-failed", f"{name}: gradient of shape {tuple(got[name].shape)} under the "
                                              f"layout, {tuple(ref.shape)} on one device")
        diff = float((got[name] - ref).abs().max()) if ref.numel() else 0.0
        largest = float(ref.abs().max()) if ref.numel() else 0.0
        bound = atol + rtol * largest
        over.append((diff / bound if math.isfinite(diff) else math.inf, name, step, diff, largest))
    return over


def describe(over: list[tuple], layout: str, tolerance: dict, steps: int) -> str:
    """The worst parameters, for the failure message."""
    worst = sorted(over, reverse=True)[:WORST_SHOWN]
    names = {name for _, name, *_ in over}
    bound = grad_tolerance(tolerance)
    lines = [f"{len(names)} parameters' gradients under {layout} differ from one device beyond "
             f"atol {bound['atol']:g} + rtol {bound['rtol']:g} x their largest gradient "
             f"(in {len({s for _, _, s, *_ in over})} of {steps} steps); the worst:"]
    lines += [f"  {name} at step {step}: max |diff| {diff:.3e}, largest gradient {largest:.3e}"
              for _, name, step, diff, largest in worst]
    return "\n".join(lines)


def _prepare(cr: CellRun, placed: Placed, layout: Layout) -> dict:
    """Both sides alike, as the stack's choices say (dropout, the same adapter start)."""
    return cr.stack.align_for_parity(placed, cr.request(layout))


def shard_comparison(placed: Placed, want: dict | None, step: int, tolerance: dict) -> list[tuple]:
    """`compare_grads` for a layout whose gradients torch cannot gather whole (`_StridedShard`).

    Each rank compares the gradient shard it holds with the same piece of the one-device
    gradient: rank 0 broadcasts that gradient, and torch's own `distribute_tensor` cuts it with
    the shard's mesh and placements (no communication). The largest difference over the ranks
    comes from an all_reduce (MAX). A collective: every rank calls it; rank 0 gets the tuples.
    """
    import torch.distributed as dist
    from torch.distributed.tensor import distribute_tensor

    shapes = [{name: tuple(g.shape) for name, g in want.items()} if want is not None else None]
    dist.broadcast_object_list(shapes, src=0)
    params = {name: p for name, p in placed.model.named_parameters() if p.requires_grad}
    mismatch = name_mismatch(params, shapes[0])
    if mismatch:
        raise CellFailure("check-failed", mismatch)
    rtol, atol = grad_tolerance(tolerance)["rtol"], grad_tolerance(tolerance)["atol"]
    over = []
    for name, param in params.items():
        grad = grad_or_zeros(param).detach()
        if not hasattr(grad, "device_mesh"):  # a plain tensor: its gather works
            mine = placed.global_view(name, grad).float()
            device = mine.device
        else:
            device = grad.to_local().device
        full = want[name].to(device) if want is not None else torch.empty(shapes[0][name], device=device)
        dist.broadcast(full, src=0)
        if hasattr(grad, "device_mesh"):
            piece = distribute_tensor(full, grad.device_mesh, grad.placements, src_data_rank=None).to_local()
            mine, full = grad.to_local().float(), piece
        diff = torch.tensor([float((mine - full).abs().max()) if full.numel() else 0.0], device=device)
        dist.all_reduce(diff, op=dist.ReduceOp.MAX)
        if want is None:
            continue
        largest = float(want[name].abs().max()) if want[name].numel() else 0.0
        value = float(diff)
        over.append((value / (atol + rtol * largest) if math.isfinite(value) else math.inf, name, step,
                     value, largest))
    return over


def _one_device_grads(placed) -> dict:
    return {name: grad_or_zeros(param).detach().float().cpu()
            for name, param in placed.model.named_parameters() if param.requires_grad}


# --- a stack that runs its own trainer (TRL): the one-device run first, then the layout's ----------

REFERENCE_FILE = "one-device-reference.pt"


def on_one_device_first(cr: CellRun) -> None:
    """In the calling process, before the ranks start: the one-device run of a stack whose trainer
    owns the loop (harness/run/runner.py calls this). Such a trainer cannot be stepped in lockstep
    with another, nor run twice in one rank (its distributed state is per process), so each run
    keeps every step's whole gradients and the ranks compare with this file afterwards."""
    if not cr.stack.own_trainer:
        return
    placed = cr.place(cr.one_device_layout)
    result = cr.fit(placed)
    torch.save({"losses": result.losses, "grad_norms": result.grad_norms,
                "grads": result.extra.pop("step_grads", [])}, cr.shared_dir(REFERENCE_FILE))


def run_own_trainer(cr: CellRun) -> dict:
    """Parity for a stack that runs its own trainer: its layout run against its one-device run."""
    start = time.perf_counter()
    layout = cr.place()
    result = cr.fit(layout)
    grads = result.extra.pop("step_grads", [])
    metrics = {**training_metrics(result, layout), "layout_s": time.perf_counter() - start}
    if not cr.is_main:
        return metrics
    saved = torch.load(cr.shared_dir(REFERENCE_FILE))
    reference = TrainResult(saved["losses"], saved["grad_norms"], [], 0)
    if len(grads) != len(saved["grads"]):
        raise CellFailure("check-failed", f"{len(grads)} steps' gradients under the layout, "
                                          f"{len(saved['grads'])} on one device", metrics)
    compared: list[tuple] = []
    for step, (got, want) in enumerate(zip(grads, saved["grads"], strict=True)):
        if name_mismatch(got, want):
            raise CellFailure("check-failed", name_mismatch(got, want), metrics)
        compared += compare_grads(step, got, want, cr.tolerance)
    return decide(cr, result, reference, compared, {}, metrics)


def run(cr: CellRun) -> dict:
    if not cr.distributed:
        raise CellFailure("error", f"parity compares a multi-rank layout with one device; "
                                   f"layout {cr.layout.name} has one rank")
    if cr.stack.own_trainer:
        return run_own_trainer(cr)
    layout = cr.place()
    prepared = _prepare(cr, layout, cr.layout)
    reference = cr.place(cr.one_device_layout) if cr.is_main else None
    if reference is not None:
        _prepare(cr, reference, cr.one_device_layout)
    batches = cr.batches()
    layout_steps = cr.steps(layout, batches)
    reference_steps = cr.steps(reference, batches) if reference is not None else None
    timing = {"layout_s": 0.0, "reference_s": 0.0, "gather_s": 0.0}
    compared: list[tuple] = []
    mismatch = None
    by_shard = ""  # why the gradients are compared shard by shard (torch's gather message)
    while True:
        start = time.perf_counter()
        try:
            step = next(layout_steps)
        except StopIteration as stop:
            result = stop.value
            timing["layout_s"] += time.perf_counter() - start
            break
        timing["layout_s"] += time.perf_counter() - start
        start = time.perf_counter()
        if not by_shard:
            try:
                grads = layout.global_grads()  # every rank takes part; rank 0 compares
            except CellFailure as failure:  # torch cannot gather them: compare shard by shard
                if failure.category != EVIDENCE_UNAVAILABLE:
                    raise
                by_shard = failure.message
        if by_shard:
            want = None
            if reference_steps is not None:
                next(reference_steps)
                want = _one_device_grads(reference)
            compared += shard_comparison(layout, want, step, cr.tolerance)
            timing["gather_s"] += time.perf_counter() - start
            continue
        timing["gather_s"] += time.perf_counter() - start
        if reference_steps is not None:
            start = time.perf_counter()
            next(reference_steps)
            timing["reference_s"] += time.perf_counter() - start
            want = _one_device_grads(reference)
            # Every rank goes on stepping in lockstep: a mismatch is decided after the last step.
            mismatch = mismatch or name_mismatch(grads, want)
            if not mismatch:
                compared += compare_grads(step, grads, want, cr.tolerance)
    metrics = {**training_metrics(result, layout), **timing,
               **{k: v for k, v in prepared.items() if v}}
    if by_shard:
        metrics["grads_compared"] = f"shard by shard: {by_shard[:300]}"
    if reference_steps is None:
        return metrics
    if mismatch:
        raise CellFailure("check-failed", f"{mismatch} (parameters renamed while training?)", metrics)
    start = time.perf_counter()
    reference_result = run_to_end(reference_steps)
    timing["reference_s"] += time.perf_counter() - start
    metrics["reference_s"] = timing["reference_s"]
    return decide(cr, result, reference_result, compared, prepared, metrics)


def decide(cr: CellRun, result, reference_result, compared: list[tuple], prepared: dict,
           metrics: dict) -> dict:
    """Pass or fail: the curves, then every parameter's gradient at every step (`compared`)."""
    problems, curve_metrics = compare_curves(cr.layout.name, result, reference_result, cr.tolerance)
    bound = grad_tolerance(cr.tolerance)
    metrics.update(curve_metrics, reference_losses=reference_result.losses,
                   reference_grad_norms=reference_result.grad_norms,
                   params_compared=len({name for _, name, *_ in compared}),
                   grad_diff_over_bound_max=max((c[0] for c in compared), default=0.0),
                   # relative to a parameter's largest gradient, where that term of the bound dominates
                   grad_max_rel_diff=max((c[3] / c[4] for c in compared
                                          if c[4] * bound["rtol"] > bound["atol"]), default=0.0),
                   **{f"grad_{k}": v for k, v in grad_tolerance(cr.tolerance).items()})
    over = [c for c in compared if not c[0] <= 1.0]  # a NaN difference fails too
    if over:
        problems.append(describe(over, cr.layout.name, cr.tolerance, len(result.losses)))
    if problems:
        skipped = prepared.get("adapter_start_skipped")
        if skipped:  # the stack built adapters one device does not have: say so, it is the cause
            problems.insert(0, f"peft built {len(skipped)} LoRA adapters whose shape differs from one "
                               f"device's, "
                               f"so the two runs cannot start alike: {'; '.join(skipped[:3])}")
        raise CellFailure("numerics", "parity with one device failed:\n" + "\n".join(problems), metrics)
    return metrics

