"""The `peft_roundtrip` check: a LoRA adapter trained under a layout survives PEFT's own format.

The adapter is gathered whole from the layout's shards (`full_adapter_state`), put into an
unsharded model, and saved with peft's `save_pretrained`; the check's `load_layouts` must name
a one-rank layout, because loading an adapter is plain peft on one device, as users ship it.

Pass means:
- the adapter loaded into a fresh base with plain `PeftModel.from_pretrained` gives logits
  equal to the unsharded model holding the gathered adapter (within the matrix tolerance for
  the dtype where the stack trains other code than plain peft runs: `Stack.exact_reload`,
  e.g. AutoModel's own LoRA; the record keeps the difference);
- under a multi-rank layout, the trained model's own logits are close to those, within the
  matrix tolerance for the dtype (a sharded matmul sums in another order);
- `merge_and_unload` gives logits close to them (within the check's merge tolerance for the
  dtype, relative to the largest logit), and the merged model saves and reloads as a plain
  Hugging Face checkpoint with equal logits.
"""

from __future__ import annotations

from harness.cellrun import CellRun
from harness.checks.common import (
    assert_close_logits,
    assert_same_logits,
    full_adapter_state,
    logits,
    require_one_device_load,
)
from harness.checks.train import trained
from harness.failures import CellFailure
from harness.stacks.placed import Placed
from harness.stacks.result import training_metrics


def one_device_adapter_model(cr: CellRun, placed: Placed):
    """The trained adapter on an unsharded model (the trained model itself on one device).

    Collective under a layout: every rank must call it; only rank 0 gets a model back.
    """
    require_one_device_load(cr)
    if not cr.distributed:
        return placed.model
    from peft import set_peft_model_state_dict

    adapter = full_adapter_state(placed.model, placed)
    if not cr.is_main:
        return None
    single = cr.one_device_model()
    result = set_peft_model_state_dict(single, adapter)
    if getattr(result, "unexpected_keys", None):
        raise CellFailure("check-failed", f"gathered adapter keys unknown to a one-device model: "
                                          f"{result.unexpected_keys[:5]}")
    return single


def run(cr: CellRun) -> dict:
    placed, result = trained(cr)
    model = placed.model
    batch = cr.batch()
    layout_logits = logits(model, batch)
    single = one_device_adapter_model(cr, placed)
    if single is None:
        return training_metrics(result, placed)
    single_logits = logits(single, batch)
    metrics = {**training_metrics(result, placed), "saved_under": cr.layout.name,
               "loaded_under": cr.load_layout.name}
    if cr.distributed:
        assert_close_logits(single_logits, layout_logits, cr.tolerance,
                            f"trained under {cr.layout.name} vs its gathered adapter on one device")
        metrics["layout_vs_one_device_max_abs_diff"] = float((single_logits - layout_logits).abs().max())
    scratch = cr.scratch_dir()

    cr.stack.save_adapter(single, scratch / "adapter")
    reloaded = cr.stack.load_adapter(cr.request(cr.load_layout), scratch / "adapter")
    reloaded_logits = logits(reloaded, batch)
    what = "adapter save -> plain peft load into a fresh base"
    if cr.stack.exact_reload:
        assert_same_logits(single_logits, reloaded_logits, what)
    else:
        assert_close_logits(single_logits, reloaded_logits, cr.tolerance, what)
    metrics["reload_max_abs_diff"] = float((single_logits - reloaded_logits).abs().max())

    merged = reloaded.merge_and_unload()
    merged_logits = logits(merged, batch)
    # The merge's own tolerance where the check declares one (matrix: checks.peft_roundtrip.options).
    tolerance = {**cr.tolerance, **cr.check_options.get("merge_tolerance", {}).get(cr.tier.dtype, {})}
    bound = assert_close_logits(single_logits, merged_logits, tolerance, "merge_and_unload")
    cr.stack.save_pretrained(merged, scratch / "merged", cr.check_options.get("export_max_shard_size", "5GB"))
    plain = cr.stack.load_pretrained(cr.arch, scratch / "merged", next(merged.parameters()).device)
    assert_same_logits(merged_logits, logits(plain, batch), "merged model -> from_pretrained")
    adapter_bytes = sum(p.stat().st_size for p in (scratch / "adapter").glob("*.safetensors"))
    return {**metrics, "adapter_bytes": adapter_bytes,
            "merge_max_abs_diff": float((single_logits - merged_logits).abs().max()), "merge_bound": bound}
