"""What a cell's method asks of any stack, read one way for all: the LoRA settings as peft's
LoraConfig takes them, and which parameters full fine-tuning keeps frozen.

The matrix declares them (methods.<m>.lora, a row's lora_targets, lora_exclude and sft_frozen);
each stack applies them its own way (the native stack calls get_peft_model and freezes before
its loop; TRL takes peft_config, and the frozen parameters are set before its trainer builds
the optimizer).
"""

from __future__ import annotations

import re

from harness.spec.matrix import Architecture, Method


def matches_module(name: str, patterns: tuple[str, ...]) -> bool:
    """Whether a parameter or module name lies under one of the dotted module names."""
    return any(re.search(rf"(^|\.){re.escape(p)}(\.|$)", name) for p in patterns)


def sft_frozen(name: str, arch: Architecture) -> bool:
    """Whether full fine-tuning keeps this parameter frozen (the row's `sft_frozen`)."""
    return matches_module(name, arch.sft_frozen)


def lora_settings(arch: Architecture, method: Method) -> dict:
    """LoraConfig's keyword arguments for this row and method."""
    settings = method.lora
    targets = arch.lora_targets or settings["target_modules"]
    return {
        "r": settings["rank"],
        "lora_alpha": settings["alpha"],
        "lora_dropout": settings.get("dropout", 0.0),
        "target_modules": list(targets) if isinstance(targets, tuple) else targets,
        "exclude_modules": list(arch.lora_exclude) or None,
    }
