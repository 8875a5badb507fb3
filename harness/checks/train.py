"""The `train` check: does fine-tuning actually train, and train only what it should?

Pass means all of:
- every loss is finite and the last is below the first (on a fixed batch, so it must fall);
  on real text (tier data "qa") instead: the first loss is where a pretrained model starts
  (at most the row's `real_start_loss_max`, else the tier's `start_loss_max`) and the loss on
  the held-out questions falls by at least the row's `real_heldout_fall_min`, else the tier's
  `heldout_fall_min` (more than the step-to-step noise of that loss can give);
- SFT: every trainable weight moved (a weight that never moves means a broken graph);
- LoRA: every adapter weight moved and every base weight is bit-for-bit unchanged.

The real-shape tier builds its model at a real checkpoint's size instead of loading one and
measures memory, tokens/s and MFU (harness/stacks/native/realshape.py); the loss must still be
finite and fall.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from harness.cellrun import CellRun
from harness.ckpt.providers import provenance
from harness.data import text
from harness.failures import CellFailure
from harness.spec.matrix import REFERENCE_STACK
from harness.stacks.placed import Placed, Trainable
from harness.stacks.result import TrainResult, training_metrics


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of every parameter as this rank holds it (a DTensor keeps its shard).

    No collective: whatever the stack built, training runs first and fails with the stack's own
    message; `changed_on_any_rank` compares the copies afterwards, shard by shard.
    """
    return {name: param.detach().clone() for name, param in model.named_parameters()}


def _shard(tensor: torch.Tensor) -> torch.Tensor:
    """What this rank holds of a parameter: a DTensor's local shard, a plain tensor itself."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def changed_on_any_rank(before: dict, after: dict, names: list[str]) -> list[str]:
    """The weights among `names` whose value changed, under any layout, without gathering them.

    Each rank compares the shard it holds before and after (bit for bit), and one all_reduce of
    the flags (MAX) says whether any rank's shard changed: a weight moved exactly when some piece
    of it moved. No weight is gathered whole, so a layout torch cannot gather (transformers'
    `_StridedShard` expert shards: `full_tensor` raises) still gets its training verdict. Every
    rank calls it with the same names (a collective under a layout).
    """
    import torch.distributed as dist

    if not names:
        return []
    flags = [0 if torch.equal(_shard(before[n]), _shard(after[n])) else 1 for n in names]
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        combined = torch.tensor(flags, dtype=torch.int64, device=_shard(after[names[0]]).device)
        dist.all_reduce(combined, op=dist.ReduceOp.MAX)
        flags = combined.tolist()
    return [n for n, flag in zip(names, flags, strict=True) if flag]


def global_numel(placed: Placed, name: str, tensor: torch.Tensor) -> int:
    """A parameter's element count on one device: a DTensor knows its global shape; a plain local
    shard's is the meta twin's (`Placed.global_shapes`)."""
    want = (placed.global_shapes or {}).get(name)
    return math.prod(want) if want is not None else tensor.numel()


def assert_finite(result: TrainResult) -> None:
    if not all(math.isfinite(x) for x in result.losses):
        raise CellFailure("numerics", f"non-finite loss: {result.losses}")


def assert_loss_falls(result: TrainResult, start_loss_max: float | None = None,
                      heldout_fall_min: float = 0.0) -> None:
    losses = result.losses
    assert_finite(result)
    if "heldout_loss_before" not in result.extra:
        if not losses[-1] < losses[0]:
            raise CellFailure("numerics", f"loss did not fall over {len(losses)} steps: {losses}")
        return
    # Real text: each step sees new items, so the train curve is noisy; the held-out loss is not.
    if start_loss_max is not None and losses[0] > start_loss_max:
        raise CellFailure("check-failed", f"the first loss {losses[0]:.3f} is above {start_loss_max}, where "
                                          "a pretrained model starts on this text: are the weights real?")
    before, after = result.extra["heldout_loss_before"], result.extra["heldout_loss_after"]
    fall = (before - after) / before if before else 0.0
    if not (math.isfinite(after) and after < before and fall >= heldout_fall_min):
        raise CellFailure("numerics", f"held-out loss did not fall by {heldout_fall_min:.1%} over "
                                      f"{len(losses)} "
                                      f"steps: {before:.4f} -> {after:.4f}, a fall of {fall:.2%} (the tier's "
                                      f"heldout_fall_min; train losses {losses})")


def _changed(before: dict, after: dict, names: list[str]) -> tuple[list[str], list[str]]:
    moved = changed_on_any_rank(before, after, names)
    still = [n for n in names if n not in set(moved)]
    return moved, still


def _listing(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def assert_updates(trainable: Trainable, before: dict, after: dict, is_lora: bool) -> dict:
    """Decide whether the right weights moved; return counts for the record."""
    if set(before) != set(after):  # e.g. a TP style that renames a bias at its first forward
        gone, new = sorted(set(before) - set(after)), sorted(set(after) - set(before))
        raise CellFailure("check-failed", f"training renamed the model's parameters: {_listing(gone, 4)} "
                                          f"became {_listing(new, 4)}; a checkpoint saved now has keys "
                                          "that from_pretrained does not know")
    _, unmoved = _changed(before, after, trainable.trainable)
    if unmoved:
        # The matrix key that leaves such modules out depends on the method: LoRA puts no adapter
        # where lora_exclude (or a narrower lora_targets) says; SFT freezes what sft_frozen names.
        what, fix = (("adapter", "the row's lora_exclude, or a narrower lora_targets") if is_lora
                     else ("trainable", "the row's sft_frozen"))
        raise CellFailure(
            "check-failed",
            f"{len(unmoved)} of {len(trainable.trainable)} {what} weights did not change: "
            f"{_listing(unmoved)} (if text-only training cannot reach those modules, leave them out "
            f"with {fix})",
        )
    frozen_moved, _ = _changed(before, after, trainable.frozen)
    if frozen_moved:
        raise CellFailure(
            "check-failed",
            f"{len(frozen_moved)} frozen base weights changed: {_listing(frozen_moved)}",
        )
    return {"weights_changed": len(trainable.trainable), "weights_frozen": len(trainable.frozen)}


# --- the tiny tier's bounds: a fall beyond noise, and the reference's start and gradient -------

@dataclass(frozen=True)
class ReferenceBounds:
    """The tiny tier's `train` bounds (matrix tiers.<name>; axes.toml says how each was measured)."""

    fall_min: float = 0.0
    start_band: float | None = None
    fall_ratio_min: float | None = None
    grad_norm_ratio_min: float | None = None

    @classmethod
    def of(cls, tier) -> ReferenceBounds:
        return cls(tier.loss_fall_min, tier.reference_start_band, tier.reference_fall_ratio_min,
                   tier.reference_grad_norm_ratio_min)

    @property
    def asks_reference(self) -> bool:
        return any(v is not None for v in (self.start_band, self.fall_ratio_min, self.grad_norm_ratio_min))


def relative_fall(losses: list[float]) -> float:
    return (losses[0] - losses[-1]) / losses[0] if losses[0] else 0.0


def assert_fall_beyond_noise(result: TrainResult, bounds: ReferenceBounds) -> None:
    """The fixed batch's loss must fall by more than its step-to-step noise (the tier's loss_fall_min)."""
    fall = relative_fall(result.losses)
    if fall < bounds.fall_min:
        raise CellFailure("numerics", f"the loss fell by {fall:.3%} over {len(result.losses)} steps, less "
                                      f"than the tier's loss_fall_min {bounds.fall_min:.2%} (more than noise "
                                      "gives); "
                                      f"losses {result.losses}")


def compare_with_reference(result: TrainResult, reference: TrainResult, bounds: ReferenceBounds,
                           vocab_size: int | None = None) -> dict:
    """The cell's start loss, loss fall and first gradient norm against the reference's on the same
    checkpoint and batches. Returns the measurements; raises naming every bound that failed."""
    start, ref_start = result.losses[0], reference.losses[0]
    start_diff = abs(start - ref_start) / abs(ref_start)
    fall, ref_fall = relative_fall(result.losses), relative_fall(reference.losses)
    fall_ratio = fall / ref_fall if ref_fall > 0 else float("inf")
    norm, ref_norm = result.grad_norms[0], reference.grad_norms[0]
    norm_ratio = norm / ref_norm if ref_norm > 0 else float("inf")
    measured = {"reference_losses": reference.losses, "reference_grad_norms": reference.grad_norms,
                "start_loss_rel_diff": start_diff, "fall_ratio": fall_ratio, "grad_norm_ratio": norm_ratio}
    causes = []
    if bounds.start_band is not None and not start_diff <= bounds.start_band:
        causes.append(f"the first loss {start:.6f} is {start_diff:.2%} away from the reference's "
                      f"{ref_start:.6f} "
                      f"(band {bounds.start_band:.2%})")
    if bounds.grad_norm_ratio_min is not None and not norm_ratio >= bounds.grad_norm_ratio_min:
        causes.append(f"the first gradient norm {norm:.4g} is {norm_ratio:.3g} x the reference's "
                      f"{ref_norm:.4g}, "
                      f"below {bounds.grad_norm_ratio_min:g}: a vanishing gradient")
    if bounds.fall_ratio_min is not None and not fall_ratio >= bounds.fall_ratio_min:
        causes.append(f"the loss fell {fall:.3%} over {len(result.losses)} steps, {fall_ratio:.3g} x the "
                      f"reference's {ref_fall:.3%}, below {bounds.fall_ratio_min:g}")
    if causes:
        uniform = ""
        if vocab_size:
            log_vocab = math.log(vocab_size)
            if abs(start - log_vocab) <= 1e-4 * log_vocab:
                uniform = (f" The first loss is ln(vocab size {vocab_size}) = {log_vocab:.6f}: "
                           "the logits are uniform.")
        raise CellFailure("numerics", "the model does not train like the reference implementation (the "
                                      "native "
                                      "stack, transformers' class, on the same checkpoint and batch): "
                                      + "; ".join(causes) + "." + uniform, measured)
    return measured


def compared_with_reference(cr: CellRun) -> bool:
    """Whether the cell's curve is judged against the reference's: the tiny tier's fixed batch, on a
    stack other than native (the native stack's own custom class is compared with the remote code it
    stands in for by implementation_parity, where that code runs)."""
    from harness.checks.reference import is_reference

    return (not text.uses_text(cr) and cr.tier.source == "tiny" and ReferenceBounds.of(cr.tier).asks_reference
            and not is_reference(cr.cell) and cr.cell.stack != REFERENCE_STACK)


def with_reference_causes(cr: CellRun, result: TrainResult, failure: CellFailure) -> CellFailure:
    """`failure` of the cell's own curve, told with what the reference shows of it (uniform logits, a
    vanishing gradient), so that a loss that barely moves or stands still names its cause."""
    if not compared_with_reference(cr):
        return failure
    from harness.checks.reference import reference_curve

    try:
        compare_with_reference(result, reference_curve(cr), ReferenceBounds.of(cr.tier),
                               cr.config.get_text_config().vocab_size)
    except CellFailure as more:
        return CellFailure(failure.category, f"{failure.message}; and {more.message}",
                           {**failure.metrics, **more.metrics})
    return failure


def judge_against_reference(cr: CellRun, result: TrainResult) -> dict:
    """The tiny tier's bounds for this cell: the fall beyond noise, and (a cell that is not the
    reference) the reference's start loss, fall and gradient norm. Returns the record's measurements."""
    if text.uses_text(cr) or cr.tier.source != "tiny":
        return {}
    bounds = ReferenceBounds.of(cr.tier)
    try:
        assert_fall_beyond_noise(result, bounds)
    except CellFailure as failure:
        raise with_reference_causes(cr, result, failure) from None
    if not compared_with_reference(cr):
        return {}
    from harness.checks.reference import reference_curve

    return compare_with_reference(result, reference_curve(cr), bounds, cr.config.get_text_config().vocab_size)


def start_loss_max(cr: CellRun) -> float | None:
    """The bound on the first loss on real text: the row's own if it declares one, else the tier's."""
    return cr.arch.real_start_loss_max or cr.tier.start_loss_max


def heldout_fall_min(cr: CellRun) -> float:
    """The held-out fall real text must show: the row's own if it declares one, else the tier's."""
    own = cr.arch.real_heldout_fall_min
    return own if own is not None else cr.tier.heldout_fall_min


def fit_on_tier(cr: CellRun, placed: Placed) -> TrainResult:
    """The cell's training: the tier's real text with the held-out loss around it, or the fixed batch.

    On real text the result's `extra` holds what the record shows: the held-out loss before and
    after the steps, and how many questions and answer tokens it averaged over.
    """
    if not text.uses_text(cr):
        return cr.fit(placed)
    heldout = text.heldout_batch(cr)
    before = cr.stack.eval_loss(placed, heldout, cr.per_sequence)
    result = cr.fit(placed, batches=text.train_batches(cr))
    result.extra.update(heldout_loss_before=before,
                        heldout_loss_after=cr.stack.eval_loss(placed, heldout, cr.per_sequence),
                        heldout_items=int(heldout["input_ids"].shape[0]),
                        answer_tokens=int((heldout["labels"] != -100).sum()) if heldout["labels"].ndim > 1
                        else None)
    return result


def run(cr: CellRun) -> dict:
    """The `train` check for one cell; returns the measurements for its record."""
    if cr.tier.source == "real-shape":
        metrics, result = cr.stack.measure_real_shape(cr)
        try:
            assert_loss_falls(result) if cr.tier.loss_must_fall else assert_finite(result)
        except CellFailure as failure:  # the measurements stand even when the loss misbehaves
            failure.metrics.update(metrics)
            raise
        return metrics
    start = time.perf_counter()
    placed = cr.place()
    trainable = placed.trainable
    load_s = time.perf_counter() - start
    model = trainable.model
    before = snapshot(model)
    if cr.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    result = fit_on_tier(cr, placed)
    after = snapshot(model)  # each rank's shards: compared shard by shard (changed_on_any_rank)
    try:
        assert_loss_falls(result, start_loss_max(cr), heldout_fall_min(cr))
    except CellFailure as failure:
        raise with_reference_causes(cr, result, failure) from None
    counts = assert_updates(trainable, before, after, cr.method.is_lora)
    try:
        against_reference = judge_against_reference(cr, result)
    except CellFailure as failure:  # the cell's own curve stands beside the reference's
        failure.metrics.update(training_metrics(result, placed))
        raise
    return {
        **against_reference,
        **training_metrics(result, placed),
        "load_s": load_s,
        "params_total": sum(global_numel(placed, n, t) for n, t in before.items()),
        "params_trainable": sum(global_numel(placed, n, before[n]) for n in trainable.trainable),
        "lora_modules": trainable.lora_modules,
        "checkpoint": str(cr.checkpoint),
        "provenance": provenance(cr.checkpoint) or ("tiny random init" if cr.tier.source == "tiny"
                                                    else "local Hugging Face cache"),
        "model_class": type(model).__name__,
        **counts,
    }


def trained(cr: CellRun):
    """The round trips' common start: the cell placed, trained, loss checked; (placed, result)."""
    placed = cr.place()
    result = fit_on_tier(cr, placed)
    assert_loss_falls(result, start_loss_max(cr), heldout_fall_min(cr))
    return placed, result
