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

import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    set_model_state_dict,
)

from harness.checks.common import (
    assert_bit_equal,
    assert_same_logits,
    assert_ties_kept,
    full_state,
    logits,
)
from harness.checks.train import trained, training_metrics
from harness.ckpt.atomic import atomic_directory, collective_atomic_directory, verify
from harness.ckpt.tiny import auto_model_class
from harness.failures import CellFailure


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def save_dcp(model, target) -> None:
    """Every rank writes its shards (a collective when a process group is up); then one rename."""
    with collective_atomic_directory(target) as staging:
        dcp.save(get_model_state_dict(model), checkpoint_id=str(staging))


def load_dcp(model, source, collective: bool = True) -> None:
    """Load a (possibly sharded) DCP checkpoint into `model`, resharding to its layout.

    collective=False loads on this rank alone, e.g. rank 0 of a pool reading what all ranks
    saved into an unsharded model while the others are done.
    """
    verify(source)
    state = get_model_state_dict(model)
    dcp.load(state, checkpoint_id=str(source), no_dist=not (collective and _distributed()))
    set_model_state_dict(model, state)


def set_full_state(model, state: dict) -> None:
    """Give a (possibly sharded) model the gathered `state`: each rank keeps its own shards.

    A copy of the dict goes in: torch replaces its entries with the DTensor shards it makes.
    """
    set_model_state_dict(model, dict(state), options=StateDictOptions(full_state_dict=True, strict=False))


def export_hf(model, target, max_shard_size: str) -> None:
    with atomic_directory(target) as staging:
        model.save_pretrained(staging, max_shard_size=max_shard_size)


def reload_hf(arch, source, device):
    verify(source)
    try:
        return auto_model_class(arch).from_pretrained(source).to(device)
    except Exception as exc:  # noqa: BLE001 - the verdict is the loader's own message
        raise CellFailure("check-failed", f"from_pretrained({source}) failed: {type(exc).__name__}: {exc}") \
            from exc


def run(cr) -> dict:
    placed, result = trained(cr)
    model = placed.model
    batch = cr.batch()
    trained_state = full_state(model, placed)
    source = cr.shared_dir("dcp")
    save_dcp(model, source)
    target = cr.load_layout
    metrics = {**training_metrics(result, placed), "saved_under": cr.layout.name, "loaded_under": target.name}

    if target.world_size > 1:  # every rank: reshard into the load layout
        if target.world_size != cr.world_size:
            raise CellFailure("error", f"load layout {target.name} needs {target.world_size} ranks; this "
                                       f"cell has {cr.world_size} (pair layouts of one size, or single)")
        loaded_placed = cr.place(target)
        loaded = loaded_placed.model
        load_dcp(loaded, source)
        assert_bit_equal(trained_state, full_state(loaded, loaded_placed),
                         f"DCP saved under {cr.layout.name} -> loaded under {target.name}")
        direct = cr.place(target).model
        set_full_state(direct, trained_state)
        assert_same_logits(logits(direct, batch), logits(loaded, batch),
                           f"DCP -> {target.name} vs the trained weights set directly under {target.name}")
    if not cr.is_main:
        return metrics

    single = model if not cr.distributed else cr.one_device_model(trained_state)
    single_logits = logits(single, batch)
    if target.world_size == 1:
        loaded = cr.one_device_model()
        load_dcp(loaded, source, collective=False)
        what = f"DCP saved under {cr.layout.name} -> one device"
        assert_bit_equal(trained_state, full_state(loaded), what)
        assert_same_logits(single_logits, logits(loaded, batch), what)

    export = cr.scratch_dir() / "hf"
    export_hf(single, export, cr.check_options.get("export_max_shard_size", "5GB"))
    reloaded = reload_hf(cr.arch, export, next(single.parameters()).device)
    assert_bit_equal(trained_state, full_state(reloaded), "HF export -> from_pretrained")
    assert_ties_kept(reloaded, "HF export -> from_pretrained")
    assert_same_logits(single_logits, logits(reloaded, batch), "HF export -> from_pretrained")
    shards = sorted(p.name for p in export.glob("*.safetensors"))
    dcp_files = sorted(p.name for p in source.iterdir())
    return {**metrics, "export_shards": len(shards), "dcp_files": len(dcp_files),
            "export_indexed": (export / "model.safetensors.index.json").exists()}
