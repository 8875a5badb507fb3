"""The `generate` check: greedy tokens are identical before saving and after reloading.

Before: the trained model generates under the cell's layout (every rank the same prompt).
After: SFT saves the whole model with save_pretrained and reloads it with from_pretrained;
LoRA saves only the adapter (gathered whole from any shards) and loads it into a fresh base
with plain peft, which is how users ship each of them. The reload is on one device.
A class without `generate` (NeMo AutoModel's own) gives its greedy tokens by forward passes:
its users generate after export, and those are the tokens the export gives.

On real text (tier data "qa") the prompt is the check's fixed factual item of the QA set
(option `prompt`, e.g. capital-france), and the decoded greedy answer must contain the expected
answer (e.g. "Paris") both before saving and after reloading, not only be the same tokens.
"""

from __future__ import annotations

import math

import torch

from harness.cellrun import CellRun
from harness.checks.common import full_state, model_device, require_one_device_load
from harness.checks.peft_roundtrip import one_device_adapter_model
from harness.checks.train import trained
from harness.data import text
from harness.data.qa import answer_matches
from harness.failures import CellFailure
from harness.stacks.placed import Placed
from harness.stacks.result import training_metrics


def has_generate(model) -> bool:
    """Whether the model's class offers `generate` (NeMo AutoModel's own classes do not)."""
    return callable(getattr(model, "generate", None))


def _eos_ids(model) -> set[int]:
    """The end-of-sequence ids `generate` would hold back under min_new_tokens."""
    for source in (getattr(model, "generation_config", None), getattr(model, "config", None)):
        eos = getattr(source, "eos_token_id", None) if source is not None else None
        if eos is not None:
            return set(eos) if isinstance(eos, list | tuple) else {int(eos)}
    return set()


@torch.no_grad()
def greedy_by_forward(model, prompt: torch.Tensor, new_tokens: int) -> list[int]:
    """Greedy tokens from plain forward passes, for a class without `generate`.

    Its users generate after export, with transformers' `generate`: these are the tokens they
    get (the argmax of the last position, the whole sequence each step, no cache; the model's
    end-of-sequence ids held back as `min_new_tokens` does), compared with the reload's `generate`.
    """
    model.eval()
    ids = prompt.to(model_device(model))
    held_back = sorted(_eos_ids(model))
    for _ in range(new_tokens):
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[:, -1, :]
        if hasattr(logits, "full_tensor"):  # a layout that keeps the vocabulary sharded
            logits = logits.full_tensor()
        logits = logits.float()
        if held_back:
            logits[:, held_back] = -math.inf
        ids = torch.cat([ids, logits.argmax(-1, keepdim=True).to(ids.dtype)], dim=1)
    return ids[0, prompt.shape[1]:].tolist()


@torch.no_grad()
def greedy(model, prompt: torch.Tensor, new_tokens: int) -> list[int]:
    """Greedy tokens; under FSDP2 on every rank (generate runs the model's submodules outside
    the root forward, so `generate` is registered as a forward method: torch's own API for it).
    A class without `generate` gets them from forward passes (`greedy_by_forward`)."""
    from torch.distributed.fsdp import FSDPModule, register_fsdp_forward_method

    if not has_generate(model):
        return greedy_by_forward(model, prompt, new_tokens)
    if isinstance(model, FSDPModule):
        register_fsdp_forward_method(model, "generate")
    model.eval()
    device = model_device(model)
    out = model.generate(input_ids=prompt.to(device), attention_mask=torch.ones_like(prompt).to(device),
                         max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                         pad_token_id=0)
    return out[0, prompt.shape[1]:].tolist()


def _answer(cr: CellRun, tokens: list[int]) -> str:
    return text.tokenizer(cr).decode(tokens, skip_special_tokens=True)


def _reloaded(cr: CellRun, placed: Placed):
    """The trained model saved and loaded back on one device; None on ranks other than 0."""
    scratch = cr.scratch_dir()
    if cr.method.is_lora:
        single = one_device_adapter_model(cr, placed)
        if single is None:
            return None
        cr.stack.save_adapter(single, scratch / "adapter")
        return cr.stack.load_adapter(cr.request(cr.one_device_layout), scratch / "adapter")
    require_one_device_load(cr)
    state = full_state(placed.model, placed) if cr.distributed else None
    if not cr.is_main:
        return None
    single = cr.one_device_model(state) if cr.distributed else placed.model
    cr.stack.save_pretrained(single, scratch / "hf", "5GB")
    return cr.stack.load_pretrained(cr.arch, scratch / "hf", next(single.parameters()).device)


def run(cr: CellRun) -> dict:
    new_tokens = cr.check_options.get("new_tokens", 8)
    real_text = text.uses_text(cr)
    if real_text:
        item, prompt = text.fixed_prompt(cr, cr.check_options["prompt"])
        untrained = _answer(cr, greedy(cr.load_base(), prompt, new_tokens))
    placed, result = trained(cr)
    model = placed.model
    if not real_text:
        prompt = cr.batch()["input_ids"][:1, :8]
    before = greedy(model, prompt, new_tokens)
    reloaded = _reloaded(cr, placed)
    if reloaded is None:
        return {**training_metrics(result, placed), "generated": before}
    after = greedy(reloaded, prompt, new_tokens)
    if before != after:
        raise CellFailure("check-failed", f"greedy tokens changed across save (under {cr.layout.name}) and "
                                          f"reload (one device): {before} -> {after}")
    if not real_text:
        return {**training_metrics(result, placed), "generated": before, "saved_under": cr.layout.name}
    answers = {"answer_untrained": untrained, "answer_before_save": _answer(cr, before),
               "answer_after_reload": _answer(cr, after)}
    for when in ("answer_before_save", "answer_after_reload"):
        if not answer_matches(answers[when], item.answer):
            raise CellFailure("check-failed", f"{item.id}: the greedy answer {answers[when]!r} ({when}) does "
                                              f"not contain the expected {item.answer!r}")
    return {**training_metrics(result, placed), "generated": before, "prompt_id": item.id,
            "question": item.question, "expected": item.answer, "saved_under": cr.layout.name, **answers}
