"""Pool tasks for tests/test_parallel.py that exercise the stack without the harness's repairs."""

from __future__ import annotations


def peft_lora_forward(payload: dict, ctx) -> float:
    """Load with transformers' TP (and FSDP2) at load, add LoRA with plain peft, run one forward.

    No `reset_adapters`: this is what a user of transformers and peft alone gets.
    """
    import torch
    from peft import LoraConfig, get_peft_model

    from harness.parallel import _distributed_config, _load_distributed

    config = _distributed_config(tp_plan="auto", **payload["sizes"])
    model = _load_distributed(payload["arch"], payload["path"], "float32", config)
    model = get_peft_model(model, LoraConfig(r=8, target_modules="all-linear"))
    ids = torch.arange(32).reshape(1, 32) % 50
    loss = model(input_ids=ids.to(ctx.device), labels=ids.to(ctx.device)).loss
    return float(loss.full_tensor() if hasattr(loss, "full_tensor") else loss)


def fsdp2_dcp_save(payload: dict, ctx) -> list[str]:
    """Every rank saves its FSDP2 shards of tiny Llama into one DCP checkpoint at payload["target"].

    With payload["fail_rank"], that rank raises after writing its shards, before the rename.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    from harness.ckpt_io import collective_atomic_directory
    from harness.matrix import load_matrix
    from harness.parallel import place
    from harness.tiny import tiny_checkpoint

    matrix = load_matrix()
    arch = matrix.architectures["LlamaForCausalLM"]
    placed = place(arch, matrix.methods["sft"], matrix.layouts["fsdp2"], tiny_checkpoint(arch, matrix),
                   "float32", ctx)
    with collective_atomic_directory(payload["target"]) as staging:
        dcp.save(get_model_state_dict(placed.model), checkpoint_id=str(staging))
        if payload.get("fail_rank") == ctx.rank:
            raise OSError(f"rank {ctx.rank}: disk full after writing its shards")
    from pathlib import Path

    return sorted(p.name for p in Path(payload["target"]).iterdir())
