"""What a check needs to run one cell: its matrix entries, its device, and the model steps.

Checks are written once against CellRun and do not know whether they run on one device or on
a rank of a pool; the layout-specific steps (loading under a TP plan, sharding, splitting the
batch, reducing the loss) are delegated to harness/parallel.py when the layout has more than
one rank.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from harness.cells import Cell
from harness.matrix import Architecture, Layout, Matrix, Method, Tier


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
    _placed: dict = field(default_factory=dict, repr=False)

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
        return self.matrix.tolerances[self.tier.dtype]

    @property
    def check_options(self) -> dict:
        return self.matrix.checks[self.cell.check].options

    @cached_property
    def checkpoint(self) -> Path:
        from harness.models import checkpoint_for

        if self.checkpoint_path is not None:
            return Path(self.checkpoint_path)
        return checkpoint_for(self.arch, self.tier, self.matrix)

    def load_base(self):
        """A fresh model from the tier's checkpoint through from_pretrained, on this device."""
        import torch

        from harness.models import load_model

        torch.manual_seed(0)
        return load_model(self.arch, self.checkpoint, self.tier.dtype, self.device)

    def trainable(self, model=None):
        """The model with the cell's method applied (SFT freezes; LoRA wraps with adapters).

        Under a multi-rank layout the model is placed by harness/parallel.py (loaded, sharded,
        method applied) on this rank; `train` then feeds it this rank's slice of the batch.
        """
        if self.distributed:
            if model is not None:
                raise ValueError("under a multi-rank layout, trainable() places its own model")
            return self.place(self.layout).trainable
        from harness.methods import apply_method

        return apply_method(model if model is not None else self.load_base(), self.arch, self.method)

    def place(self, layout: Layout):
        """parallel.place for this cell under `layout` (single: an unsharded model on this rank)."""
        from harness.parallel import place

        ctx = self.ctx if layout.world_size > 1 else None
        device = self.ctx.device if self.ctx is not None else self.device
        placed = place(self.arch, self.method, layout, self.checkpoint, self.tier.dtype, ctx,
                       device=device)
        self._placed[id(placed.trainable)] = placed
        return placed

    def batch(self, model) -> dict:
        from harness.train import classification_labels, fixed_batch

        # Some models pad their embedding past the output vocabulary (Mllama): stay within both.
        text_config = model.config.get_text_config()
        vocab = min(model.get_input_embeddings().num_embeddings,
                    getattr(text_config, "vocab_size", None) or 1 << 30)
        size = self.layout.batch_size or self.tier.batch_size
        batch = fixed_batch(vocab, size, self.tier.seq_len)
        if self.arch.auto_class == "AutoModelForSequenceClassification":
            batch["labels"] = classification_labels(size, model.config.num_labels)
        return batch

    def train(self, trainable, steps: int | None = None):
        """A few optimizer steps on the fixed global batch; the global loss curve.

        A trainable from `place` trains on its data-parallel slice of the batch, and its
        losses are reduced to the global ones, so every layout reports comparable curves.
        """
        from harness.train import make_optimizer, train_steps

        model = trainable.model
        optimizer = make_optimizer(model, self.method.lr)
        local_batch, reduce_loss = self.data_parallel(trainable)
        return train_steps(model, local_batch(self.batch(model)), optimizer, steps or self.tier.steps,
                           reduce_loss)

    def data_parallel(self, trainable):
        """(this rank's slice of a global batch, the reduction of its loss to the global one).

        Every training loop (this fixed batch, the real tier's text) feeds a placed trainable the
        same way; on one device the slice is the whole batch and there is nothing to reduce.
        """
        placed = self._placed.get(id(trainable))
        if placed is None:
            return (lambda batch: batch), None
        return placed.local_batch, placed.reduce_loss

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
