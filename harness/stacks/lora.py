"""The LoRA settings a cell asks for, as peft's LoraConfig takes them: one reading for every stack.

The matrix declares them (methods.<m>.lora, a row's lora_targets and lora_exclude); each stack
hands them to peft its own way (the native stack calls get_peft_model, TRL takes peft_config).
"""

from __future__ import annotations

from harness.spec.matrix import Architecture, Method


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
