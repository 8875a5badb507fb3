"""What training measured, as every stack reports it, and how a record shows it."""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field


@dataclass
class TrainResult:
    losses: list[float]
    grad_norms: list[float]
    step_times_s: list[float]
    tokens_per_step: int
    extra: dict = field(default_factory=dict)

    @property
    def tokens_per_s(self) -> float:
        # The first step pays for allocator warm-up and lazy init; leave it out when we can.
        times = self.step_times_s[1:] or self.step_times_s
        return self.tokens_per_step * len(times) / max(sum(times), 1e-9)


def training_metrics(result: TrainResult, placed=None) -> dict:
    """The record's training measurements (and how the model was placed, when given)."""
    out = {**(placed.record if placed is not None else {}),
           "losses": result.losses,
           "grad_norms": result.grad_norms,
           "step_times_s": result.step_times_s,
           "tokens_per_s": result.tokens_per_s,
           }
    if "heldout_loss_before" in result.extra:
        out.update(start_loss=result.losses[0], **result.extra)
    return out


def run_to_end(steps: Generator[int, None, TrainResult]) -> TrainResult:
    """Drive a stack's step generator (it yields after each backward) to its end; its TrainResult."""
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            return stop.value
