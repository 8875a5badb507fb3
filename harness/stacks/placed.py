"""What a stack hands a check: a placed model, and how to feed it and read it whole.

`Placed` is the value every stack's `place` returns (harness/stacks/base.py): the model as the
stack's documented call built it, what is trainable, the data-parallel slice of each global
batch this rank trains on, and a read-only global view of its parameters and gradients. The
checks compare with one device through that view, so it must read any representation a release
uses for a shard: transformers' TP keeps DTensors since about 5.16 and plain local tensors
before. A DTensor is gathered with `full_tensor()`; a plain tensor whose shape differs from the
one-device model's (known from a meta-device twin, `global_shapes`) along one dim is gathered
over the ranks that split it, packed layers (gate and up fused) block by block as the model's
TP plan says. Nothing here changes what the stack built.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass, field

import torch

from harness.failures import CellFailure


@dataclass
class Trainable:
    """The model a method produced, and which of its parameters train (names as the model has them)."""

    model: object
    trainable: list[str]
    frozen: list[str]
    lora_modules: list[str] = field(default_factory=list)


@dataclass
class DataParallel:
    """This rank's place among the data-parallel ranks of a layout (one device: rank 0 of 1)."""

    rank: int = 0
    size: int = 1
    group: object = None

    def local_batch(self, batch: dict) -> dict:
        """This data-parallel rank's contiguous slice of the global batch."""
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


@dataclass
class Placed:
    """A model placed on this rank by one documented call, and how to feed and read it."""

    model: torch.nn.Module
    trainable: Trainable
    kind: str
    api: str = ""
    call: str = ""
    dp: DataParallel = dataclasses.field(default_factory=DataParallel)
    # The ranks a plain (non-DTensor) shard is split over: the TP or EP group (None: the world).
    shard_group: object = None
    # Every parameter's one-device shape, where a release shards into plain local tensors.
    global_shapes: dict[str, tuple] | None = None
    notes: list[str] = dataclasses.field(default_factory=list)
    # A MoE row: the record names the experts kernel that ran.
    moe: bool = False
    # What harness/stacks/proof.py saw of the layout on this rank (prove_layout's record).
    proof: dict = dataclasses.field(default_factory=dict)
    # What trains when it is not the model itself (e.g. DistributedDataParallel around it).
    wrapper: object = None
    # What the stack itself reports about the model it built, for the record (e.g. AutoModel's
    # class and its declared capabilities), under one key per stack.
    facts: dict = dataclasses.field(default_factory=dict)

    @property
    def record(self) -> dict:
        """What the cell's record says about the placement."""
        out = {"layout_kind": self.kind, "dp_size": self.dp.size, "layout_notes": self.notes, **self.proof,
               **self.facts}
        if self.api:
            out.update(api=self.api, api_call=self.call)
        if self.moe:
            out["experts_implementation"] = experts_implementation(self.model)
        out["model_code"] = class_that_ran(self.model)
        return out

    def global_grads(self) -> dict[str, torch.Tensor]:
        """Every trainable parameter's gradient, whole (a collective: every rank must call it)."""
        return {name: self.global_view(name, grad_or_zeros(param)).detach().float().cpu()
                for name, param in self.model.named_parameters() if param.requires_grad}

    def global_grad_norm(self, model=None) -> float:
        """The norm of the whole gradient, however it is sharded (collectives, no gathering).

        A DTensor's norm is torch's own (it reduces over the placements); a plain split of a
        parameter adds its ranks' sums of squares over the group that splits it.
        """
        import torch.distributed as dist

        total = 0.0
        for name, param in self.model.named_parameters():
            if not param.requires_grad:
                continue
            grad = grad_or_zeros(param).detach()
            if hasattr(grad, "full_tensor"):
                norm = torch.linalg.vector_norm(grad.float())
                squares = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm) ** 2
            else:
                squares = float(grad.float().pow(2).sum())
            want = (self.global_shapes or {}).get(name)
            if want is not None and tuple(grad.shape) != tuple(want):
                summed = torch.tensor([squares], dtype=torch.float64, device=_local(grad).device)
                dist.all_reduce(summed, group=self.shard_group)
                squares = float(summed)
            total += squares
        return math.sqrt(total)

    def global_view(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` (a parameter or its gradient) as the one-device model holds it."""
        if hasattr(tensor, "full_tensor"):
            tensor = whole_dtensor(name, tensor)
        want = (self.global_shapes or {}).get(name)
        if want is None or tuple(tensor.shape) == tuple(want):
            return tensor
        return gather_plain_shard(tensor, tuple(want), self.shard_group, packed_style(self.model, name))


EVIDENCE_UNAVAILABLE = "evidence-unavailable"


def whole_dtensor(name: str, tensor) -> torch.Tensor:
    """A DTensor gathered whole: `full_tensor`, else a redistribution to Replicate on every mesh dim.

    Some placements transformers builds cannot be gathered by torch at all (packed expert shards
    as `_StridedShard`: "use_strided_shard_as_shard_order ... unable to be interpreted"). That is
    a limit of the check's own evidence step, not something the stack's users call, so it is no
    verdict on the stack: the cell fails as `evidence-unavailable`, with torch's message.
    """
    try:
        return tensor.full_tensor()
    except (ValueError, NotImplementedError, RuntimeError) as gather_error:
        from torch.distributed.tensor import Replicate

        try:
            return tensor.redistribute(placements=[Replicate()] * tensor.device_mesh.ndim).to_local()
        except (ValueError, NotImplementedError, RuntimeError) as redistribute_error:
            raise CellFailure(EVIDENCE_UNAVAILABLE, (
                f"the check cannot gather {name} whole (placements {tuple(tensor.placements)}): torch's "
                f"full_tensor raised {type(gather_error).__name__}: {gather_error}; redistribute to "
                f"Replicate raised {type(redistribute_error).__name__}: {redistribute_error}"),
            ) from gather_error


def _local(tensor) -> torch.Tensor:
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def grad_or_zeros(param) -> torch.Tensor:
    """A parameter's gradient, or zeros where it got none this step (every rank gathers alike)."""
    if param.grad is not None:
        return param.grad
    return torch.zeros_like(param)


def base_model(model):
    """The transformers model under a peft wrapper (itself when there is none)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def own_class(model) -> type:
    """The model's own class under any wrapper: peft's base model, the class before fully_shard
    swapped it for a subclass of FSDPModule."""
    from torch.distributed.fsdp import FSDPModule

    return next(cls for cls in type(base_model(model)).__mro__ if not issubclass(cls, FSDPModule))


def class_that_ran(model) -> dict:
    """The record's name for the code that ran: the class with its package and that package's
    installed release (None where no installed distribution holds it: hub remote code, a
    custom registry's local module; their `code` names their files and revision)."""
    cls = own_class(model)
    package = cls.__module__.split(".")[0]
    return {"class": f"{cls.__module__}.{cls.__qualname__}", "package": package,
            "release": package_release(package)}


@functools.cache
def package_release(package: str) -> str | None:
    """The installed release of the distribution that holds an importable top-level package."""
    import importlib.metadata

    for dist in importlib.metadata.packages_distributions().get(package, []):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def experts_implementation(model) -> str | None:
    """The MoE experts kernel the model runs: transformers' choice at load (not in config.json).

    "own loop" where the model class does not route its experts through transformers' experts
    interface, whatever the config says.
    """
    base = base_model(model)
    own = own_class(model)  # fully_shard swaps the class for a subclass of FSDPModule
    # a class that is not a transformers model (e.g. NeMo AutoModel's own) has no experts interface
    if not getattr(own, "_can_set_experts_implementation", lambda: False)():
        return "own loop"
    config = base.config.get_text_config() if hasattr(base.config, "get_text_config") else base.config
    return getattr(config, "_experts_implementation", None) or getattr(base.config, "_experts_implementation",
                                                                        None)


def packed_style(model, name: str) -> bool:
    """Whether the model's TP plan packs two blocks into this parameter (gate and up fused)."""
    try:
        from transformers.integrations.tensor_parallel import _get_parameter_tp_plan
    except ImportError:
        return False
    plan = getattr(base_model(model), "tp_plan", None) or {}
    key = name.removeprefix("base_model.model.")
    style = _get_parameter_tp_plan(key, plan) if plan else None
    return bool(style) and "packed" in str(style)


def gather_plain_shard(local: torch.Tensor, want: tuple, group, packed: bool) -> torch.Tensor:
    """Reassemble a plain local shard into the one-device tensor (a collective over `group`)."""
    import torch.distributed as dist

    ranks = dist.get_world_size(group)
    dims = [d for d, (have, full) in enumerate(zip(local.shape, want, strict=True)) if have != full]
    if len(local.shape) != len(want) or len(dims) != 1 or local.shape[dims[0]] * ranks != want[dims[0]]:
        raise CellFailure("check-failed", f"a parameter of local shape {tuple(local.shape)} is not a split "
                                          f"of "
                                          f"the one-device shape {want} over {ranks} ranks")
    dim = dims[0]
    parts = [torch.empty_like(local) for _ in range(ranks)]
    dist.all_gather(parts, local.detach().contiguous(), group=group)
    if packed:
        blocks = [part.chunk(2, dim) for part in parts]
        return torch.cat([b[0] for b in blocks] + [b[1] for b in blocks], dim=dim)
    return torch.cat(parts, dim=dim)


def split_of(full: torch.Tensor, local_shape: tuple, group) -> torch.Tensor:
    """This rank's contiguous piece of `full` along the one dim where `local_shape` is smaller."""
    import torch.distributed as dist

    dims = [d for d, (have, whole) in enumerate(zip(local_shape, full.shape, strict=True)) if have != whole]
    if not dims:
        return full
    dim = dims[0]
    return full.narrow(dim, dist.get_rank(group) * local_shape[dim], local_shape[dim])
