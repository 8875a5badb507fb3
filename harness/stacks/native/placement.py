"""Where a parallel layout is applied: the documented call that shards a model, and what it made.

A layout is matrix data (matrix/axes.toml): a world size, named mesh dims, and the documented
calls (`apis`) that apply it. `place()` runs one such call for (architecture, method, layout,
checkpoint) on this rank and returns a `Placed`: the model as the libraries built it, the
data-parallel slice of the batch this rank owns, and a read-only global view of its parameters.

The calls (one function each in `PLACEMENTS`, named as in the matrix):
- fully_shard                 from_pretrained, the method (LoRA before sharding, so the adapters
                              are sharded with their layer), then torch's `fully_shard` on every
                              decoder layer (the model's `_no_split_modules`) and the root.
- distributed_config_fsdp     from_pretrained(distributed_config=DistributedConfig(fsdp_size=N)).
- distributed_config_tp       from_pretrained(distributed_config=DistributedConfig(tp_size=N)),
                              the row's `tp_plan` table as DistributedConfig(tp_plan=...) if any.
- tp_plan                     from_pretrained(tp_plan="auto"): the older documented call.
- distributed_config_tp_fsdp  DistributedConfig(tp_size, fsdp_size): TP then FSDP2 at load.
- tp_then_fully_shard         TP at load on our mesh, then `fully_shard` over the dp dim.
- distributed_config_ep       DistributedConfig(ep_size=N, fsdp_size=N): EP with token dispatch.
- enable_expert_parallel      DistributedConfig(tp_size=N, enable_expert_parallel=True).
- tp_plan_*                   the forms of releases before DistributedConfig took sizes.
The method (SFT freezes nothing; LoRA is peft's `get_peft_model`) is applied where a user
applies it: before our own `fully_shard`, after a call that shards at load.

Nothing here changes what torch, transformers or peft produced: no shape, value or placement
is repaired. When the stack fails in plain use (peft sizing an adapter from a shard, a TP style
a model cannot take), the cell fails with the stack's own message. What our script chooses
where a user's might differ is matrix data (`choices`): the optimizer's parameter groups,
averaging the gradients of trainable parameters that no FSDP module owns, and, for parity
only, the same adapter start on both sides (`same_adapter_start`, values only).

Reading a sharded model (`global_grads`, `global_grad_norm`) must work whatever representation
the release uses for a shard: transformers' TP keeps DTensors since about 5.16 and plain local
tensors before. A DTensor is gathered with `full_tensor()`; a plain tensor whose shape differs
from the one-device model's (known from a meta-device twin) along one dim is gathered over the
ranks that split it, packed layers (gate and up fused) block by block as the model's TP plan says.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import torch

from harness.ckpt.implementations import config_class, load_config, trust_remote_code
from harness.ckpt.loading import checked_load
from harness.ckpt.tiny import auto_model_class
from harness.failures import CellFailure
from harness.spec.matrix import Api, Architecture, Layout, Method
from harness.stacks.native.methods import apply_method
from harness.stacks.native.model_names import check_tp_plan
from harness.stacks.placed import (
    DataParallel,
    Placed,
    Trainable,
    base_model,
    split_of,
)
from harness.stacks.proof import layout_kind

LAYOUT_KINDS = ("single", "fsdp2", "tp", "fsdp2_tp", "ep")


# --- what kind of layout, which call applies it -------------------------------------------------

def offered(api: Api) -> bool:
    """Whether the installed transformers offers this call: every release from the one that introduced
    it (`since`) on. A later release that breaks it runs it and fails with its own message."""
    import transformers
    from packaging.version import Version

    return api.since is None or Version(transformers.__version__) >= Version(api.since)


def not_offered_reason(api: Api) -> str:
    import transformers

    return (f"transformers {transformers.__version__} does not offer {api.call}: it was introduced in "
            f"{api.since}" + (f" (the first release whose DistributedConfig has {', '.join(api.needs)}, "
                              "matrix/release_history.json)" if api.needs else ""))


def choose_api(apis: dict[str, Api], layout: Layout, variant: str = "") -> Api | None:
    """The call a cell runs: its variant's, else the first of the layout's that this release offers.

    None for a one-rank layout. A call the release does not offer yet is a `not-offered` skip.
    """
    if layout.world_size == 1:
        return None
    import transformers

    if variant in apis:
        api = apis[variant]
        if not offered(api):
            raise CellFailure("not-offered", not_offered_reason(api))
        return api
    for name in layout.apis:
        if offered(apis[name]):
            return apis[name]
    raise CellFailure("not-offered", f"transformers {transformers.__version__} offers none of the calls the "
                                     f"matrix declares for layout {layout.name}: "
                                     + "; ".join(not_offered_reason(apis[n]) for n in layout.apis))


# --- loading --------------------------------------------------------------------------------------

def load(arch: Architecture, path, dtype: str, experts: str | None = None, **kwargs):
    """from_pretrained through the row's auto class, as a user calls it (plus the cell's kernel)."""
    import warnings

    if experts is not None:
        _require_experts_interface(arch, path, experts)
        kwargs["experts_implementation"] = experts
    remote = trust_remote_code(arch)

    def from_pretrained():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # the deprecated tp_plan keyword warns
            return auto_model_class(arch).from_pretrained(path, dtype=getattr(torch, dtype),
                                                          trust_remote_code=remote, **kwargs)

    return checked_load(from_pretrained, arch.name, path, remote)


def _require_experts_interface(arch: Architecture, path, experts: str) -> None:
    """A kernel is offered only by a model class that routes its experts through transformers'
    experts interface (transformers' own test, before anything is built); else `not-offered`."""
    import transformers

    from harness.spec.release_facts import release_facts
    from harness.spec.release_history import load_history

    release = transformers.__version__
    if experts not in release_facts(()).experts_kernels:
        before = load_history().offered_before("experts_kernels", experts, release)
        if before is None:  # never offered up to this release: not yet a call users can make
            later = load_history().later_with("experts_kernels", experts, release)
            raise CellFailure("not-offered", f"transformers {release}'s experts registry has no {experts!r}"
                                             + (f" (first measured in {later}, matrix/release_history.json)"
                                                if later else ""))
        # offered by `before`: the call runs, and transformers says what happened to it
    config = load_config(arch, path)
    cls = auto_model_class(arch)._model_mapping[type(config)]
    if not getattr(cls, "_can_set_experts_implementation", lambda: False)():
        raise CellFailure("not-offered", f"{cls.__name__} does not route its experts through transformers' "
                                         f"experts interface in transformers {transformers.__version__}, so "
                                         f"experts_implementation={experts!r} is not offered for it")


def tp_plan(arch: Architecture, path=None) -> dict | str:
    """The row's own `tp_plan` table, else "auto" (the model's plan), else no-tp-plan.

    A table key that names nothing in the checkpoint's model (at `path`) is the matrix's mistake:
    matrix-error, with the names that exist (harness/stacks/native/model_names.py), before
    transformers sees it.
    """
    if arch.tp_plan:
        if path is not None:
            check_tp_plan(arch, path)
        return dict(arch.tp_plan)
    if not getattr(config_class(arch), "base_model_tp_plan", None):
        import transformers

        raise CellFailure(
            "no-tp-plan",
            f"{arch.name} has no base_model_tp_plan in transformers {transformers.__version__}; "
            f"give the row a tp_plan table in {arch.source_file} to run tensor parallel",
        )
    return "auto"


def _tp_kwargs(plan: dict | str) -> dict:
    """DistributedConfig's TP arguments: the model's plan by size alone, or the row's own table."""
    return {} if plan == "auto" else {"tp_plan": plan}


def check_tp_divides_heads(arch: Architecture, path, tp: int) -> None:
    """The checkpoint's own head counts must split over the TP ranks.

    The matrix prunes cells by the tiny config's heads at collection; a real checkpoint has its
    own (SmolLM2-135M: 9 heads, 3 KV heads), known only once it is on disk.
    """
    config = load_config(arch, path)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    for key in ("num_attention_heads", "num_key_value_heads"):
        heads = getattr(text, key, None)
        if isinstance(heads, int) and heads % tp:
            raise CellFailure("layout-unsupported", f"tensor parallel over {tp} ranks does not divide "
                                                    f"{key} = {heads} of the checkpoint at {path}")


def _require_ep_plan(arch: Architecture) -> None:
    if not arch.moe:
        raise CellFailure("layout-unsupported", "expert parallel needs a MoE model")
    if not getattr(config_class(arch), "base_model_ep_plan", None):
        import transformers

        raise CellFailure("layout-unsupported", f"{arch.name} has no base_model_ep_plan in "
                                                f"transformers {transformers.__version__}")


# --- FSDP2 --------------------------------------------------------------------------------------

def decoder_layers(model) -> list[torch.nn.Module]:
    """The modules FSDP2 wraps one by one: instances of the model's `_no_split_modules` classes.

    Matched along each module's class hierarchy: a layer that FSDP2 already wrapped (a release that
    applies it at load) is an `FSDP<Layer>` subclass, and it is still the layer a user's loop shards.
    """
    names = set(getattr(base_model(model), "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if any(c.__name__ in names for c in type(m).__mro__)]
    if not layers:
        raise CellFailure(
            "layout-unsupported",
            f"{type(base_model(model)).__name__}: no module of its _no_split_modules {sorted(names)} "
            "found, so there is no decoder layer to shard",
        )
    return layers


def apply_fsdp2(model, dp_mesh) -> None:
    from torch.distributed.fsdp import fully_shard

    for layer in decoder_layers(model):
        fully_shard(layer, mesh=dp_mesh)
    fully_shard(model, mesh=dp_mesh)


# --- trainable parameters outside FSDP (matrix choice `replicas_outside_fsdp`) -------------------

DATA_PARALLEL_DIMS = frozenset({"dp_shard", "fsdp", "efsdp", "dp_replicate"})


def _outside_data_parallel(param) -> bool:
    """Not sharded over a data-parallel mesh dim: a plain tensor, or a DTensor on TP/EP dims only."""
    mesh = getattr(param, "device_mesh", None)
    return mesh is None or not DATA_PARALLEL_DIMS & set(mesh.mesh_dim_names or ())


def replicate_outside_params(model, dp: DataParallel) -> list[str]:
    """Trainable parameters FSDP does not own: rank 0's start, gradients averaged (as DDP does).

    Plain ones are broadcast from the group's first rank; DTensors on TP/EP dims only keep the
    values peft gave them. Either way the gradient (its local part) is averaged over the dp ranks.
    """
    import torch.distributed as dist

    names = []
    src = dist.get_global_rank(dp.group, 0) if dp.group is not None else 0
    for name, param in model.named_parameters():
        if not param.requires_grad or not _outside_data_parallel(param):
            continue
        if getattr(param, "device_mesh", None) is None:
            dist.broadcast(param.data, src=src, group=dp.group)

        def average(p, group=dp.group, size=dp.size):
            grad = p.grad.to_local() if hasattr(p.grad, "to_local") else p.grad
            dist.all_reduce(grad, group=group)
            grad.div_(size)

        param.register_post_accumulate_grad_hook(average)
        names.append(name)
    return names


# --- the calls ----------------------------------------------------------------------------------

@dataclass
class Request:
    """Everything a placement call needs: the cell's row, method, layout and checkpoint."""

    arch: Architecture
    method: Method
    layout: Layout
    path: object
    dtype: str
    ctx: object = None
    seed: int = 0
    device: str = "cpu"
    experts: str | None = None
    # matrix choice `replicas_outside_fsdp`
    replicas: str = "average_gradients"

    @property
    def dims(self) -> dict:
        return dict(self.layout.mesh)

    def with_method(self, model) -> Trainable:
        torch.manual_seed(self.seed)
        return apply_method(model, self.arch, self.method)

    def after_load(self, model, dp: DataParallel, notes: list[str]) -> Trainable:
        """The method on a model sharded at load; trainable parameters outside FSDP as chosen."""
        trainable = self.with_method(model)
        if dp.size > 1 and self.replicas == "average_gradients":
            outside = replicate_outside_params(trainable.model, dp)
            notes.append(f"{len(outside)} trainable parameters outside FSDP: rank 0's start, "
                         "gradients averaged over the dp ranks")
        return trainable


def _single(req: Request) -> Placed:
    device = req.ctx.device if req.ctx else req.device
    model = load(req.arch, req.path, req.dtype, req.experts).to(device)
    trainable = req.with_method(model)
    return Placed(trainable.model, trainable, "single", moe=req.arch.moe)


def _fully_shard(req: Request) -> Placed:
    mesh = req.ctx.mesh(req.dims)
    trainable = req.with_method(load(req.arch, req.path, req.dtype, req.experts).to(req.ctx.device))
    apply_fsdp2(trainable.model, mesh)
    dp = DataParallel(mesh.get_local_rank("dp_shard"), req.dims["dp_shard"], mesh.get_group("dp_shard"))
    return Placed(trainable.model, trainable, "fsdp2", dp=dp, notes=["fully_shard per decoder layer + root"])


def _distributed_config_fsdp(req: Request) -> Placed:
    from transformers.distributed import DistributedConfig

    mesh = req.ctx.mesh(req.dims)
    size = req.dims["dp_shard"]
    model = load(req.arch, req.path, req.dtype, req.experts,
                 distributed_config=DistributedConfig(fsdp_size=size))
    dp = DataParallel(mesh.get_local_rank("dp_shard"), size, mesh.get_group("dp_shard"))
    notes = ["transformers FSDP2 at load"]
    trainable = req.after_load(model, dp, notes)
    return Placed(trainable.model, trainable, "fsdp2", dp=dp, notes=notes)


def _tp_at_load(req: Request, load_kwargs) -> Placed:
    """TP over every rank, applied by from_pretrained with `load_kwargs(plan)`; then the method."""
    check_tp_divides_heads(req.arch, req.path, req.dims["tp"])
    plan = tp_plan(req.arch, req.path)
    model = load(req.arch, req.path, req.dtype, req.experts, **load_kwargs(plan))
    trainable = req.with_method(model)
    return Placed(trainable.model, trainable, "tp", notes=[_tp_note(plan)])


def _distributed_config_tp(req: Request) -> Placed:
    from transformers.distributed import DistributedConfig

    return _tp_at_load(req, lambda plan: {
        "distributed_config": DistributedConfig(tp_size=req.dims["tp"], **_tp_kwargs(plan))})


def _tp_plan(req: Request) -> Placed:
    return _tp_at_load(req, lambda plan: {"tp_plan": plan})


def _distributed_config_tp_fsdp(req: Request) -> Placed:
    from transformers.distributed import DistributedConfig

    check_tp_divides_heads(req.arch, req.path, req.dims["tp"])
    plan = tp_plan(req.arch, req.path)
    mesh = req.ctx.mesh(req.dims)
    config = DistributedConfig(tp_size=req.dims["tp"], fsdp_size=req.dims["dp_shard"], **_tp_kwargs(plan))
    model = load(req.arch, req.path, req.dtype, req.experts, distributed_config=config)
    # Ranks are laid out row-major over (dp_shard, tp) exactly as transformers lays out (fsdp, tp).
    dp = DataParallel(mesh.get_local_rank("dp_shard"), req.dims["dp_shard"], mesh.get_group("dp_shard"))
    notes = [_tp_note(plan), "transformers TP + FSDP2 at load"]
    trainable = req.after_load(model, dp, notes)
    return Placed(trainable.model, trainable, "fsdp2_tp", dp=dp, shard_group=mesh.get_group("tp"),
                  notes=notes)


def _tp_then_fully_shard(req: Request, legacy: bool = False) -> Placed:
    from transformers.distributed import DistributedConfig

    check_tp_divides_heads(req.arch, req.path, req.dims["tp"])
    plan = tp_plan(req.arch, req.path)
    mesh = req.ctx.mesh(req.dims)
    if legacy:
        kwargs = {"tp_plan": plan, "tp_size": req.dims["tp"]}
    else:
        config = DistributedConfig(tp_size=req.dims["tp"], fsdp_size=req.dims["dp_shard"], **_tp_kwargs(plan))
        kwargs = {"distributed_config": config}
    model = load(req.arch, req.path, req.dtype, req.experts, device_mesh=mesh, **kwargs)
    trainable = req.with_method(model)
    apply_fsdp2(trainable.model, mesh["dp_shard"])
    dp = DataParallel(mesh.get_local_rank("dp_shard"), req.dims["dp_shard"], mesh.get_group("dp_shard"))
    return Placed(trainable.model, trainable, "fsdp2_tp", dp=dp, shard_group=mesh.get_group("tp"),
                  notes=[_tp_note(plan), "fully_shard on dp_shard"])


def _distributed_config_ep(req: Request) -> Placed:
    from transformers.distributed import DistributedConfig

    _require_ep_plan(req.arch)
    ep = req.dims["ep"]
    mesh = req.ctx.mesh(req.dims)
    model = load(req.arch, req.path, req.dtype, req.experts,
                 distributed_config=DistributedConfig(ep_size=ep, fsdp_size=ep))
    dp = DataParallel(mesh.get_local_rank("ep"), ep, mesh.get_group("ep"))
    notes = [f"transformers EP (ep_size={ep}, fsdp_size={ep})"]
    trainable = req.after_load(model, dp, notes)
    return Placed(trainable.model, trainable, "ep", dp=dp, shard_group=mesh.get_group("ep"), notes=notes)


def _enable_expert_parallel(req: Request, legacy: bool = False) -> Placed:
    from transformers.distributed import DistributedConfig

    _require_ep_plan(req.arch)
    ep = req.dims["ep"]
    mesh = req.ctx.mesh(req.dims)
    if legacy:
        kwargs = {"tp_plan": "auto", "tp_size": ep,
                  "distributed_config": DistributedConfig(enable_expert_parallel=True)}
    else:
        kwargs = {"distributed_config": DistributedConfig(tp_size=ep, enable_expert_parallel=True)}
    model = load(req.arch, req.path, req.dtype, req.experts, device_mesh=mesh, **kwargs)
    trainable = req.with_method(model)
    return Placed(trainable.model, trainable, "ep", shard_group=mesh.get_group("ep"),
                  notes=[f"transformers EP over the TP ranks ({ep} ranks, every rank the whole batch)"])


def _tp_note(plan: dict | str) -> str:
    return f"TP plan {plan if isinstance(plan, str) else 'from the matrix row'}"


PLACEMENTS = {
    "fully_shard": _fully_shard,
    "distributed_config_fsdp": _distributed_config_fsdp,
    "distributed_config_tp": _distributed_config_tp,
    "tp_plan": _tp_plan,
    "distributed_config_tp_fsdp": _distributed_config_tp_fsdp,
    "tp_then_fully_shard": _tp_then_fully_shard,
    "tp_plan_then_fully_shard": lambda req: _tp_then_fully_shard(req, legacy=True),
    "distributed_config_ep": _distributed_config_ep,
    "enable_expert_parallel": _enable_expert_parallel,
    "tp_plan_expert_parallel": lambda req: _enable_expert_parallel(req, legacy=True),
}


def place(req: Request, api: Api | None = None) -> Placed:
    """Load the checkpoint and apply the method and layout on this rank, by `api`'s call.

    Without a pool context (layout single, in the calling process) the model goes to
    `req.device`. Nothing the libraries built is changed afterwards.
    """
    torch.manual_seed(req.seed)
    kind = layout_kind(req.layout)
    if kind == "single":
        return _single(req)
    if req.ctx is None or req.ctx.world_size != req.layout.world_size:
        have = req.ctx.world_size if req.ctx else 1
        raise CellFailure("error", f"layout {req.layout.name} needs {req.layout.world_size} ranks, "
                                   f"got {have}")
    placed = PLACEMENTS[api.name](req)
    placed.api, placed.call, placed.moe = api.name, api.call, req.arch.moe
    if kind in ("tp", "fsdp2_tp", "ep"):
        placed.global_shapes = one_device_shapes(req)
    return placed


# --- reading plain-tensor shards whole ----------------------------------------------------------

def one_device_shapes(req: Request) -> dict[str, tuple]:
    """Every parameter's shape on one device: the same model and method built on the meta device."""
    config = load_config(req.arch, req.path)
    with torch.device("meta"):
        model = auto_model_class(req.arch).from_config(config, dtype=getattr(torch, req.dtype))
        trainable = apply_method(model, req.arch, req.method)
    # every name a state dict has: a tied output embedding too (its shard is gathered like its twin)
    named = trainable.model.named_parameters(remove_duplicate=False)
    return {name: tuple(param.shape) for name, param in named}


# --- parity only: the same LoRA start on both sides (matrix choice `parity_adapter_start`) -----

@torch.no_grad()
def same_adapter_start(placed: Placed, seed: int) -> list[str]:
    """Write the same initial values into every LoRA A that peft built, here and on one device.

    peft initialises a sharded adapter per rank, so the same seed gives another start than on
    one device. Each A gets values drawn from a generator seeded by its name with peft's default
    init (kaiming uniform, a = sqrt(5)) at its one-device shape, written into the tensor peft built
    on peft's placement (a DTensor's shard, or this rank's split of a plain tensor). B stays
    peft's zeros. Nothing is reshaped: an adapter whose one-device shape cannot be written into
    what peft built is left alone and named in the returned list.
    """
    from torch.distributed.tensor import distribute_tensor

    skipped = []
    for name, param in placed.model.named_parameters():
        if ".lora_A." not in name or param.ndim != 2:
            continue
        want = tuple((placed.global_shapes or {}).get(name, param.shape))
        full = torch.empty(want, dtype=torch.float32)
        generator = torch.Generator().manual_seed(seed + zlib.crc32(name.encode()))
        torch.nn.init.kaiming_uniform_(full, a=math.sqrt(5), generator=generator)
        mesh = getattr(param, "device_mesh", None)
        local = param.to_local() if mesh is not None else param.data
        if mesh is not None:
            if tuple(param.shape) != want:
                skipped.append(f"{name}: {tuple(param.shape)} where one device has {want}")
                continue
            value = distribute_tensor(full.to(local.device), mesh, param.placements,
                                      src_data_rank=None).to_local()
        else:
            try:
                value = split_of(full, tuple(local.shape), placed.shard_group)
            except (IndexError, RuntimeError):
                value = None
            if value is None or tuple(value.shape) != tuple(local.shape):
                skipped.append(f"{name}: {tuple(local.shape)} where one device has {want}")
                continue
        if tuple(value.shape) != tuple(local.shape):
            skipped.append(f"{name}: local {tuple(local.shape)}, its share of {want} is {tuple(value.shape)}")
            continue
        local.copy_(value.to(local.dtype))
    return skipped
