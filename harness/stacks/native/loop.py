"""The training loop every check shares: a few optimizer steps on given batches, measurements.

It knows nothing about layouts. A layout hands it a model that is already sharded and a
`DataParallel` that says which slice of each global batch this rank owns and how to weigh its
loss, so the same loop produces the single-device reference and the parallel curves.

The loss is the one trainers compute: the mean over every label token of the *global* batch.
Each rank's loss is its local mean times (its label tokens / all ranks' label tokens), summed
over the data-parallel ranks for the record; for the backward it is also multiplied by the
number of data-parallel ranks, because FSDP2 (and our averaging of replicated parameters)
divides the summed gradients by that number. When every rank holds as many label tokens as
the others (the tiny tier's fixed batch) this is the plain average of the ranks' means; on real
text, where the answers differ in length, it is not.

`iter_steps` yields after each backward, while the step's gradients are in place, so that
`parity` can read them step by step; `train_steps` simply runs it to the end.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field

import torch

PER_SEQUENCE_AUTO_CLASSES = ("AutoModelForSequenceClassification",)


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


@dataclass
class DataParallel:
    """This rank's place among the data-parallel ranks of a layout (one device: rank 0 of 1)."""

    rank: int = 0
    size: int = 1
    group: object = None

    def local_batch(self, batch: dict) -> dict:
        """This data-parallel rank's contiguous slice of the global batch."""
        from harness.failures import CellFailure

        size = batch["input_ids"].shape[0]
        if size % self.size:
            raise CellFailure("error", f"global batch {size} does not split over {self.size} dp ranks")
        per = size // self.size
        return {k: v[self.rank * per:(self.rank + 1) * per] for k, v in batch.items()}

    def total(self, value: float) -> float:
        """The sum of `value` over the data-parallel ranks."""
        if self.size == 1:
            return value
        import torch.distributed as dist

        tensor = torch.tensor([float(value)], dtype=torch.float64)
        dist.all_reduce(tensor, group=self.group)
        return float(tensor)


def label_tokens(batch: dict, per_sequence: bool) -> int:
    """How many targets the model's loss averages over: shifted label tokens, or sequences."""
    labels = batch["labels"]
    if per_sequence or labels.ndim == 1:
        return int(labels.shape[0])
    return int((labels[..., 1:] != -100).sum())


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


def make_optimizer(model: torch.nn.Module, lr: float, groups: str = "by_tensor_kind") -> torch.optim.AdamW:
    """AdamW with foreach at torch's default, its parameter groups as the matrix's choice says.

    `by_tensor_kind` (matrix choice `optimizer_groups`): under TP some parameters are DTensors
    and some plain tensors (norms), and foreach kernels refuse a group that mixes them ("got mixed
    torch.Tensor and DTensor"); one group per kind keeps the default kernels for every layout,
    and on one device it is a single group. `one_group` is the plain `AdamW(model.parameters())`.
    """
    if groups == "one_group":
        params = [{"params": [p for p in model.parameters() if p.requires_grad]}]
    else:
        params = param_groups(model)
    return torch.optim.AdamW(params, lr=lr, weight_decay=0.0)


def _tensor_kind(param) -> tuple:
    """Plain tensor, or DTensor on which mesh dims with which placements."""
    mesh = getattr(param, "device_mesh", None)
    if mesh is None:
        return ("tensor",)
    return ("dtensor", mesh.mesh_dim_names, tuple(str(p) for p in param.placements))


def param_groups(model) -> list[dict]:
    """The trainable parameters in groups of one tensor kind each, in a stable order."""
    groups: dict[tuple, list] = {}
    for param in model.parameters():
        if param.requires_grad:
            groups.setdefault(_tensor_kind(param), []).append(param)
    return [{"params": params} for params in groups.values()]


def local_grad_norm(model: torch.nn.Module) -> float:
    """The gradient norm on one device (no shards): the reference's norm."""
    total = 0.0
    for p in model.parameters():
        if p.grad is not None:
            total += float(p.grad.detach().float().pow(2).sum())
    return math.sqrt(total)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _device(model) -> torch.device:
    param = next(model.parameters())
    return param.to_local().device if hasattr(param, "to_local") else param.device


def iter_steps(
    model: torch.nn.Module,
    batches: list[dict],
    optimizer: torch.optim.Optimizer,
    steps: int,
    dp: DataParallel | None = None,
    grad_norm: Callable[[torch.nn.Module], float] = local_grad_norm,
    per_sequence: bool = False,
) -> Generator[int, None, TrainResult]:
    """Run `steps` optimizer steps on global batches (taken in turn); yield after each backward.

    The value yielded is the step index; the generator's return value is the TrainResult.
    """
    dp = dp or DataParallel()
    device = _device(model)
    local = [{k: v.to(device) for k, v in dp.local_batch(b).items()} for b in batches]
    model.train()
    losses, norms, times = [], [], []
    for step in range(steps):
        batch = local[step % len(local)]
        mine = label_tokens(batch, per_sequence)
        share = mine / max(dp.total(mine), 1)
        _sync(device)
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = model(**batch).loss
        (loss * (share * dp.size)).backward()
        yield step
        norms.append(grad_norm(model))
        optimizer.step()
        _sync(device)
        times.append(time.perf_counter() - start)
        value = loss.detach()
        value = value.full_tensor() if hasattr(value, "full_tensor") else value
        losses.append(dp.total(float(value) * share))
    return TrainResult(losses=losses, grad_norms=norms, step_times_s=times,
                       tokens_per_step=int(batches[0]["input_ids"].numel()))


def finish(steps: Generator[int, None, TrainResult]) -> TrainResult:
    """Drive `iter_steps` to its end and return its TrainResult."""
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            return stop.value


def train_steps(model, batches: dict | list[dict], optimizer, steps: int, dp: DataParallel | None = None,
                grad_norm: Callable[[torch.nn.Module], float] = local_grad_norm,
                per_sequence: bool = False) -> TrainResult:
    """`steps` optimizer steps and the global loss curve (see the module docstring)."""
    batches = batches if isinstance(batches, list) else [batches]
    return finish(iter_steps(model, batches, optimizer, steps, dp, grad_norm, per_sequence))
