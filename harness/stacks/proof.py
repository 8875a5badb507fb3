"""Proof that a layout ran: the model a stack trains is laid out as the cell's layout asks.

A stack's word is not evidence. Trainer frameworks fall back quietly: a probe of TRL 1.16 with
Accelerate 1.15 on two gloo ranks asked for FSDP2 through `fsdp_config` and trained under
DistributedDataParallel, with no DTensor and no error. So every stack's cell, once the stack has
prepared its model, looks at the model itself, by the layout's mesh dims (matrix `layouts.*.mesh`):

- `dp_shard` (FSDP2): FSDP2 modules are present (torch's `FSDPModule`), and parameters are
  DTensors sharded over a mesh dim of that size;
- `tp`: parameters of the TP plan are split over the TP ranks: a DTensor with a `Shard` placement,
  or a plain local tensor smaller than its one-device shape (releases that keep plain shards);
- `ep`: expert weights are split: a parameter whose one-device first dim is the expert count holds
  a 1/ep share of it on this rank.

Anything else fails the cell as `layout-not-applied`, naming what ran instead. Nothing here changes
the model; it only reads types, placements and shapes, on this rank (no collective).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.failures import CellFailure
from harness.spec.constraints import EXPERT_COUNT_KEYS
from harness.spec.matrix import Layout


@dataclass
class LayoutEvidence:
    """What a rank's model looks like: the figures the proof decides on, and the record shows."""

    parameters: int = 0
    fsdp_modules: int = 0
    # DTensor parameters with a Shard placement on a mesh dim of each size, e.g. {2: 40}
    sharded_on_size: dict[int, int] | None = None
    # DTensor parameters sharded over two mesh dims at once (FSDP2 over a TP shard)
    sharded_twice: int = 0
    plain_splits: int = 0
    expert_splits: int = 0
    wrapper: str = ""

    @property
    def record(self) -> dict:
        return {"parameters": self.parameters, "fsdp_modules": self.fsdp_modules,
                "dtensor_sharded": {str(k): v for k, v in (self.sharded_on_size or {}).items()},
                "sharded_twice": self.sharded_twice, "plain_splits": self.plain_splits,
                "expert_splits": self.expert_splits,
                **({"wrapper": self.wrapper} if self.wrapper else {})}

    def describe(self) -> str:
        sharded = sum((self.sharded_on_size or {}).values())
        text = (f"{self.fsdp_modules} FSDP2 modules, {sharded} of {self.parameters} parameters sharded "
                f"DTensors, {self.plain_splits} plain split tensors")
        return f"{self.wrapper} around the model; {text}" if self.wrapper else text


def mesh_of(layout: Layout) -> dict[str, int]:
    """The mesh dims that shard (size above 1)."""
    return {dim: size for dim, size in layout.mesh.items() if size > 1}


# What each combination of sharding dims is called in records and docs.
LAYOUT_KINDS = {frozenset(): "single", frozenset({"dp_shard"}): "fsdp2", frozenset({"tp"}): "tp",
                frozenset({"dp_shard", "tp"}): "fsdp2_tp", frozenset({"ep"}): "ep"}


def layout_kind(layout: Layout) -> str:
    """single, fsdp2, tp, fsdp2_tp or ep: what the layout shards (a stack applies no other mesh)."""
    kind = LAYOUT_KINDS.get(frozenset(mesh_of(layout)))
    if kind is None:
        raise CellFailure("layout-unsupported", f"layout {layout.name}: no way to apply mesh {layout.mesh}")
    return kind


def expert_count(model) -> int | None:
    config = getattr(model, "config", None)
    if config is None:
        return None
    texts = [config, config.get_text_config() if hasattr(config, "get_text_config") else config]
    return next((getattr(c, k) for c in texts for k in EXPERT_COUNT_KEYS if getattr(c, k, None)), None)


def gather_evidence(model: torch.nn.Module, global_shapes: dict[str, tuple] | None = None,
                    wrapper: object = None, ep: int = 1) -> LayoutEvidence:
    """Read how `model`'s parameters are laid out on this rank (the wrapper the stack trains, if any)."""
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor, Shard

    evidence = LayoutEvidence(sharded_on_size={})
    experts = expert_count(model)
    evidence.fsdp_modules = sum(isinstance(m, FSDPModule) for m in model.modules())
    for name, param in model.named_parameters():
        evidence.parameters += 1
        local_shape = tuple(param.to_local().shape) if isinstance(param, DTensor) else tuple(param.shape)
        # the one-device shape: known from a meta twin where the stack built one, else the DTensor's
        own = tuple(param.shape) if isinstance(param, DTensor) else None
        whole = (global_shapes or {}).get(name) or own
        # a release that keeps plain TP shards: this rank's tensor (under FSDP2: the DTensor around
        # it) is smaller than one device's
        if whole is not None and tuple(param.shape) != tuple(whole):
            evidence.plain_splits += 1
        if isinstance(param, DTensor):
            sizes = [size for size, placement in zip(param.device_mesh.shape, param.placements, strict=True)
                     if isinstance(placement, Shard) and size > 1]
            for size in set(sizes):
                evidence.sharded_on_size[size] = evidence.sharded_on_size.get(size, 0) + 1
            evidence.sharded_twice += len(sizes) > 1
        if (experts and ep > 1 and whole and len(whole) == len(local_shape) and whole[0] == experts
                and local_shape[0] * ep == experts):
            evidence.expert_splits += 1
    if wrapper is not None and wrapper is not model:
        evidence.wrapper = type(wrapper).__name__
    return evidence


def missing_parts(layout: Layout, evidence: LayoutEvidence) -> list[str]:
    """What the layout asks for that the evidence does not show (empty: the layout ran)."""
    mesh = mesh_of(layout)
    sharded = evidence.sharded_on_size or {}
    missing = []
    if not mesh:
        if sharded or evidence.fsdp_modules or evidence.plain_splits:
            missing.append("an unsharded model (one device)")
        return missing
    if "dp_shard" in mesh and not (evidence.fsdp_modules and sharded.get(mesh["dp_shard"])):
        missing.append(f"FSDP2 over {mesh['dp_shard']} ranks (FSDP2 modules, parameters sharded over them)")
    # under FSDP2 too, a TP split is a second shard dim of a DTensor, or a plain split inside FSDP's
    tp_split = (evidence.sharded_twice or evidence.plain_splits if "dp_shard" in mesh
                else sharded.get(mesh.get("tp", 0)) or evidence.plain_splits)
    if "tp" in mesh and not tp_split:
        missing.append(f"tensor-parallel weights split over {mesh['tp']} ranks")
    if "ep" in mesh and not evidence.expert_splits:
        missing.append(f"experts split over {mesh['ep']} ranks")
    return missing


def prove_layout(layout: Layout, model: torch.nn.Module, *, global_shapes: dict[str, tuple] | None = None,
                 wrapper: object = None, ran: str = "") -> dict:
    """The layout's evidence for the record, or `layout-not-applied` naming what ran instead.

    `wrapper` is the object the stack trains when it is not the model itself (e.g. DDP around
    it); `ran` is the stack's own account of its setup (e.g. Accelerate's distributed type).
    """
    evidence = gather_evidence(model, global_shapes, wrapper, layout.mesh.get("ep", 1))
    missing = missing_parts(layout, evidence)
    if missing:
        account = f" ({ran})" if ran else ""
        raise CellFailure("layout-not-applied",
                          f"layout {layout.name} asks for {'; '.join(missing)}, but what ran is: "
                          f"{evidence.describe()}{account}")
    return {"layout_proof": evidence.record}
