"""The `implementation_parity` check: another stack or implementation computes what the reference does.

The reference is the native stack on one device: transformers' class (or the hub's remote code),
peft, the harness's plain loop (harness/checks/reference.py). The cell's implementation is placed
on the same tiny checkpoint and trained on the same batch; dropout is off on both sides (matrix
choice `parity_dropout`: masks depend on how each consumes the RNG).

- A stack on the harness's loop (AutoModel's own class, its `force_hf`; a custom registry class
  against the remote code it stands in for): one step on both sides from the same start (LoRA: the
  reference's adapter values copied into the implementation's, by name), then the start loss,
  the logits and every trainable parameter's gradient, each within the dtype's tolerances
  (`tolerances.<dtype>`: rtol/atol for loss and logits, grad_rtol/grad_atol per parameter, as
  `parity` bounds them). Where an implementation names its parameters otherwise, the matrix
  declares the renames (options.renames, per stack or "stack~implementation").
- A stack that runs its own trainer (TRL): its logits before training, within the dtype's
  tolerance, and its loss curve over the tier's steps against the reference's loop, within the
  stack's declared `curve_tolerance` (the trainer's own choices, e.g. clipping, are part of it).

The record keeps the worst differences (with the parameter's name); a failure names the parameters.
"""

from __future__ import annotations

import math

import torch

from harness.cellrun import CellRun
from harness.checks import reference as ref_mod
from harness.checks.parity import grad_tolerance
from harness.failures import CellFailure
from harness.stacks.loop import disable_dropout
from harness.stacks.result import TrainResult

WORST_SHOWN = 5


def owner(cr: CellRun) -> str:
    return f"{cr.cell.stack}~{cr.cell.implementation}" if cr.cell.implementation else cr.cell.stack


def renames_for(cr: CellRun) -> list[list[str]]:
    """The declared renames of the cell's stack, then of its stack~implementation (the check's
    options), then the row's own (`parity_renames`, for the same two keys)."""
    keys = [cr.cell.stack, *([owner(cr)] if cr.cell.implementation else [])]
    declared = cr.check_options.get("renames", {})
    row = cr.arch.parity_renames
    return [rule for table in (declared, row) for key in keys for rule in table.get(key, [])]


def within(got: float, want: float, tolerance: dict) -> bool:
    return math.isfinite(got) and abs(got - want) <= tolerance["atol"] + tolerance["rtol"] * abs(want)


def compare_logits(got: torch.Tensor, want: torch.Tensor, tolerance: dict) -> tuple[float, float]:
    """(max |diff|, its bound: atol + rtol x the largest reference logit)."""
    if tuple(got.shape) != tuple(want.shape):
        raise CellFailure("check-failed", f"logits of shape {tuple(got.shape)}, the reference's "
                                          f"{tuple(want.shape)}")
    return float((got - want).abs().max()), tolerance["atol"] + tolerance["rtol"] * float(want.abs().max())


def compare_grads(got: dict, want: dict, tolerance: dict) -> list[tuple]:
    """[(diff / bound, name, diff, largest)] for every reference parameter; names must agree."""
    only_impl, only_ref = sorted(set(got) - set(want)), sorted(set(want) - set(got))
    if only_impl or only_ref:
        raise CellFailure("check-failed", f"the implementation trains other parameters than the reference: "
                                          f"only in the implementation {only_impl[:WORST_SHOWN]} "
                                          f"({len(only_impl)}), only in the reference "
                                          f"{only_ref[:WORST_SHOWN]} ({len(only_ref)}) (where these are the "
                                          "same parameters under other names, declare the renames: "
                                          "matrix/axes.toml checks.implementation_parity.options.renames or "
                                          "the row's parity_renames)")
    bound = grad_tolerance(tolerance)
    out = []
    for name, ref in want.items():
        if tuple(got[name].shape) != tuple(ref.shape):
            raise CellFailure("check-failed", f"{name}: gradient of shape {tuple(got[name].shape)}, the "
                                              f"reference's {tuple(ref.shape)}")
        diff = float((got[name] - ref).abs().max()) if ref.numel() else 0.0
        largest = float(ref.abs().max()) if ref.numel() else 0.0
        limit = bound["atol"] + bound["rtol"] * largest
        out.append((diff / limit if math.isfinite(diff) else math.inf, name, diff, largest))
    return out


def decide(what: str, start: tuple[float, float], logit_diff: tuple[float, float], grads: list[tuple],
           tolerance: dict, curves: tuple[list, list, dict] | None = None) -> dict:
    """Pass or fail on the measured differences; the record's worst differences either way."""
    got_loss, want_loss = start
    worst = max(grads, default=(0.0, None, 0.0, 0.0))
    metrics = {"start_loss": got_loss, "reference_start_loss": want_loss,
               "start_loss_abs_diff": abs(got_loss - want_loss),
               "logits_max_abs_diff": logit_diff[0], "logits_bound": logit_diff[1],
               "params_compared": len(grads), "grad_diff_over_bound_max": worst[0],
               "grad_worst_param": worst[1], "grad_worst_abs_diff": worst[2],
               "rtol": tolerance["rtol"], "atol": tolerance["atol"],
               **{f"grad_{k}": v for k, v in grad_tolerance(tolerance).items()}}
    problems = []
    if curves is None and not within(got_loss, want_loss, tolerance):
        problems.append(f"start loss {got_loss:.7g}, the reference's {want_loss:.7g} "
                        f"(rtol {tolerance['rtol']:g}, "
                        f"atol {tolerance['atol']:g})")
    if not logit_diff[0] <= logit_diff[1]:
        problems.append(f"logits differ by {logit_diff[0]:.3e}, above {logit_diff[1]:.3e} (rtol "
                        f"{tolerance['rtol']:g} of the largest logit, atol {tolerance['atol']:g})")
    over = sorted((g for g in grads if not g[0] <= 1.0), reverse=True)
    if over:
        bound = grad_tolerance(tolerance)
        lines = [f"{len(over)} of {len(grads)} parameters' gradients at step 0 differ from the reference's "
                 "beyond "
                 f"atol {bound['atol']:g} + rtol {bound['rtol']:g} x their largest gradient; the worst:"]
        lines += [f"  {name}: max |diff| {diff:.3e}, largest gradient {largest:.3e}"
                  for _, name, diff, largest in over[:WORST_SHOWN]]
        if not problems:  # the forward agrees: what differs is added to the gradient alone
            lines.append(f"The start loss and the logits agree (|diff| {abs(got_loss - want_loss):.2e} and "
                         f"{logit_diff[0]:.2e}): the implementation's backward adds or drops a term that "
                         "the loss does not show (e.g. a router's auxiliary load-balancing loss).")
            metrics["forward_agrees"] = True
        problems.append("\n".join(lines))
    if curves is not None:
        got, want, curve_tol = curves
        rel = max((abs(g - w) / abs(w) for g, w in zip(got, want, strict=False)), default=0.0)
        metrics.update(losses=got, reference_losses=want, curve_max_rel_diff=rel,
                       curve_rtol=curve_tol["rtol"], curve_atol=curve_tol["atol"])
        if len(got) != len(want) or not all(within(g, w, curve_tol) for g, w in zip(got, want, strict=True)):
            problems.append(f"loss curve {got}\nthe reference's {want}\n"
                            f"(worst relative difference {rel:.3g}; "
                            f"rtol {curve_tol['rtol']:g}, atol {curve_tol['atol']:g})")
    if problems:
        raise CellFailure("numerics", f"{what} does not compute what the reference does (the native stack, "
                                      "transformers' class, plain loop, one device, same checkpoint and "
                                      "batch):\n"
                          + "\n".join(problems), metrics)
    return metrics


def describe_cell(cr: CellRun) -> str:
    kind = {"": "its default implementation", "force_hf": "force_hf (transformers' class)",
            "custom": "the custom registry class"}.get(cr.cell.implementation, cr.cell.implementation)
    return f"{cr.cell.stack} with {kind}"


def run_own_trainer(cr: CellRun, reference: CellRun) -> dict:
    """A trainer that owns its loop: logits before training, then the loss curve of the same steps."""
    placed = cr.place()
    disable_dropout(placed.model)
    batch = cr.batch()
    got_logits = ref_mod.logits(placed.model, batch)
    result: TrainResult = cr.fit(placed)
    ref_placed = reference.place(reference.one_device_layout)
    disable_dropout(ref_placed.model)
    want_logits = ref_mod.logits(ref_placed.model, batch)
    ref_result = reference.fit(ref_placed)
    declared = cr.check_options.get("curve_tolerance", {}).get(cr.cell.stack)
    curve_tol = {k: float(v) for k, v in (declared or cr.tolerance).items() if k in ("rtol", "atol")}
    return decide(describe_cell(cr), (result.losses[0], ref_result.losses[0]),
                  compare_logits(got_logits, want_logits, cr.tolerance), [], cr.tolerance,
                  curves=(result.losses, ref_result.losses, curve_tol))


def run(cr: CellRun) -> dict:
    if cr.distributed:
        raise CellFailure("error", f"implementation_parity runs on one device; layout {cr.layout.name} has "
                                   f"{cr.layout.world_size} ranks")
    reference = ref_mod.reference_run(cr)
    if cr.stack.own_trainer:
        return run_own_trainer(cr, reference)
    rename = ref_mod.renamer(renames_for(cr))
    placed = cr.place()
    ref_placed = reference.place(reference.one_device_layout)
    notes = {"dropout_disabled": disable_dropout(placed.model) + disable_dropout(ref_placed.model)}
    if cr.method.is_lora:
        skipped = ref_mod.copy_adapter_start(placed, ref_placed, rename)
        if skipped:
            notes["adapter_start_skipped"] = skipped[:WORST_SHOWN]
    got = ref_mod.step_zero(cr, placed)
    want = ref_mod.step_zero(reference, ref_placed)
    try:
        metrics = decide(describe_cell(cr), (got.loss, want.loss), compare_logits(got.logits, want.logits,
                                                                                  cr.tolerance),
                         compare_grads(ref_mod.renamed(got.grads, rename), want.grads, cr.tolerance),
                         cr.tolerance)
    except CellFailure as failure:
        failure.metrics.update(notes, grad_norm=got.grad_norm, reference_grad_norm=want.grad_norm)
        raise
    return {**metrics, **notes, "grad_norm": got.grad_norm, "reference_grad_norm": want.grad_norm,
            "model_class": type(placed.model).__name__, "checkpoint": str(cr.checkpoint)}
