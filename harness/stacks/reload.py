"""Loading back what a stack saved, as its users do: plain transformers and peft on one device.

Every stack writes its own checkpoints (the native stack with save_pretrained and DCP, TRL through
its trainer, AutoModel through its Checkpointer); what a user then does with them is the same
whatever wrote them, so the round trips read them back through this one mixin.
"""

from __future__ import annotations

from pathlib import Path

import torch

from harness.ckpt.models import load_adapter, load_model, reload_pretrained
from harness.spec.matrix import Architecture


class PlainReload:
    """The seam's loading operations (harness/stacks/base.py) with plain libraries."""

    def load_pretrained(self, arch: Architecture, source: Path, device):
        return reload_pretrained(arch, source, device)

    def load_base(self, request):
        """The checkpoint as from_pretrained gives it, no method applied, on one device."""
        torch.manual_seed(0)
        return load_model(request.arch, request.checkpoint, request.dtype, request.device)

    def load_adapter(self, request, source: Path):
        return load_adapter(self.load_base(request), source)
