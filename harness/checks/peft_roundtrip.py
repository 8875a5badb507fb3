"""The `peft_roundtrip` check: a trained LoRA adapter survives PEFT's own save and load.

Pass means: the adapter, saved in PEFT's format and loaded into a fresh base with plain peft,
gives logits equal to the trained model; `merge_and_unload` gives logits close to them (within
the check's merge tolerance for the dtype, relative to the largest logit); and the merged model
saves and reloads as a plain Hugging Face checkpoint with equal logits.
"""

from __future__ import annotations

from harness.checks.common import assert_close_logits, assert_same_logits, logits
from harness.checks.dcp_roundtrip import export_hf, reload_hf
from harness.checks.train import trained, training_metrics
from harness.ckpt_io import atomic_directory, verify


def save_adapter(peft_model, target) -> None:
    with atomic_directory(target) as staging:
        peft_model.save_pretrained(staging)


def load_adapter(cr, source):
    from peft import PeftModel

    verify(source)
    return PeftModel.from_pretrained(cr.load_base(), source)


def run(cr) -> dict:
    model, result = trained(cr)
    batch = cr.batch(model)
    trained_logits = logits(model, batch)
    scratch = cr.scratch_dir()

    save_adapter(model, scratch / "adapter")
    reloaded = load_adapter(cr, scratch / "adapter")
    assert_same_logits(trained_logits, logits(reloaded, batch), "adapter save -> load into a fresh base")

    merged = reloaded.merge_and_unload()
    merged_logits = logits(merged, batch)
    # The merge's own tolerance where the check declares one (matrix: checks.peft_roundtrip.options).
    tolerance = {**cr.tolerance, **cr.check_options.get("merge_tolerance", {}).get(cr.tier.dtype, {})}
    bound = assert_close_logits(trained_logits, merged_logits, tolerance, "merge_and_unload")
    export_hf(merged, scratch / "merged", cr.check_options.get("export_max_shard_size", "5GB"))
    plain = reload_hf(cr.arch, scratch / "merged", cr.device)
    assert_same_logits(merged_logits, logits(plain, batch), "merged model -> from_pretrained")
    adapter_bytes = sum(p.stat().st_size for p in (scratch / "adapter").glob("*.safetensors"))
    return {**training_metrics(result), "adapter_bytes": adapter_bytes,
            "merge_max_abs_diff": float((trained_logits - merged_logits).abs().max()), "merge_bound": bound}
