"""The `dcp_roundtrip` check: train under a layout, save a sharded torch distributed checkpoint,
load it under another layout (the check's `load_layouts`), export consolidated HF safetensors,
and reload with plain `from_pretrained`.

Pass means:
- DCP: the weights loaded under the load layout are bit-equal to the trained ones, and its
  logits equal those of the same layout holding the trained weights set directly (through
  torch's full-state-dict loader, no DCP), so the only difference is the checkpoint path;
- HF: the trained weights, gathered into one unsharded model and exported (sharded files with
  an index when large), reload with a bit-equal state dict, the same dtypes, tied weights still
  tied, and logits equal to that unsharded model's.
Logits are compared within one layout, never across layouts: a sharded matmul sums in another
order, so across layouts only the parity check's tolerance applies.
"""

from __future__ import annotations

from harness.cellrun import CellRun
from harness.checks.common import (
    assert_bit_equal,
    assert_same_logits,
    assert_ties_kept,
    full_state,
    logits,
)
from harness.checks.train import trained
from harness.failures import CellFailure
from harness.stacks.result import training_metrics


def run(cr: CellRun) -> dict:
    placed, result = trained(cr)
    model = placed.model
    batch = cr.batch()
    trained_state = full_state(model, placed)
    source = cr.shared_dir("dcp")
    cr.stack.save_sharded(model, source)
    target = cr.load_layout
    metrics = {**training_metrics(result, placed), "saved_under": cr.layout.name, "loaded_under": target.name}

    if target.world_size > 1:  # every rank: reshard into the load layout
        if target.world_size != cr.world_size:
            raise CellFailure("error", f"load layout {target.name} needs {target.world_size} ranks; this "
                                       f"cell has {cr.world_size} (pair layouts of one size, or single)")
        loaded_placed = cr.place(target)
        loaded = loaded_placed.model
        cr.stack.load_sharded(loaded, source)
        assert_bit_equal(trained_state, full_state(loaded, loaded_placed),
                         f"DCP saved under {cr.layout.name} -> loaded under {target.name}")
        direct = cr.place(target).model
        cr.stack.set_full_state(direct, trained_state)
        assert_same_logits(logits(direct, batch), logits(loaded, batch),
                           f"DCP -> {target.name} vs the trained weights set directly under {target.name}")
    if not cr.is_main:
        return metrics

    single = model if not cr.distributed else cr.one_device_model(trained_state)
    single_logits = logits(single, batch)
    if target.world_size == 1:
        loaded = cr.one_device_model()
        cr.stack.load_sharded(loaded, source, collective=False)
        what = f"DCP saved under {cr.layout.name} -> one device"
        assert_bit_equal(trained_state, full_state(loaded), what)
        assert_same_logits(single_logits, logits(loaded, batch), what)

    export = cr.scratch_dir() / "hf"
    cr.stack.save_pretrained(single, export, cr.check_options.get("export_max_shard_size", "5GB"))
    reloaded = cr.stack.load_pretrained(cr.arch, export, next(single.parameters()).device)
    assert_bit_equal(trained_state, full_state(reloaded), "HF export -> from_pretrained")
    assert_ties_kept(reloaded, "HF export -> from_pretrained")
    assert_same_logits(single_logits, logits(reloaded, batch), "HF export -> from_pretrained")
    shards = sorted(p.name for p in export.glob("*.safetensors"))
    dcp_files = sorted(p.name for p in source.iterdir())
    return {**metrics, "export_shards": len(shards), "dcp_files": len(dcp_files),
            "export_indexed": (export / "model.safetensors.index.json").exists()}
