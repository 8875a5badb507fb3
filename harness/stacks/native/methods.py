"""Training methods: what is trainable. SFT trains the model; LoRA adds adapters and freezes it.

Quirks come from the matrix row: `sft_frozen` (modules that text-only training never reaches,
e.g. a vision tower), `lora_targets` and `lora_exclude`. A LoRA failure inside peft is its own
category, so the docs can say "peft cannot wrap this model" rather than "error".

Each of those names is matched against the built model before it is used: one that matches
nothing would be silently ignored (peft skips a list entry that matches no module; a frozen
pattern that matches nothing freezes nothing), so it fails the cell as `matrix-error`, naming
the file, the key and the modules that exist (harness/stacks/native/model_names.py).
"""

from __future__ import annotations

import re

from harness.failures import CellFailure
from harness.spec.matrix import LORA_TARGET_KEYWORDS, Architecture, Method
from harness.stacks.method_settings import lora_settings, matches_module, sft_frozen
from harness.stacks.native.model_names import peft_matches, unmatched
from harness.stacks.placed import Trainable

NEEDS_NEWER = re.compile(r"upgrade to transformers\s*>=\s*[0-9]", re.IGNORECASE)


def apply_method(model, arch: Architecture, method: Method) -> Trainable:
    if not method.is_lora:
        check_frozen(model, arch)
        for name, param in model.named_parameters():
            if sft_frozen(name, arch):
                param.requires_grad_(False)
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
        return Trainable(model=model, trainable=names, frozen=frozen)
    return _apply_lora(model, arch, method)


def check_frozen(model, arch: Architecture) -> None:
    """Every `sft_frozen` entry must name parameters of the model."""
    names = [n for n, _ in model.named_parameters()]
    for i, pattern in enumerate(arch.sft_frozen):
        if not any(matches_module(name, (pattern,)) for name in names):
            raise unmatched(arch.source_file, f"architectures.{arch.name}.sft_frozen[{i}]", pattern,
                            type(model).__name__, _module_names(model), "parameter",
                            "sft_frozen names the modules that text-only SFT cannot reach")


def check_lora_names(model, arch: Architecture, method: Method) -> None:
    """The LoRA targets and excludes must name modules of the model (peft's matching rules)."""
    names = _module_names(model)
    cls = type(model).__name__
    if arch.lora_targets:
        file, key, targets, each = arch.source_file, f"architectures.{arch.name}.lora_targets", \
            arch.lora_targets, True
    else:
        file, key, targets, each = method.source_file, f"methods.{method.name}.lora.target_modules", \
            method.lora["target_modules"], False
    fix = (f"give the row its own lora_targets in {arch.source_file}" if not each
           else "lora_targets are peft's module names, or one regular expression over whole names")
    if isinstance(targets, str):
        if targets not in LORA_TARGET_KEYWORDS and not any(re.fullmatch(targets, n) for n in names):
            raise unmatched(file, key, targets, cls, names, "module name (a regular expression must match "
                                                            "the whole name)", fix)
    elif each:
        for i, target in enumerate(targets):
            if not any(peft_matches(n, target) for n in names):
                raise unmatched(file, f"{key}[{i}]", target, cls, names, "module", fix)
    elif not any(peft_matches(n, t) for n in names for t in targets):
        raise unmatched(file, key, list(targets), cls, names, "module", fix)
    for i, exclude in enumerate(arch.lora_exclude):
        if not any(peft_matches(n, exclude) for n in names):
            raise unmatched(arch.source_file, f"architectures.{arch.name}.lora_exclude[{i}]", exclude, cls,
                            names, "module", "lora_exclude entries are peft's module names, matched "
                                             "as a dotted suffix")


def _module_names(model) -> list[str]:
    return [n for n, _ in model.named_modules() if n]


def _apply_lora(model, arch: Architecture, method: Method) -> Trainable:
    from peft import LoraConfig, get_peft_model

    check_lora_names(model, arch, method)
    targets = arch.lora_targets or method.lora["target_modules"]
    config = LoraConfig(**lora_settings(arch, method))
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
