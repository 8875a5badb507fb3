"""Where a parallel layout is applied: mesh, sharding, LoRA placement, the batch split, the loss.

A layout is matrix data (matrix/axes.toml): a world size and named mesh dims. `place()` turns
(architecture, method, layout, checkpoint) into a model ready for `train.train_steps` on this
rank, together with the slice of the global batch this rank owns and a `reduce_loss` that
averages over the data-parallel ranks, so that every layout reports the global loss curve:

- single   {}                 from_pretrained, then the method (SFT or LoRA).
- fsdp2    {dp_shard = N}     from_pretrained, the method (LoRA before sharding, so the
                              adapters are sharded with their layer), then `fully_shard` on
                              every decoder layer (the classes named by the model's
                              `_no_split_modules`) and on the root.
- tp       {tp = N}           from_pretrained with transformers' own TP plan (or the row's
                              `tp_plan` table), then the method (TP shards at load, so LoRA
                              comes after: peft shards the adapters of sharded layers
                              itself). The optimizer needs `param_groups()` (below).
- fsdp2_tp {dp_shard, tp}     as tp on the `tp` dim, then FSDP2 on the `dp_shard` dim.
- ep       {ep = N}           transformers' expert parallelism, where the installed version
                              has it (see below); a MoE model only.

Three transformers APIs (decided by feature, not by version number):
- transformers < 5.13 takes `tp_plan`, `tp_size` and `device_mesh` as from_pretrained's own
  arguments (DistributedConfig holds only `enable_expert_parallel`); otherwise as below.
- transformers <= 5.17 takes our mesh: `from_pretrained(distributed_config=DistributedConfig(
  tp_plan, tp_size, fsdp_size), device_mesh=mesh)` applies TP on `mesh["tp"]` only, and FSDP2
  is ours. EP is `DistributedConfig(tp_size=N, enable_expert_parallel=True)`: the model's
  `base_model_ep_plan` over the TP ranks, which all see the same batch (dp = 1).
- newer transformers (DistributedConfig has `ep_size`) builds its own mesh (pp, dp_replicate,
  fsdp, tp) from DistributedConfig and ignores `device_mesh`. TP over a subset of the ranks
  exists only together with its own FSDP2, so fsdp2_tp is `DistributedConfig(tp_size,
  fsdp_size)`: TP then FSDP2, both applied by transformers at load, and EP is
  `DistributedConfig(ep_size=N, fsdp_size=N)` (token dispatch, every rank its own batch).
  LoRA is then added to an already sharded model; its adapters stay outside FSDP, so they are
  broadcast from rank 0 and their gradients averaged over the data-parallel ranks here.
  Ranks are laid out row-major over (dp_shard, tp) exactly as transformers lays out (fsdp, tp),
  so our `dp_shard` groups are its `fsdp` groups.

The optimizer fix (TP layouts). Transformers' TP turns the sharded weights into DTensors and
leaves the rest as plain tensors: RMSNorm weights, and Qwen3's q_norm/k_norm on purpose (style
`replicated_with_grad_allreduce`: plain weights whose gradients transformers all-reduces
itself). One optimizer group holding both breaks the foreach kernels, the default AdamW on GPU:
"aten._foreach_mul_.Scalar: got mixed torch.Tensor and DTensor" (reproduced here on CPU with
foreach=True). Switching foreach off would hide that from the cells; turning every plain
parameter into a Replicate DTensor (torchtitan's way) is wrong for transformers' own plain
parameters: its gradient hooks then call all_reduce on a DTensor ("c10d.allreduce_ has no
sharding strategy", seen on Qwen3). So the layout leaves the model as transformers built it
and `param_groups()` gives the optimizer one group per tensor kind (plain, or DTensor per mesh
and placements), as real trainers already do when they split decay from no-decay parameters.
With it the default foreach AdamW steps every layout, and the parity checks show unchanged
numbers. A failure of the stack itself (peft or transformers raising under a layout) is
raised, never caught here.

LoRA parity. peft initialises a sharded adapter per rank on the shard's shape, so equal seeds
give different starts on one device and under TP; `reset_adapters` draws every A whole from a
per-name generator so that parity compares the same run.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from harness.failures import CellFailure
from harness.matrix import Architecture, Layout, Method
from harness.methods import Trainable, apply_method

LAYOUT_KINDS = ("single", "fsdp2", "tp", "fsdp2_tp", "ep")


@dataclass
class Placed:
    """A model placed on this rank under a layout, and how to feed it and read its loss."""

    model: torch.nn.Module
    trainable: Trainable
    kind: str
    dp_rank: int = 0
    dp_size: int = 1
    dp_group: object = None
    notes: list[str] = dataclasses.field(default_factory=list)

    def local_batch(self, batch: dict) -> dict:
        """This data-parallel rank's contiguous slice of the global batch."""
        size = batch["input_ids"].shape[0]
        if size % self.dp_size:
            raise CellFailure("error", f"global batch {size} does not split over {self.dp_size} dp ranks")
        per = size // self.dp_size
        return {k: v[self.dp_rank * per:(self.dp_rank + 1) * per] for k, v in batch.items()}

    def reduce_loss(self, loss: torch.Tensor) -> torch.Tensor:
        """The global loss: every dp rank has the same number of tokens, so average the means."""
        if hasattr(loss, "full_tensor"):
            loss = loss.full_tensor()
        if self.dp_size == 1:
            return loss
        import torch.distributed as dist

        total = loss.detach().clone()
        dist.all_reduce(total, group=self.dp_group)
        return total / self.dp_size


# --- what kind of layout, and what this transformers can do ----------------------------------

def layout_kind(layout: Layout) -> str:
    mesh = {k: v for k, v in layout.mesh.items() if v > 1}
    if not mesh:
        return "single"
    if set(mesh) == {"dp_shard"}:
        return "fsdp2"
    if set(mesh) == {"tp"}:
        return "tp"
    if set(mesh) == {"dp_shard", "tp"}:
        return "fsdp2_tp"
    if set(mesh) == {"ep"}:
        return "ep"
    raise CellFailure("layout-unsupported", f"layout {layout.name}: no way to apply mesh {layout.mesh}")


def transformers_owns_mesh() -> bool:
    """Newer transformers build the device mesh from DistributedConfig themselves (and have EP sizes)."""
    from transformers.distributed import DistributedConfig

    return "ep_size" in DistributedConfig.__dataclass_fields__


def _distributed_config(**kwargs) -> dict:
    """from_pretrained's distributed keyword arguments, in the form this transformers takes.

    Since 5.13 they go in one DistributedConfig(tp_plan, tp_size, fsdp_size, ...). Before, a
    DistributedConfig held only `enable_expert_parallel`, and `tp_plan`/`tp_size` were
    from_pretrained's own arguments; FSDP2 was never transformers' there (the harness applies it).
    """
    from transformers.distributed import DistributedConfig

    fields = DistributedConfig.__dataclass_fields__
    if "tp_plan" in fields:
        return {"distributed_config": DistributedConfig(**kwargs)}
    out = {name: kwargs[name] for name in ("tp_plan", "tp_size") if name in kwargs}
    if kwargs.get("enable_expert_parallel"):
        out["distributed_config"] = DistributedConfig(enable_expert_parallel=True)
        out.setdefault("tp_plan", "auto")
    return out


def tp_plan(arch: Architecture) -> dict | str:
    """The row's own `tp_plan` table, else "auto" (the model's plan), else no-tp-plan."""
    from harness.tiny import config_class

    if arch.tp_plan:
        return dict(arch.tp_plan)
    if not getattr(config_class(arch), "base_model_tp_plan", None):
        import transformers

        raise CellFailure(
            "no-tp-plan",
            f"{arch.name} has no base_model_tp_plan in transformers {transformers.__version__}; "
            f"give the row a tp_plan table in {arch.source_file} to run tensor parallel",
        )
    return "auto"


def _tp_note(plan: dict | str) -> str:
    return f"TP plan {plan if isinstance(plan, str) else 'from the matrix row'}"


def check_tp_divides_heads(path, tp: int) -> None:
    """The checkpoint's own head counts must split over the TP ranks.

    The matrix prunes cells by the tiny config's heads at collection; a real checkpoint has its
    own (SmolLM2-135M: 9 heads, 3 KV heads), known only once it is on disk.
    """
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    for key in ("num_attention_heads", "num_key_value_heads"):
        heads = getattr(text, key, None)
        if isinstance(heads, int) and heads % tp:
            raise CellFailure("layout-unsupported", f"tensor parallel over {tp} ranks does not divide "
                                                    f"{key} = {heads} of the checkpoint at {path}")


def _has_ep_plan(arch: Architecture) -> bool:
    from harness.tiny import config_class

    return bool(getattr(config_class(arch), "base_model_ep_plan", None))


# --- FSDP2 --------------------------------------------------------------------------------------

def _base_model(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def decoder_layers(model) -> list[torch.nn.Module]:
    """The modules FSDP2 wraps one by one: instances of the model's `_no_split_modules` classes."""
    names = set(getattr(_base_model(model), "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise CellFailure(
            "layout-unsupported",
            f"{type(_base_model(model)).__name__}: no module of its _no_split_modules {sorted(names)} "
            "found, so there is no decoder layer to shard",
        )
    return layers


def apply_fsdp2(model, dp_mesh) -> None:
    from torch.distributed.fsdp import fully_shard

    for layer in decoder_layers(model):
        fully_shard(layer, mesh=dp_mesh)
    fully_shard(model, mesh=dp_mesh)


# --- the optimizer fix for TP (see the module docstring) --------------------------------------

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


# --- adapters outside FSDP (newer transformers shard at load, LoRA comes after) ---------------

DATA_PARALLEL_DIMS = frozenset({"dp_shard", "fsdp", "efsdp", "dp_replicate"})


def _outside_data_parallel(param) -> bool:
    """Not sharded over a data-parallel mesh dim: a plain tensor, or a DTensor on TP/EP dims only."""
    mesh = getattr(param, "device_mesh", None)
    return mesh is None or not DATA_PARALLEL_DIMS & set(mesh.mesh_dim_names or ())


def replicate_outside_params(model, dp_group) -> list[str]:
    """Trainable parameters FSDP does not own: same start on every dp rank, gradients averaged.

    Plain ones are broadcast from the group's first rank; TP-sharded adapters (DTensors on the
    tp dim only) already start equal, drawn whole by `reset_adapters`, so each rank's shard
    agrees with its dp peers. Either way the gradient (its local shard) is averaged here.
    """
    import torch.distributed as dist

    names = []
    size = dist.get_world_size(dp_group)
    src = dist.get_global_rank(dp_group, 0)
    for name, param in model.named_parameters():
        if not param.requires_grad or not _outside_data_parallel(param):
            continue
        if getattr(param, "device_mesh", None) is None:
            dist.broadcast(param.data, src=src, group=dp_group)

        def average(p, group=dp_group, size=size):
            grad = p.grad.to_local() if hasattr(p.grad, "to_local") else p.grad
            dist.all_reduce(grad, group=group)
            grad.div_(size)

        param.register_post_accumulate_grad_hook(average)
        names.append(name)
    return names


# --- placing a model -----------------------------------------------------------------------------

def _load_plain(arch, path, dtype, device):
    from harness.models import load_model

    return load_model(arch, path, dtype, str(device))


def _load_distributed(arch, path, dtype, distributed_kwargs: dict, device_mesh=None):
    import warnings

    from harness.tiny import auto_model_class

    kwargs = {"dtype": getattr(torch, dtype), **distributed_kwargs}
    if device_mesh is not None:
        kwargs["device_mesh"] = device_mesh
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return auto_model_class(arch).from_pretrained(path, trust_remote_code=False, **kwargs)


def _method(model, arch, method, seed, notes: list[str] | None = None):
    torch.manual_seed(seed)
    trainable = apply_method(model, arch, method)
    if method.is_lora:
        repaired = reset_adapters(trainable.model, seed)
        if repaired and notes is not None:
            notes.append(f"rebuilt {len(repaired)} LoRA adapters that peft sized from a sharded base "
                         f"layer's local shape, e.g. {repaired[0]}")
    return trainable


def _sharded_base_shape(lora_layer) -> tuple[int, int] | None:
    """The global (out, in) of a LoRA layer's base Linear when that base is sharded, else None.

    A sharded base weight is a DTensor, whose shape is global (TP and FSDP shard nn.Linear as
    (out, in)); an unsharded base leaves peft's adapter shapes as they are, which also covers
    bases stored transposed (GPT-2's Conv1D) and fused 3-D experts (peft's ParamWrapper).
    """
    weight = getattr(lora_layer.get_base_layer(), "weight", None)
    if getattr(weight, "device_mesh", None) is not None and weight.ndim == 2:
        return tuple(weight.shape)
    return None


@torch.no_grad()
def reset_adapters(model, seed: int) -> list[str]:
    """Give every LoRA adapter the same start under every layout, at its global shape.

    Same start: peft initialises a sharded adapter per rank, on the shard's shape, so the same
    seed gives a different (equally valid) start under TP than on one device, and parity would
    compare different runs. Each A is drawn whole, from a generator seeded by its name, with
    peft's default init (kaiming uniform, a = sqrt(5)); each B is zero, as peft makes it.

    Global shape: A is (r, in) and B is (out, r) of the base layer's global weight. A sharded
    adapter is rebuilt with `distribute_tensor` on the mesh and placements peft chose. On this
    stack (peft 0.21.2, transformers 5.23) peft sizes adapters from the base layer's *local*
    weight, which is wrong when the base layer is sharded:
    - under tp, o_proj's lora_A is (r, 64) as a DTensor but its Linear says in_features=32, and
      transformers' RowwiseParallel reads `in_features` as the global width: "shape '[64, 16]'
      is invalid for input of size 2048";
    - under fsdp2_tp (TP and FSDP2 both applied at load) the local weight is split twice, so
      q_proj's lora_B holds 16 rows where Shard(0) over 2 TP ranks means 32, and o_proj's plain
      lora_B has 32 outputs for a 64-wide result.
    Nothing else about the adapters changes: same modules, placements and forward. Returns the
    names of the adapters whose shape or in/out_features peft had wrong, for the cell's notes;
    tests/test_parallel.py keeps showing peft's own failure, so this goes when the stack is fixed.
    """
    import math
    import zlib

    from torch.distributed.tensor import distribute_tensor

    repaired = []
    for layer_name, layer in model.named_modules():
        if not (hasattr(layer, "lora_A") and hasattr(layer, "get_base_layer")):
            continue
        base_shape = _sharded_base_shape(layer)
        for part, table in (("lora_A", layer.lora_A), ("lora_B", layer.lora_B)):
            for adapter, linear in table.items():
                name = f"{layer_name}.{part}.{adapter}"
                param = linear.weight
                want = tuple(param.shape)
                if base_shape is not None:
                    out_features, in_features = base_shape
                    rank = layer.r[adapter]
                    want = (rank, in_features) if part == "lora_A" else (out_features, rank)
                full = torch.zeros(want, dtype=param.dtype)
                if part == "lora_A":
                    generator = torch.Generator().manual_seed(seed + zlib.crc32(f"{name}.weight".encode()))
                    torch.nn.init.kaiming_uniform_(full, a=math.sqrt(5), generator=generator)
                mesh = getattr(param, "device_mesh", None)
                if mesh is None:
                    value = full.to(param.device)
                    wrong = tuple(param.shape) != want
                else:
                    local = param.to_local()
                    value = distribute_tensor(full.to(local.device), mesh, param.placements,
                                              src_data_rank=None)
                    wrong = value.to_local().shape != local.shape
                wrong = wrong or (linear.out_features, linear.in_features) != want
                linear.weight = torch.nn.Parameter(value, requires_grad=param.requires_grad)
                linear.out_features, linear.in_features = want
                if wrong:
                    repaired.append(name)
    return repaired


def place(arch: Architecture, method: Method, layout: Layout, path, dtype: str, ctx=None,
          seed: int = 0, device: str = "cpu") -> Placed:
    """Load the checkpoint at `path` and apply `method` and `layout` on this rank.

    ctx is the pool's RankContext; without one (layout single, in the calling process) the
    model goes to `device`.
    """
    kind = layout_kind(layout)
    torch.manual_seed(seed)
    if kind == "single":
        device = ctx.device if ctx else device
        trainable = _method(_load_plain(arch, path, dtype, device), arch, method, seed)
        return Placed(trainable.model, trainable, kind)
    if ctx is None or ctx.world_size != layout.world_size:
        have = ctx.world_size if ctx else 1
        raise CellFailure("error", f"layout {layout.name} needs {layout.world_size} ranks, got {have}")
    dims = dict(layout.mesh)
    mesh = ctx.mesh(dims)
    new_api = transformers_owns_mesh()

    if kind == "fsdp2":
        trainable = _method(_load_plain(arch, path, dtype, ctx.device), arch, method, seed)
        apply_fsdp2(trainable.model, mesh)
        return Placed(trainable.model, trainable, kind, mesh.get_local_rank("dp_shard"), dims["dp_shard"],
                      mesh.get_group("dp_shard"), ["fully_shard per decoder layer + root"])

    if kind in ("tp", "fsdp2_tp"):
        check_tp_divides_heads(path, dims["tp"])
    if kind == "tp" or (kind == "fsdp2_tp" and not new_api):
        plan = tp_plan(arch)
        dp = dims.get("dp_shard", 1)
        config = _distributed_config(tp_plan=plan, tp_size=dims["tp"], fsdp_size=dp)
        model = _load_distributed(arch, path, dtype, config, None if new_api else mesh)
        notes = [_tp_note(plan)]
        trainable = _method(model, arch, method, seed, notes)
        if kind == "tp":
            return Placed(trainable.model, trainable, kind, notes=notes)
        apply_fsdp2(trainable.model, mesh["dp_shard"])
        return Placed(trainable.model, trainable, kind, mesh.get_local_rank("dp_shard"), dp,
                      mesh.get_group("dp_shard"), [*notes, "fully_shard on dp_shard"])

    if kind == "fsdp2_tp":  # newer transformers: TP and FSDP2 both at load
        plan = tp_plan(arch)
        config = _distributed_config(tp_plan=plan, tp_size=dims["tp"], fsdp_size=dims["dp_shard"])
        notes = [_tp_note(plan)]
        trainable = _method(_load_distributed(arch, path, dtype, config), arch, method, seed, notes)
        group = mesh.get_group("dp_shard")
        outside = replicate_outside_params(trainable.model, group)
        return Placed(trainable.model, trainable, kind, mesh.get_local_rank("dp_shard"), dims["dp_shard"],
                      group, [*notes, f"transformers TP+FSDP2 at load; {len(outside)} params outside FSDP"])

    # kind == "ep"
    if not arch.moe:
        raise CellFailure("layout-unsupported", f"layout {layout.name} (expert parallel) needs a MoE model")
    if not _has_ep_plan(arch):
        import transformers

        raise CellFailure("layout-unsupported", f"{arch.name} has no base_model_ep_plan in "
                                                f"transformers {transformers.__version__}")
    ep = dims["ep"]
    if new_api:
        config = _distributed_config(ep_size=ep, fsdp_size=ep)
        notes = []
        trainable = _method(_load_distributed(arch, path, dtype, config), arch, method, seed, notes)
        group = mesh.get_group("ep")
        outside = replicate_outside_params(trainable.model, group)
        return Placed(trainable.model, trainable, kind, mesh.get_local_rank("ep"), ep, group,
                      [*notes, f"transformers EP (ep_size={ep}, fsdp_size={ep}); "
                                f"{len(outside)} params outside FSDP"])
    if not _supports_legacy_ep():
        import transformers

        raise CellFailure("layout-unsupported",
                          f"transformers {transformers.__version__} has no expert parallel support")
    config = _distributed_config(tp_size=ep, enable_expert_parallel=True)
    notes = [f"transformers EP over the TP ranks (enable_expert_parallel, {ep} ranks, dp 1)"]
    trainable = _method(_load_distributed(arch, path, dtype, config, mesh), arch, method, seed, notes)
    return Placed(trainable.model, trainable, kind, notes=notes)


def _supports_legacy_ep() -> bool:
    from transformers.distributed import DistributedConfig

    return "enable_expert_parallel" in DistributedConfig.__dataclass_fields__


# --- the pool task: the `train` check's measurements under a layout ---------------------------

def train_task(payload: dict, ctx=None) -> dict:
    """Place, train a few steps on the fixed global batch, and check what moved.

    payload: arch, method, layout (matrix dataclasses), path, dtype, steps, batch_size, seq_len,
    optionally seed, foreach (AdamW's foreach kernels, the GPU default) and device (for single).
    Every rank returns the same global numbers.
    """
    from harness.checks.train import assert_loss_falls, assert_updates, snapshot
    from harness.train import fixed_batch, train_steps

    arch, method, layout = payload["arch"], payload["method"], payload["layout"]
    placed = place(arch, method, layout, payload["path"], payload["dtype"], ctx, payload.get("seed", 0),
                   payload.get("device", "cpu"))
    model = placed.model
    before = snapshot(model)
    vocab = model.get_input_embeddings().num_embeddings
    batch = fixed_batch(vocab, payload["batch_size"], payload["seq_len"])
    optimizer = torch.optim.AdamW(param_groups(model), lr=method.lr, weight_decay=0.0,
                                  foreach=payload.get("foreach"))
    result = train_steps(model, placed.local_batch(batch), optimizer, payload["steps"], placed.reduce_loss)
    assert_loss_falls(result)
    counts = assert_updates(placed.trainable, before, snapshot(model), method.is_lora)
    return {
        "losses": result.losses,
        "grad_norms": result.grad_norms,
        "step_times_s": result.step_times_s,
        "layout_kind": placed.kind,
        "dp_size": placed.dp_size,
        "notes": placed.notes,
        "lora_modules": placed.trainable.lora_modules,
        **counts,
    }
