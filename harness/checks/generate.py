"""The `generate` check: greedy tokens are identical before saving and after reloading.

SFT saves the whole model with save_pretrained; LoRA saves only the adapter and reloads it
into a fresh base, which is how users ship each of them.
"""

from __future__ import annotations

import torch

from harness.checks.dcp_roundtrip import export_hf, reload_hf
from harness.checks.peft_roundtrip import load_adapter, save_adapter
from harness.checks.train import trained
from harness.failures import CellFailure


@torch.no_grad()
def greedy(model, prompt: torch.Tensor, new_tokens: int) -> list[int]:
    model.eval()
    device = next(model.parameters()).device
    out = model.generate(input_ids=prompt.to(device), attention_mask=torch.ones_like(prompt).to(device),
                         max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                         pad_token_id=0)
    return out[0, prompt.shape[1]:].tolist()


def run(cr) -> dict:
    model, result = trained(cr)
    prompt = cr.batch(model)["input_ids"][:1, :8]
    new_tokens = cr.check_options.get("new_tokens", 8)
    before = greedy(model, prompt, new_tokens)
    scratch = cr.scratch_dir()
    if cr.method.is_lora:
        save_adapter(model, scratch / "adapter")
        reloaded = load_adapter(cr, scratch / "adapter")
    else:
        export_hf(model, scratch / "hf", "5GB")
        reloaded = reload_hf(cr.arch, scratch / "hf", cr.device)
    after = greedy(reloaded, prompt, new_tokens)
    if before != after:
        raise CellFailure("check-failed",
                          f"greedy tokens changed across save and reload: {before} -> {after}")
    return {"losses": result.losses, "generated": before}
