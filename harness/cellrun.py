"""What a check needs to run one cell: its matrix entries, its device, and the model steps.

Checks are written once against CellRun and do not know whether they run on one device or on
a rank of a pool. `place()` returns a `Placed` (harness/stacks/native/placement.py): the model as the cell's
documented call built it, with the data-parallel slice it trains on and a global view of its
gradients; `train(placed)` runs the shared training loop on it. The placement travels as that
value; there is one way to get a one-device model (`place()` under the one-rank layout).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from harness.spec.cells import Cell
from harness.spec.matrix import Api, Architecture, Layout, Matrix, Method, Tier


@dataclass
class CellRun:
    matrix: Matrix
    cell: Cell
    device: str
    scratch_root: Path | None = None
    # A directory every rank of the cell sees (a sharded checkpoint is written by all of them).
    shared_root: Path | None = None
    rank: int = 0
    world_size: int = 1
    # On a pool rank: the pool's RankContext (device, process group, meshes).
    ctx: object = None
    # Resolved once by the runner, so that the ranks do not race to build the same checkpoint.
    checkpoint_path: Path | None = None

    @property
    def distributed(self) -> bool:
        """Whether this cell runs under a multi-rank layout (this is one rank of it)."""
        return self.layout.world_size > 1

    @property
    def arch(self) -> Architecture:
        return self.matrix.architectures[self.cell.architecture]

    @property
    def method(self) -> Method:
        return self.matrix.methods[self.cell.method]

    @property
    def tier(self) -> Tier:
        return self.matrix.tiers[self.cell.tier]

    @property
    def layout(self) -> Layout:
        return self.matrix.layouts[self.cell.layout]

    @property
    def load_layout(self) -> Layout:
        """Where a round trip loads what this cell saved (the check's `load_layouts`; default: here)."""
        name = self.matrix.checks[self.cell.check].load_layouts.get(self.cell.layout, self.cell.layout)
        return self.matrix.layouts[name]

    @property
    def one_device_layout(self) -> Layout:
        """The matrix's one-rank layout: the reference every sharded layout is compared with."""
        return next(lay for lay in self.matrix.layouts.values() if lay.world_size == 1)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def tolerance(self) -> dict:
        """The dtype's parity bounds, with the tier's own overrides (matrix `tolerance` of a tier)."""
        return {**self.matrix.tolerances[self.tier.dtype], **self.tier.tolerance}

    @property
    def check_options(self) -> dict:
        return self.matrix.checks[self.cell.check].options

    @property
    def experts(self) -> str | None:
        """The experts kernel this cell asks transformers for (None: transformers' default)."""
        kernel = self.matrix.experts.get(self.cell.variant)
        return kernel.value if kernel else None

    def api(self, layout: Layout) -> Api | None:
        """The documented call that applies `layout` for this cell (its variant's on its own layout)."""
        from harness.stacks.native.placement import choose_api

        variant = self.cell.variant if layout.name == self.cell.layout else ""
        return choose_api(self.matrix.apis, layout, variant)

    @cached_property
    def checkpoint(self) -> Path:
        from harness.ckpt.models import checkpoint_for

        if self.checkpoint_path is not None:
            return Path(self.checkpoint_path)
        return checkpoint_for(self.arch, self.tier, self.matrix)

    @cached_property
    def config(self):
        """The checkpoint's config: vocabulary and labels come from it, never from a shard."""
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(self.checkpoint)

    def load_base(self):
        """A fresh model from the tier's checkpoint through from_pretrained, on this device."""
        import torch

        from harness.ckpt.models import load_model

        torch.manual_seed(0)
        return load_model(self.arch, self.checkpoint, self.tier.dtype, self.device)

    def place(self, layout: Layout | None = None):
        """The cell's method and `layout` (default: the cell's own) applied on this rank: a Placed."""
        from harness.stacks.native.placement import Request, place

        layout = layout or self.layout
        ctx = self.ctx if layout.world_size > 1 else None
        device = self.ctx.device if self.ctx is not None else self.device
        request = Request(self.arch, self.method, layout, self.checkpoint, self.tier.dtype, ctx,
                          device=device, experts=self.experts,
                          replicas=self.matrix.choice("replicas_outside_fsdp", "average_gradients"))
        return place(request, self.api(layout))

    def one_device_model(self, state: dict | None = None):
        """The cell's method on an unsharded model on this rank's device, holding `state`.

        The round trips compare a sharded model with this one: `state` is the sharded model's
        gathered state dict (full_state), loaded strictly, so both hold the same weights.
        """
        model = self.place(self.one_device_layout).model
        if state is not None:
            device = next(model.parameters()).device
            missing, unexpected = model.load_state_dict({k: v.to(device) for k, v in state.items()},
                                                        strict=False)
            if missing or unexpected:
                from harness.failures import CellFailure

                raise CellFailure("check-failed", "the gathered state dict does not fit a one-device model: "
                                                  f"missing {missing[:5]}, unexpected {unexpected[:5]}")
        return model

    @property
    def per_sequence(self) -> bool:
        """Whether the model's loss averages over sequences (a classifier), not label tokens."""
        from harness.stacks.native.loop import PER_SEQUENCE_AUTO_CLASSES

        return self.arch.auto_class in PER_SEQUENCE_AUTO_CLASSES

    def batch(self) -> dict:
        """The tiny tier's fixed global batch, from the checkpoint's own vocabulary."""
        from harness.stacks.native.loop import classification_labels, fixed_batch

        text_config = self.config.get_text_config()
        size = self.layout.batch_size or self.tier.batch_size
        batch = fixed_batch(text_config.vocab_size, size, self.tier.seq_len)
        if self.per_sequence:
            batch["labels"] = classification_labels(size, self.config.num_labels)
        return batch

    def batches(self) -> list[dict]:
        """The global batch of every step: the tier's real text, or the fixed batch every step."""
        from harness.data import text as realtext

        return realtext.train_batches(self) if realtext.uses_text(self) else [self.batch()]

    def optimizer(self, model):
        from harness.stacks.native.loop import make_optimizer

        return make_optimizer(model, self.tier.lr_for(self.method),
                              self.matrix.choice("optimizer_groups", "by_tensor_kind"))

    def steps(self, placed, batches: list[dict] | None = None, steps: int | None = None):
        """The training loop on `placed` as a generator (see harness/stacks/native/loop.py: iter_steps)."""
        from harness.stacks.native.loop import iter_steps, local_grad_norm

        batches = batches or self.batches()
        norm = placed.global_grad_norm if placed.kind != "single" else local_grad_norm
        return iter_steps(placed.model, batches, self.optimizer(placed.model), steps or self.tier.steps,
                          placed.dp, norm, self.per_sequence)

    def train(self, placed, steps: int | None = None, batches: list[dict] | None = None):
        """A few optimizer steps on the tier's global batches; the global loss curve."""
        from harness.stacks.native.loop import finish

        return finish(self.steps(placed, batches, steps))

    def scratch_dir(self) -> Path:
        """A fresh directory for this cell's checkpoints, inside the root the runner removes."""
        import tempfile

        return Path(tempfile.mkdtemp(dir=self.scratch_root))

    def shared_dir(self, name: str) -> Path:
        """`name` in the directory all ranks of this cell share (one rank: its scratch root)."""
        root = self.shared_root or self.scratch_root
        if root is None:
            raise ValueError("this CellRun has no scratch directory")
        return Path(root) / name

