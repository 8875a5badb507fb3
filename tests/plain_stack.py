"""The stack under test with nothing of the harness: torch, transformers and peft as a user calls them.

A failure the harness records for the stack must also happen here, with the same message;
otherwise our own code caused it. `tests/test_plain_stack.py` runs these functions on the rank
pool and compares; the same file runs under torchrun, for anyone who wants to see the failure
without the harness:

    torchrun --standalone --nproc-per-node 2 tests/plain_stack.py lora_tp

This module imports nothing from `harness`.
"""

from __future__ import annotations

import sys
import tempfile

TINY_LLAMA = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  head_dim=16, intermediate_size=128, vocab_size=512, max_position_embeddings=512)


def tiny_llama(directory: str) -> str:
    """A randomly initialised tiny Llama saved as a Hugging Face checkpoint."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(**TINY_LLAMA)).save_pretrained(directory)
    return directory


def lora_step(path: str, distributed: dict, device: str = "cpu") -> float:
    """from_pretrained with a DistributedConfig, LoRA on every linear layer, one training step."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    from transformers.distributed import DistributedConfig

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32,
                                                 distributed_config=DistributedConfig(**distributed))
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))
    ids = (torch.arange(64).reshape(2, 32) % 500 + 1).to(device)
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return float(loss.full_tensor() if hasattr(loss, "full_tensor") else loss)


def lora_tp_task(payload: dict, ctx) -> float:
    """Pool task: `lora_step` under tensor parallel over every rank of the pool."""
    return lora_step(payload["path"], {"tp_size": ctx.world_size}, str(ctx.device))


if __name__ == "__main__":  # torchrun --standalone --nproc-per-node 2 tests/plain_stack.py lora_tp
    import torch.distributed as dist

    dist.init_process_group("gloo")
    with tempfile.TemporaryDirectory() as scratch:
        path = [tiny_llama(scratch) if dist.get_rank() == 0 else None]
        dist.broadcast_object_list(path, src=0)
        try:
            print(f"rank {dist.get_rank()}: loss {lora_step(path[0], {'tp_size': dist.get_world_size()})}")
        except Exception as exc:  # noqa: BLE001 - the point is to show the stack's own message
            print(f"rank {dist.get_rank()}: {type(exc).__name__}: {exc}", file=sys.stderr)
            sys.exit(1)
        finally:
            dist.barrier()
            dist.destroy_process_group()
