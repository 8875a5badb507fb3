"""What a check receives for one cell: its matrix entries, its device, and its stack.

Checks are written once against CellRun and do not know whether they run on one device or on
a rank of a pool, nor which stack runs the cell: `cr.stack` is the Stack seam
(harness/stacks/base.py). `place()` returns a `Placed` (harness/stacks/placed.py): the model as
the cell's documented call built it, with the data-parallel slice it trains on and a global view
of its gradients; `fit(placed)` trains it with the tier's schedule. The placement travels as that
value; there is one way to get a one-device model (`place()` under the one-rank layout).

This module sits between the checks (above) and the stacks (below): it turns matrix entries into
the stack's typed requests (PlaceRequest, Schedule), so neither side parses the other's data.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from harness.ckpt.implementations import load_config, prepare, trust_remote_code
from harness.ckpt.models import checkpoint_for
from harness.data import text
from harness.data.batches import PER_SEQUENCE_AUTO_CLASSES, classification_labels, fixed_batch
from harness.failures import CellFailure
from harness.spec.cells import Cell, cell_architecture
from harness.spec.matrix import Api, Architecture, Layout, Matrix, Method, Tier
from harness.stacks.base import PlaceRequest, Schedule, Stack
from harness.stacks.native.placement import choose_api
from harness.stacks.placed import Placed
from harness.stacks.proof import prove_layout
from harness.stacks.registry import stack_for
from harness.stacks.result import TrainResult


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

    @cached_property
    def stack(self) -> Stack:
        """The stack under test that runs this cell (harness/stacks/registry.py)."""
        return stack_for(self.cell.stack)

    @property
    def choices(self) -> dict[str, str]:
        """The matrix's script choices, name -> declared value (the stack has its defaults)."""
        return {name: choice.value for name, choice in self.matrix.choices.items()}

    @property
    def distributed(self) -> bool:
        """Whether this cell runs under a multi-rank layout (this is one rank of it)."""
        return self.layout.world_size > 1

    def __post_init__(self):
        # Every process that builds this cell's model (the runner's, each pool rank's) registers a
        # custom class, or checks the remote-code opt-in and cache, before anything is built.
        prepare(self.arch)

    @cached_property
    def arch(self) -> Architecture:
        """The row as the cell's implementation sees it (a custom cell never runs remote code)."""
        return cell_architecture(self.matrix, self.cell)

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
        variant = self.cell.variant if layout.name == self.cell.layout else ""
        return choose_api(self.matrix.apis, layout, variant)

    @cached_property
    def checkpoint(self) -> Path:
        if self.checkpoint_path is not None:
            return Path(self.checkpoint_path)
        return checkpoint_for(self.arch, self.tier, self.matrix)

    @cached_property
    def config(self):
        """The checkpoint's config: vocabulary and labels come from it, never from a shard."""
        return load_config(self.arch, self.checkpoint)

    @property
    def trust_remote_code(self) -> bool:
        """What every loading call of this cell passes (the row's flag and the run's opt-in)."""
        return trust_remote_code(self.arch)

    def request(self, layout: Layout | None = None) -> PlaceRequest:
        """What the stack is asked to build on this rank: the cell's method under `layout`."""
        layout = layout or self.layout
        ctx = self.ctx if layout.world_size > 1 else None
        device = self.ctx.device if self.ctx is not None else self.device
        if self.stack.own_trainer:  # it applies the layout its own way, around its own data
            return PlaceRequest(self.arch, self.method, layout, None, self.checkpoint, self.tier.dtype,
                                device, ctx, experts=self.experts, schedule=self.schedule(),
                                scratch=self.scratch_root, keep_grads=self.cell.check == "parity",
                                implementation=self.cell.implementation)
        return PlaceRequest(self.arch, self.method, layout, self.api(layout), self.checkpoint,
                            self.tier.dtype, device, ctx, experts=self.experts, choices=self.choices,
                            implementation=self.cell.implementation)

    def place(self, layout: Layout | None = None) -> Placed:
        """The cell's method and `layout` (default: the cell's own) applied on this rank by the stack,
        proven (harness/stacks/proof.py): every stack's model must be laid out as asked.

        A stack with its own trainer prepares the model when training starts, and proves it then
        (its first step); `fit` insists that it did.
        """
        layout = layout or self.layout
        placed = self.stack.place(self.request(layout))
        if not self.stack.own_trainer:
            self._prove(placed, layout)
        return placed

    @staticmethod
    def _prove(placed: Placed, layout: Layout) -> None:
        placed.proof = prove_layout(layout, placed.model, global_shapes=placed.global_shapes,
                                    wrapper=placed.wrapper)

    def load_base(self):
        """The checkpoint as from_pretrained gives it on this device, no method applied."""
        return self.stack.load_base(self.request(self.one_device_layout))

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
                raise CellFailure(
                    "check-failed", "the gathered state dict does not fit a one-device model: "
                                    f"missing {missing[:5]}, unexpected {unexpected[:5]}")
        return model

    @property
    def per_sequence(self) -> bool:
        """Whether the model's loss averages over sequences (a classifier), not label tokens."""
        return self.arch.auto_class in PER_SEQUENCE_AUTO_CLASSES

    def batch(self) -> dict:
        """The tiny tier's fixed global batch, from the checkpoint's own vocabulary."""
        text_config = self.config.get_text_config()
        size = self.layout.batch_size or self.tier.batch_size
        batch = fixed_batch(text_config.vocab_size, size, self.tier.seq_len)
        if self.per_sequence:
            batch["labels"] = classification_labels(size, self.config.num_labels)
        return batch

    def batches(self) -> list[dict]:
        """The global batch of every step: the tier's real text, or the fixed batch every step."""
        return text.train_batches(self) if text.uses_text(self) else [self.batch()]

    def schedule(self, batches: list[dict] | None = None, steps: int | None = None) -> Schedule:
        """The tier's training schedule for this cell's method (default: the tier's batches and steps)."""
        return Schedule(batches or self.batches(), steps or self.tier.steps, self.tier.lr_for(self.method),
                        self.per_sequence, self.choices)

    def steps(self, placed: Placed, batches: list[dict] | None = None, steps: int | None = None):
        """The stack's training on `placed` as a generator that yields after each backward."""
        return self.stack.steps(placed, self.schedule(batches, steps))

    def fit(self, placed: Placed, steps: int | None = None, batches: list[dict] | None = None) -> TrainResult:
        """A few optimizer steps on the tier's global batches; the global loss curve."""
        if not placed.proof and not self.stack.own_trainer:  # placed by the stack's own code (real-shape)
            self._prove(placed, self.layout)
        result = self.stack.fit(placed, self.schedule(batches, steps))
        if not placed.proof:
            raise CellFailure("harness-error", f"stack {self.stack.name} trained without proving the layout "
                                               "(harness/stacks/proof.py)")
        return result

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

