"""Tiny checkpoints: a shrunk config from the architecture's own config class, saved once.

Every test then loads the checkpoint back with `from_pretrained`, so the real loading path is
exercised rather than a model object handed around in memory. Checkpoints are cached by
content (architecture, config, transformers version) and built under a file lock, so that
pytest-xdist workers share them safely.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from filelock import FileLock

from harness.cache import cache_root
from harness.ckpt.atomic import atomic_directory
from harness.ckpt.implementations import (
    cached_remote_code,
    config_class,
    provenance,
    ship_custom_code,
    trust_remote_code,
)
from harness.ckpt.loading import require_initialised, unfilled_memory_reads_nan
from harness.failures import CellFailure
from harness.spec.matrix import CUSTOM, Architecture, Matrix

SEED = 0
# Bumped when what a tiny checkpoint directory holds changes (2: a tokenizer beside the weights).
LAYOUT_VERSION = 2


def _has_attribute(config, key: str) -> bool:
    return key in config.to_dict() or key in getattr(config, "attribute_map", {})


def _shrink(default_config, defaults: dict) -> dict:
    return {k: v for k, v in defaults.items() if _has_attribute(default_config, k)}


def tiny_config_kwargs(arch: Architecture, matrix: Matrix, cls) -> dict:
    """Generic shrink (only the keys `cls`, the row's config class, has), then the row's overrides."""
    default = cls()
    generic = dict(matrix.tiny_defaults.get("base", {}))
    if arch.moe:
        generic.update(matrix.tiny_defaults.get("moe", {}))
    kwargs = _shrink(default, generic)
    for name in getattr(cls, "sub_configs", {}) or {}:
        sub_default = getattr(default, name, None)
        if sub_default is not None and hasattr(sub_default, "to_dict"):
            sub = _shrink(sub_default, generic)
            sub["model_type"] = sub_default.model_type
            kwargs[name] = sub
    for key, value in arch.tiny.items():
        if isinstance(value, dict) and isinstance(kwargs.get(key), dict):
            kwargs[key] = {**kwargs[key], **value}
        else:
            kwargs[key] = value
    return kwargs


def build_tiny_config(arch: Architecture, matrix: Matrix):
    cls = config_class(arch)
    config = cls(**tiny_config_kwargs(arch, matrix, cls))
    if trust_remote_code(arch):
        # from_config finds the model code through the config's auto_map and its source repo, as it
        # does for a config loaded from the hub; save_pretrained then copies the code files along.
        code = cached_remote_code(arch)
        config.auto_map = code.auto_map
        config._name_or_path = str(code.path)
    return config


def auto_model_class(arch: Architecture):
    import transformers

    return getattr(transformers, arch.auto_class)


def cache_key(arch: Architecture, config) -> str:
    import transformers

    payload = json.dumps(
        {
            "architecture": arch.name,
            "auto_class": arch.auto_class,
            "config": config.to_dict(),
            "transformers": transformers.__version__,
            "seed": SEED,
            "layout": LAYOUT_VERSION,
            # the code that builds it: remote code or a custom class changes the checkpoint
            "code": provenance(arch),
        } | _shipping(arch),
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _shipping(arch: Architecture) -> dict:
    """A custom row's checkpoint carries its code and auto_map (ship_custom_code); the key says so
    only for those rows, so that no other row's checkpoint is rebuilt."""
    return {"ships_code": 1} if arch.implementation_kind == CUSTOM else {}


def _build_expected_class(arch: Architecture, config):
    """Build through the auto class, as users do, and insist on the row's class.

    A remote-code row builds the hub's class (the opt-in was checked when its config class was
    found); a class other than the row's is a matrix mistake either way.
    """
    model = auto_model_class(arch).from_config(config, trust_remote_code=trust_remote_code(arch))
    built = type(model).__name__
    if built == arch.expected_class:
        return model
    raise CellFailure(
        "matrix-error",
        f"{arch.auto_class} built {built} for model type {arch.model_type!r}, but the "
        f"row expects {arch.expected_class}: fix hf_class or model_type in {arch.source_file}",
    )


def _special_id(config, key: str, fallback: int) -> int:
    """A special token id the config names (the first of a list), if inside the vocabulary."""
    value = getattr(config, key, None)
    if isinstance(value, list | tuple):
        value = value[0] if value else None
    vocab = config.vocab_size
    return value if isinstance(value, int) and 0 <= value < vocab else fallback


def save_tiny_tokenizer(config, target: Path) -> None:
    """A word-level tokenizer whose ids are exactly the model's vocabulary, saved beside it.

    Trainer stacks (TRL's SFTTrainer) need a processing class to pad and end sequences; a tiny
    checkpoint has no hub tokenizer, so one is built offline with the `tokenizers` library: token
    `t<i>` is id i, and pad/eos/bos are the ids the model's config names (else 0, the last id, 1).
    The tiny tier trains on token ids, so the words themselves never matter.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    vocab_size = text.vocab_size
    specials = {"pad": _special_id(text, "pad_token_id", 0),
                "eos": _special_id(text, "eos_token_id", vocab_size - 1),
                "bos": _special_id(text, "bos_token_id", 1)}
    names = {token_id: f"<{kind}>" for kind, token_id in reversed(specials.items())}
    vocab = {names.get(i, f"t{i}"): i for i in range(vocab_size)}
    model = Tokenizer(models.WordLevel(vocab, unk_token=names[specials["pad"]]))
    model.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=model, pad_token=names[specials["pad"]],
                                        eos_token=names[specials["eos"]], bos_token=names[specials["bos"]],
                                        unk_token=names[specials["pad"]])
    tokenizer.save_pretrained(target)


def build_checked(arch: Architecture, config):
    """Build the row's class from `config` and refuse a model with uninitialised tensors (`init`).

    The build runs with unfilled memory reading NaN (harness/ckpt/loading.py), so that memory nothing
    initialised shows rather than whatever the allocator left there (often zeros, which would hide
    the finding). Initialised weights are unaffected. The same scan follows every later load.
    """
    import torch

    with unfilled_memory_reads_nan():
        torch.manual_seed(SEED)
        model = _build_expected_class(arch, config)
    return require_initialised(model, arch.name, "right after building from a config")


def tiny_checkpoint(arch: Architecture, matrix: Matrix) -> Path:
    """Path of the row's tiny checkpoint, building and saving it the first time it is asked for."""
    config = build_tiny_config(arch, matrix)
    root = cache_root() / "tiny"
    root.mkdir(parents=True, exist_ok=True)
    target = root / f"{arch.name}-{cache_key(arch, config)}"
    with FileLock(str(target) + ".lock"):
        if not (target / "config.json").exists():
            model = build_checked(arch, config)
            with atomic_directory(target) as staging:
                model.save_pretrained(staging)
                save_tiny_tokenizer(config, staging)
                if arch.implementation_kind == CUSTOM:
                    ship_custom_code(arch, staging)
        if trust_remote_code(arch):
            warm_remote_modules(arch, target)
    return target


def warm_remote_modules(arch: Architecture, checkpoint: Path) -> None:
    """Copy the checkpoint's code into transformers' module cache once, under the checkpoint's lock.

    Every process that loads the checkpoint with trust_remote_code copies its code files there and
    transformers takes no lock for it: pool ranks loading at once could import a half-written file.
    Done here first, their copies find identical files and write nothing.
    """
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    auto_map = json.loads((checkpoint / "config.json").read_text()).get("auto_map") or {}
    for reference in auto_map.values():
        for ref in reference if isinstance(reference, list | tuple) else (reference,):
            if ref and "--" not in ref:
                get_class_from_dynamic_module(ref, str(checkpoint))
