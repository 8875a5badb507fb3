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
