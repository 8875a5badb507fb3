"""The training loop every check shares: a fixed batch, a few optimizer steps, measurements.

It knows nothing about layouts. A layout hands it a model that is already sharded, the slice of
the global batch that this rank owns, and a `reduce_loss` that turns the local loss into the
global one, so the same loop produces the single-device reference and the parallel curves.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch


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


def fixed_batch(vocab_size: int, batch_size: int, seq_len: int, seed: int = 0) -> dict:
    """A deterministic batch of token ids; labels are the inputs (causal LM shifts inside)."""
    generator = torch.Generator().manual_seed(seed)
    # Stay clear of id 0 and the top of the vocab, where pad and special tokens usually sit.
    high = max(vocab_size - 1, 3)
    input_ids = torch.randint(1, high, (batch_size, seq_len), generator=generator)
    return {"input_ids": input_ids, "labels": input_ids.clone()}


def classification_labels(batch_size: int, num_labels: int) -> torch.Tensor:
    """One class id per sequence, for sequence-classification heads."""
    return torch.arange(batch_size) % num_labels


def make_optimizer(model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    """AdamW over one parameter group per tensor kind, foreach left at torch's default.

    Under TP some parameters are DTensors and some plain tensors (norms); foreach kernels
    refuse a group that mixes them ("got mixed torch.Tensor and DTensor"). Grouping by kind
    (harness/parallel.py: param_groups) keeps the default kernels for every layout; on one
    device it is a single group, the same optimizer as before.
    """
    from harness.parallel import param_groups  # imports nothing distributed at module level

    return torch.optim.AdamW(param_groups(model), lr=lr, weight_decay=0.0)


def _grad_norm(model: torch.nn.Module) -> float:
    total = 0.0
    for p in model.parameters():
        if p.grad is not None:
            grad = p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad
            total += float(grad.detach().float().pow(2).sum())
    return math.sqrt(total)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_steps(
    model: torch.nn.Module,
    batch: dict | list[dict],
    optimizer: torch.optim.Optimizer,
    steps: int,
    reduce_loss: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> TrainResult:
    """Run `steps` optimizer steps and return the global loss curve.

    `batch` is one batch used at every step (the tiny tier's fixed batch), or a list of batches
    taken in turn (the real tier's text: a new slice of the train split per step).
    """
    device = next(model.parameters()).device
    batches = batch if isinstance(batch, list) else [batch]
    batches = [{k: v.to(device) for k, v in b.items()} for b in batches]
    model.train()
    losses, norms, times = [], [], []
    for step in range(steps):
        batch = batches[step % len(batches)]
        _sync(device)
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = model(**batch).loss
        loss.backward()
        norms.append(_grad_norm(model))
        optimizer.step()
        _sync(device)
        times.append(time.perf_counter() - start)
        global_loss = reduce_loss(loss.detach()) if reduce_loss else loss.detach()
        losses.append(float(global_loss))
    return TrainResult(
        losses=losses,
        grad_norms=norms,
        step_times_s=times,
        tokens_per_step=int(batch["input_ids"].numel()),
    )
