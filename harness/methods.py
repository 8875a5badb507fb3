"""Training methods: what is trainable. SFT trains the model; LoRA adds adapters and freezes it.

Quirks come from the matrix row: `sft_frozen` (modules that text-only training never reaches,
e.g. a vision tower), `lora_targets` and `lora_exclude`. A LoRA failure inside peft is its own
category, so the docs can say "peft cannot wrap this model" rather than "error".
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from harness.failures import CellFailure
from harness.matrix import Architecture, Method


@dataclass
class Trainable:
    model: object
    trainable: list[str]
    frozen: list[str]
    lora_modules: list[str] = field(default_factory=list)


NEEDS_NEWER = re.compile(r"upgrade to transformers\s*>=\s*[0-9]", re.IGNORECASE)


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(re.search(rf"(^|\.){re.escape(p)}(\.|$)", name) for p in patterns)


def apply_method(model, arch: Architecture, method: Method) -> Trainable:
    if not method.is_lora:
        for name, param in model.named_parameters():
            if _matches(name, arch.sft_frozen):
                param.requires_grad_(False)
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
        return Trainable(model=model, trainable=names, frozen=frozen)
    return _apply_lora(model, arch, method)


def _apply_lora(model, arch: Architecture, method: Method) -> Trainable:
    from peft import LoraConfig, get_peft_model

    settings = method.lora
    targets = arch.lora_targets or settings["target_modules"]
    config = LoraConfig(
        r=settings["rank"],
        lora_alpha=settings["alpha"],
        lora_dropout=settings.get("dropout", 0.0),
        target_modules=list(targets) if isinstance(targets, tuple) else targets,
        exclude_modules=list(arch.lora_exclude) or None,
    )
    try:
        peft_model = get_peft_model(model, config)
    except Exception as exc:  # noqa: BLE001 - any refusal by peft is the category's point
        message = f"{type(exc).__name__}: {exc}"
        # peft's own statement that this combination needs a newer transformers (e.g. LoRA
        # under TP "Please upgrade to transformers >= 5.4.0"): not supported *here*, a skip
        category = "needs-newer-transformers" if NEEDS_NEWER.search(str(exc)) else "peft-unsupported"
        raise CellFailure(category, message) from exc
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    frozen = [n for n, p in peft_model.named_parameters() if not p.requires_grad]
    covered = sorted({n.split(".lora_")[0].removeprefix("base_model.model.") for n in trainable
                      if ".lora_" in n})
    if not covered:
        raise CellFailure("peft-unsupported", f"LoRA with targets {targets!r} wrapped no module")
    return Trainable(model=peft_model, trainable=trainable, frozen=frozen, lora_modules=covered)
