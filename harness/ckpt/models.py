"""Where a cell's model comes from: the tier picks the checkpoint, from_pretrained loads it.

Every tier ends in a directory holding a saved Hugging Face checkpoint, so the tiny tier and
the real tier both go through the same `from_pretrained` path that users take.
"""

from __future__ import annotations

from pathlib import Path

from harness.ckpt.atomic import verify
from harness.ckpt.implementations import config_class, prepare, trust_remote_code
from harness.ckpt.loading import checked_load
from harness.ckpt.providers import resolve
from harness.ckpt.tiny import auto_model_class, tiny_checkpoint
from harness.failures import CellFailure
from harness.spec.matrix import Architecture, Matrix, Tier


def checkpoint_for(arch: Architecture, tier: Tier, matrix: Matrix) -> Path:
    prepare(arch)
    if tier.source == "tiny":
        return tiny_checkpoint(arch, matrix)
    if tier.source == "checkpoint":
        config_class(arch)  # an unknown model type is a category, not a loading crash
        return resolve(arch.checkpoint_id, arch.real_provider)
    raise NotImplementedError(f"tier source {tier.source!r} is not implemented yet")


def load_model(arch: Architecture, path: Path, dtype: str, device: str):
    import torch

    remote = trust_remote_code(arch)
    model = checked_load(lambda: auto_model_class(arch).from_pretrained(
        path, dtype=getattr(torch, dtype), trust_remote_code=remote), arch.name, path, remote)
    return model.to(device)


# --- reading back what a stack saved, as a user would: plain transformers and peft ------------

def reload_pretrained(arch: Architecture, source: Path, device):
    """Plain `from_pretrained` of a saved directory; its failure is the verdict, in its words."""
    verify(source)
    remote = trust_remote_code(arch)

    def load():
        try:
            return auto_model_class(arch).from_pretrained(source, trust_remote_code=remote)
        except Exception as exc:  # noqa: BLE001 - the verdict is the loader's own message
            raise CellFailure("check-failed",
                              f"from_pretrained({source}) failed: {type(exc).__name__}: {exc}") from exc

    return checked_load(load, arch.name, source, remote).to(device)


def load_adapter(base, source: Path):
    """peft's own loader on a fresh base model, as users load a shipped adapter."""
    from peft import PeftModel

    verify(source)
    return PeftModel.from_pretrained(base, source)
