"""The seam's training operations for a stack without a trainer of its own: the harness's loop.

The native stack and the automodel stack both train what they placed with harness/stacks/loop.py
(AdamW with the matrix's `optimizer_groups` choice, the global token-mean loss), so that their
curves differ only by what the stack built. A stack says how a batch's loss is computed
(`loss_for`: the model's own by default; AutoModel's recipe loss for its stack) and where its
script choices' defaults are (`choice_defaults`).
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Mapping

import torch

from harness.stacks import loop
from harness.stacks.base import Schedule
from harness.stacks.placed import Placed
from harness.stacks.result import TrainResult


class HarnessLoop:
    """steps, fit and eval_loss (harness/stacks/base.py) on the harness's own loop."""

    choice_defaults: Mapping[str, str] = {}

    def _choice(self, choices: Mapping[str, str], name: str) -> str:
        return choices.get(name, self.choice_defaults[name])

    def loss_for(self, per_sequence: bool) -> Callable[[torch.nn.Module, dict], torch.Tensor]:
        """How a local batch's mean loss is computed: the model's own (transformers computes it)."""
        return loop.model_loss

    def steps(self, placed: Placed, schedule: Schedule) -> Generator[int, None, TrainResult]:
        groups = self._choice(schedule.choices, "optimizer_groups")
        norm = placed.global_grad_norm if placed.kind != "single" else loop.local_grad_norm
        optimizer = loop.make_optimizer(placed.model, schedule.lr, groups)
        return loop.optimizer_steps(placed.model, schedule.batches, optimizer, schedule.steps, placed.dp,
                                    norm, schedule.per_sequence, self.loss_for(schedule.per_sequence))

    def fit(self, placed: Placed, schedule: Schedule) -> TrainResult:
        return loop.run_to_end(self.steps(placed, schedule))

    def eval_loss(self, placed: Placed, batch: dict, per_sequence: bool = False) -> float:
        return loop.eval_loss(placed, batch, per_sequence, self.loss_for(per_sequence))
