"""The `generate` check: greedy tokens are identical before saving and after reloading.

SFT saves the whole model with save_pretrained; LoRA saves only the adapter and reloads it
into a fresh base, which is how users ship each of them.

On real text (tier data "qa") the prompt is the check's fixed factual item of the QA set
(option `prompt`, e.g. capital-france), and the decoded greedy answer must contain the expected
answer (e.g. "Paris") both before saving and after reloading, not only be the same tokens.
"""

from __future__ import annotations

import torch

from harness import realtext
from harness.checks.dcp_roundtrip import export_hf, reload_hf
from harness.checks.peft_roundtrip import load_adapter, save_adapter
from harness.checks.train import trained, training_metrics
from harness.datasets import answer_matches
from harness.failures import CellFailure


@torch.no_grad()
def greedy(model, prompt: torch.Tensor, new_tokens: int) -> list[int]:
    model.eval()
    device = next(model.parameters()).device
    out = model.generate(input_ids=prompt.to(device), attention_mask=torch.ones_like(prompt).to(device),
                         max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                         pad_token_id=0)
    return out[0, prompt.shape[1]:].tolist()


def _answer(cr, tokens: list[int]) -> str:
    return realtext.tokenizer(cr).decode(tokens, skip_special_tokens=True)


def run(cr) -> dict:
    new_tokens = cr.check_options.get("new_tokens", 8)
    text = realtext.uses_text(cr)
    if text:
        item, prompt = realtext.fixed_prompt(cr, cr.check_options["prompt"])
        untrained = _answer(cr, greedy(cr.load_base(), prompt, new_tokens))
    model, result = trained(cr)
    if not text:
        prompt = cr.batch(model)["input_ids"][:1, :8]
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
    if not text:
        return {"losses": result.losses, "generated": before}
    answers = {"answer_untrained": untrained, "answer_before_save": _answer(cr, before),
               "answer_after_reload": _answer(cr, after)}
    for when in ("answer_before_save", "answer_after_reload"):
        if not answer_matches(answers[when], item.answer):
            raise CellFailure("check-failed", f"{item.id}: the greedy answer {answers[when]!r} ({when}) does "
                                              f"not contain the expected {item.answer!r}")
    return {**training_metrics(result), "generated": before, "prompt_id": item.id,
            "question": item.question, "expected": item.answer, **answers}
