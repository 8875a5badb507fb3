"""The reference a cell's implementation is judged against: the native stack on one device.

A cell runs the row under some stack and implementation (TRL's trainer, AutoModel's own class or
its `force_hf`, a custom registry class). The reference is the same row, method, tier, checkpoint
and batches under the native stack (transformers' class or the hub's remote code, peft, the
harness's plain loop) on one device: the cell's `reference_run`. Two things are asked of it:

- `reference_curve`: its training over the tier's steps, exactly as the reference's own `train`
  cell trains (same placement, seed and batches), for the tiny tier's `train` bounds;
- `step_zero`: one forward and backward with dropout off: the start loss, the logits and every
  trainable parameter's gradient, for `implementation_parity`.

A cell of the reference itself (native stack, the row's own implementation) is its own reference:
`is_reference` says so, and nothing is computed twice.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

import torch

from harness.cellrun import CellRun
from harness.checks.common import logits
from harness.failures import CellFailure
from harness.spec.cells import Cell
from harness.spec.matrix import CUSTOM, REFERENCE_STACK
from harness.stacks.placed import Placed, grad_or_zeros
from harness.stacks.result import TrainResult, run_to_end

_CURVES: dict[tuple, TrainResult] = {}


def is_reference(cell: Cell) -> bool:
    """Whether the cell is the reference: the native stack running the row's own implementation."""
    return cell.stack == REFERENCE_STACK and not cell.implementation


def reference_cell(cell: Cell) -> Cell:
    """The reference's cell for `cell`: the native stack and the row's own implementation (for a
    custom class, the hub's remote code it stands in for), the plain variant."""
    return replace(cell, stack=REFERENCE_STACK, implementation="", variant="")


def reference_run(cr: CellRun) -> CellRun:
    """The reference's CellRun: the same checkpoint, except for a custom class, whose reference (the
    remote code) loads the checkpoint made for it (a remote code cell that cannot run here skips)."""
    same_checkpoint = cr.cell.implementation != CUSTOM
    return CellRun(cr.matrix, reference_cell(cr.cell), cr.device, scratch_root=cr.scratch_root,
                   checkpoint_path=cr.checkpoint if same_checkpoint else None)


def reference_curve(cr: CellRun) -> TrainResult:
    """The reference's training over the tier's steps on the tier's batches (cached per process)."""
    ref = reference_run(cr)
    key = (ref.cell.architecture, ref.cell.method, ref.cell.tier, str(ref.checkpoint), cr.device)
    if key not in _CURVES:
        _CURVES[key] = ref.fit(ref.place(ref.one_device_layout))
    return _CURVES[key]


@dataclass
class StepZero:
    """One forward and backward of a placed model on the tier's batch, dropout off."""

    loss: float
    logits: torch.Tensor
    grads: dict[str, torch.Tensor]
    grad_norm: float


def trainable_values(placed: Placed) -> dict[str, torch.Tensor]:
    return {name: param for name, param in placed.model.named_parameters() if param.requires_grad}


def step_zero(cr: CellRun, placed: Placed) -> StepZero:
    """The start loss, the logits and every trainable parameter's gradient before any update."""
    batch = cr.batch()
    out = logits(placed.model, batch)
    steps = cr.steps(placed, [batch], steps=1)
    next(steps)  # the first backward is done; its gradients are in place
    grads = {name: grad_or_zeros(param).detach().float().cpu()
             for name, param in trainable_values(placed).items()}
    result = run_to_end(steps)
    return StepZero(result.losses[0], out, grads, result.grad_norms[0])


# What a rename may do to the value besides naming it: an implementation that stores a weight as
# (in, out) where the reference stores (out, in), e.g. AutoModel's grouped experts against
# transformers' fused ones, declares "transpose" (the last two dims swapped).
TRANSFORMS = {"transpose": lambda value: value.transpose(-2, -1)}


@dataclass(frozen=True)
class Renamer:
    """An implementation's parameter names (and layouts) mapped to the reference's: the matrix's
    renames, in order; a rule is [regex, replacement] or [regex, replacement, transform]."""

    rules: tuple[tuple[re.Pattern, str, str | None], ...]

    def __call__(self, name: str) -> str:
        return self.map(name)[0]

    def map(self, name: str) -> tuple[str, list[str]]:
        """The reference's name for `name`, and the transforms of the rules that matched it."""
        transforms = []
        for pattern, replacement, transform in self.rules:
            name, hits = pattern.subn(replacement, name)
            if hits and transform:
                transforms.append(transform)
        return name, transforms


def renamer(renames: list[list[str]]) -> Renamer:
    """A Renamer from the matrix's rules (checks.implementation_parity.options.renames, then the row's
    parity_renames)."""
    return Renamer(tuple((re.compile(rule[0]), rule[1], rule[2] if len(rule) > 2 else None)
                         for rule in renames))


def renamed(values: dict, rename: Renamer) -> dict:
    """`values` under the reference's names and layouts; two names that map to one is the matrix's
    mistake."""
    out: dict = {}
    for name, value in values.items():
        target, transforms = rename.map(name)
        if target in out:
            raise CellFailure("matrix-error", f"implementation_parity renames map two parameters to "
                                              f"{target!r} (matrix/axes.toml "
                                              "checks.implementation_parity.options.renames, or the row's "
                                              "parity_renames)")
        for transform in transforms:
            value = TRANSFORMS[transform](value)
        out[target] = value
    return out


@torch.no_grad()
def copy_adapter_start(placed: Placed, reference: Placed, rename) -> list[str]:
    """LoRA: the reference's adapter values written into the implementation's adapters of the same
    (renamed) name and shape, so both start alike (each library draws A its own way). Returns the
    adapters that could not be aligned (shape or name), for the message."""
    want = trainable_values(reference)
    skipped = []
    for name, param in trainable_values(placed).items():
        if ".lora_" not in name:
            continue
        target = want.get(rename(name))
        if target is None or tuple(target.shape) != tuple(param.shape):
            shapes = "" if target is None else f" shape {tuple(param.shape)} vs {tuple(target.shape)}"
            skipped.append(f"{name} -> {rename(name)}{shapes}")
            continue
        param.copy_(target.to(param.device, param.dtype))
    return skipped
