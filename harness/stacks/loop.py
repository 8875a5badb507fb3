"""The harness's training loop: a few optimizer steps on global batches, and what they measured.

Every stack without a trainer of its own trains here (native: plain torch + transformers + peft;
automodel: NeMo AutoModel's model, LoRA and parallelizer), so their curves differ only by what the
stack built, never by the loop.

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

`optimizer_steps` yields after each backward, while the step's gradients are in place, so that
`parity` can read them step by step; `fit` simply runs it to the end.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Generator

import torch

from harness.data.batches import label_tokens
from harness.stacks.placed import DataParallel
from harness.stacks.result import TrainResult, run_to_end


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


def model_loss(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    """The loss a transformers model computes itself from `labels` (its own shift and mean)."""
    return model(**batch).loss


def optimizer_steps(
    model: torch.nn.Module,
    batches: list[dict],
    optimizer: torch.optim.Optimizer,
    steps: int,
    dp: DataParallel | None = None,
    grad_norm: Callable[[torch.nn.Module], float] = local_grad_norm,
    per_sequence: bool = False,
    loss_of: Callable[[torch.nn.Module, dict], torch.Tensor] = model_loss,
) -> Generator[int, None, TrainResult]:
    """Run `steps` optimizer steps on global batches (taken in turn); yield after each backward.

    The value yielded is the step index; the generator's return value is the TrainResult.
    `loss_of(model, local batch)` is the local batch's mean loss over its label tokens: the
    model's own (transformers), or the stack's recipe loss where its models compute none.
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
        loss = loss_of(model, batch)
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


def fit(model, batches: dict | list[dict], optimizer, steps: int, dp: DataParallel | None = None,
                grad_norm: Callable[[torch.nn.Module], float] = local_grad_norm,
                per_sequence: bool = False) -> TrainResult:
    """`steps` optimizer steps and the global loss curve (see the module docstring)."""
    batches = batches if isinstance(batches, list) else [batches]
    return run_to_end(optimizer_steps(model, batches, optimizer, steps, dp, grad_norm, per_sequence))


# --- a loss without training (the real tier's held-out questions) -------------------------------

def _reshard(model) -> None:
    """Give back FSDP2's gathered parameters after an evaluation forward.

    FSDP2 keeps the root module's parameters gathered after its forward (the root does not
    reshard after forward); after a no-grad forward that state outlives the evaluation, and the
    training steps then never reduce gradients into the root's sharded weights (embeddings,
    final norm, head), which silently stay as they were. The tiny tier never evaluates outside
    training, so only this path needs it.
    """
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


@torch.no_grad()
def eval_loss(placed, batch: dict, per_sequence: bool = False,
              loss_of: Callable[[torch.nn.Module, dict], torch.Tensor] = model_loss) -> float:
    """The loss on a global batch as trainers report it: the mean over all its label tokens."""
    model = placed.model
    was_training = model.training
    model.eval()
    local = placed.dp.local_batch(batch)
    device = next(model.parameters()).device
    loss = loss_of(model, {k: v.to(device) for k, v in local.items()}).detach()
    loss = loss.full_tensor() if hasattr(loss, "full_tensor") else loss
    model.train(was_training)
    _reshard(model)
    mine = label_tokens(local, per_sequence)
    return placed.dp.total(float(loss) * mine) / max(placed.dp.total(mine), 1)


def disable_dropout(model) -> int:
    """Set every dropout rate in the model to 0; return how many nonzero rates there were."""
    count = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout) and module.p > 0:
            module.p = 0.0
            count += 1
        for name, value in list(vars(module).items()):
            if (("dropout" in name or "pdrop" in name) and isinstance(value, float)
                    and not isinstance(value, bool) and value > 0):
                setattr(module, name, 0.0)
                count += 1
    return count
