"""Pool tasks for the layout tests: the harness's own pieces on real tiny models, driven step by step.

Each task runs on every rank of a gloo pool. They build a CellRun for a matrix cell (the same
object the plugin's cells use), so what they exercise is the harness's code path, with one
thing changed where a test plants a bug.
"""

from __future__ import annotations


def _cell_run(payload: dict, ctx):
    import dataclasses
    from pathlib import Path

    from harness.cellrun import CellRun
    from harness.ckpt.tiny import tiny_checkpoint
    from harness.spec.cells import Cell
    from harness.spec.load import load_matrix

    matrix = load_matrix()
    if "lr" in payload:  # a run at another learning rate (e.g. LoRA's common 1e-4)
        method = dataclasses.replace(matrix.methods[payload["method"]], lr=payload["lr"])
        matrix = dataclasses.replace(matrix, methods={**matrix.methods, method.name: method})
    cell = Cell(payload["arch"], payload["method"], payload["layout"], "tiny", payload.get("check", "parity"),
                "", payload.get("variant", ""))
    arch = matrix.architectures[cell.architecture]
    return CellRun(matrix, cell, ctx.device_type, rank=ctx.rank, world_size=ctx.world_size, ctx=ctx,
                   checkpoint_path=Path(payload.get("path") or tiny_checkpoint(arch, matrix)))


def _average_outside_fsdp_except(model, dp, skipped: str) -> list[str]:
    """What the matrix choice `replicas_outside_fsdp` does, for every parameter but `skipped`."""
    import torch.distributed as dist

    from harness.stacks.native.placement import _outside_data_parallel

    hooked = []
    for name, param in model.named_parameters():
        if not param.requires_grad or not _outside_data_parallel(param) or name == skipped:
            continue

        def average(p, group=dp.group, size=dp.size):
            dist.all_reduce(p.grad, group=group)
            p.grad.div_(size)

        param.register_post_accumulate_grad_hook(average)
        hooked.append(name)
    return hooked


def planted_parity(payload: dict, ctx) -> dict:
    """Parity of a cell, step by step as checks/parity.py runs it, with one bug planted.

    payload["bug"]:
    - "scale": rank 1 multiplies its shard of `target`'s gradient by 1 + 1e-3 at every step;
    - "unreduced": `target` is a trainable parameter that no FSDP module owns, and its gradient
      is left as this rank's own (every other such parameter is averaged over the dp ranks);
    - None: no bug.
    Rank 0 returns the old comparison's verdict (loss curve and total gradient norm only) and the
    new one's (every parameter's gradient), each as the list of problems it found.
    """
    from harness.checks.parity import compare_curves, compare_grads, describe
    from harness.stacks.native.placement import Request, place, same_adapter_start
    from harness.stacks.placed import grad_or_zeros
    from harness.stacks.result import run_to_end

    cr = _cell_run(payload, ctx)
    bug, target = payload.get("bug"), payload.get("target")
    request = Request(cr.arch, cr.method, cr.layout, cr.checkpoint, "float32", ctx, device=str(ctx.device),
                      replicas="leave" if bug == "unreduced" else "average_gradients")
    layout = place(request, cr.api(cr.layout))
    if bug == "unreduced":
        _average_outside_fsdp_except(layout.model, layout.dp, target)
    if cr.method.is_lora:
        same_adapter_start(layout, 0)
    reference = cr.place(cr.one_device_layout) if cr.is_main else None
    if reference is not None and cr.method.is_lora:
        same_adapter_start(reference, 0)
    params = dict(layout.model.named_parameters())
    assert target is None or target in params, sorted(params)
    batches = payload.get("batches") or cr.batches()
    layout_steps = cr.steps(layout, batches)
    reference_steps = cr.steps(reference, batches) if reference is not None else None
    compared = []
    while True:
        try:
            step = next(layout_steps)
        except StopIteration as stop:
            result = stop.value
            break
        if bug == "scale" and ctx.rank == 1:
            grad = params[target].grad
            (grad.to_local() if hasattr(grad, "to_local") else grad).mul_(1 + 1e-3)
        grads = layout.global_grads()
        if reference_steps is not None:
            next(reference_steps)
            want = {n: grad_or_zeros(p).detach().float().cpu() for n, p in reference.model.named_parameters()
                    if p.requires_grad}
            compared += compare_grads(step, grads, want, cr.tolerance)
    if reference_steps is None:
        return {"losses": result.losses}
    reference_result = run_to_end(reference_steps)
    old, _ = compare_curves(cr.layout.name, result, reference_result, cr.tolerance)
    over = [c for c in compared if not c[0] <= 1.0]
    return {"losses": result.losses, "reference_losses": reference_result.losses,
            "old_problems": old, "new_problems": [describe(over, cr.layout.name, cr.tolerance, len(batches))]
            if over else [], "flagged": sorted({c[1] for c in over}), "outside_fsdp": layout.notes}


def fsdp2_dcp_save(payload: dict, ctx) -> list[str]:
    """Every rank saves its FSDP2 shards of tiny Llama into one DCP checkpoint at payload["target"].

    With payload["fail_rank"], that rank raises after writing its shards, before the rename.
    """
    from pathlib import Path

    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    from harness.ckpt.atomic import collective_atomic_directory

    cr = _cell_run({"arch": "LlamaForCausalLM", "method": "sft", "layout": "fsdp2"}, ctx)
    placed = cr.place()
    with collective_atomic_directory(payload["target"]) as staging:
        dcp.save(get_model_state_dict(placed.model), checkpoint_id=str(staging))
        if payload.get("fail_rank") == ctx.rank:
            raise OSError(f"rank {ctx.rank}: disk full after writing its shards")
    return sorted(p.name for p in Path(payload["target"]).iterdir())


def place_only(payload: dict, ctx) -> dict:
    """Place a cell's model by its layout's call and return what the record would say."""
    cr = _cell_run(payload, ctx)
    return cr.place().record


def plain_shards(payload: dict, ctx) -> dict:
    """Split known tensors the way a plain-tensor TP release does, then read them back whole."""
    import torch

    from harness.stacks.placed import gather_plain_shard, split_of

    full = torch.arange(4 * 6, dtype=torch.float32).reshape(4, 6)
    rows = full.chunk(ctx.world_size, 0)[ctx.rank]  # colwise: out features split
    cols = full.chunk(ctx.world_size, 1)[ctx.rank]  # rowwise: in features split
    gate, up = full.chunk(2, 0)  # packed: gate and up each split, then fused per rank
    packed = torch.cat([gate.chunk(ctx.world_size, 0)[ctx.rank], up.chunk(ctx.world_size, 0)[ctx.rank]])
    return {
        "rows": torch.equal(gather_plain_shard(rows, (4, 6), None, packed=False), full),
        "cols": torch.equal(gather_plain_shard(cols, (4, 6), None, packed=False), full),
        "packed": torch.equal(gather_plain_shard(packed, (4, 6), None, packed=True), full),
        "split_of_cols": torch.equal(split_of(full, tuple(cols.shape), None), cols),
    }


def planted_ddp_claims_fsdp2(payload: dict, ctx) -> dict:
    """A stack that says it applied FSDP2 but trains under DistributedDataParallel (what a probe of
    TRL + Accelerate on gloo ranks found), run through the real `train` check on every rank.

    The planted stack is the native one with one change: its placement loads the model on this
    rank and wraps it in torch's DDP, and still reports the layout as fsdp2. Returns the
    category and message the check ended with (None when it passed), and what the unplanted native
    stack's proof recorded for the same cell.
    """
    import dataclasses

    from torch.nn.parallel import DistributedDataParallel

    from harness.checks import train
    from harness.failures import CellFailure
    from harness.stacks.native.stack import NativeStack

    class ClaimsFsdp2RunsDdp(NativeStack):
        def place(self, request):
            one_device = dataclasses.replace(request, layout=next(
                lay for lay in cr.matrix.layouts.values() if lay.world_size == 1), ctx=None)
            placed = super().place(one_device)
            placed.wrapper = DistributedDataParallel(placed.model)
            placed.kind, placed.notes = "fsdp2", ["fully_shard per decoder layer + root"]
            return placed

    cr = _cell_run({**payload, "check": "train"}, ctx)
    native_proof = cr.place().proof
    cr.__dict__["stack"] = ClaimsFsdp2RunsDdp()
    try:
        train.run(cr)
    except CellFailure as failure:
        return {"category": failure.category, "message": failure.message, "native_proof": native_proof}
    return {"category": None, "message": "", "native_proof": native_proof}


def shard_changes(payload, ctx):
    """Two weights sharded over the ranks (DTensor, Shard(0)); only rank 1's shard of `moved`
    changes. What the train check decides from each rank's own shard (no gather)."""
    import torch
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Shard, distribute_tensor

    from harness.checks.train import changed_on_any_rank

    mesh = init_device_mesh(ctx.device_type, (ctx.world_size,))
    full = torch.arange(8.0).reshape(4, 2)
    before = {name: distribute_tensor(full, mesh, [Shard(0)]) for name in ("moved", "still")}
    after = {}
    for name, weight in before.items():
        local = weight.to_local().clone()
        if name == "moved" and ctx.rank == 1:
            local += 1.0
        after[name] = DTensor.from_local(local, mesh, [Shard(0)], run_check=False)
    return changed_on_any_rank(before, after, ["moved", "still"])


def strided_shard_parity(payload, ctx):
    """A weight laid out as transformers lays out packed experts (`_StridedShard`), its gradient
    set; the one-device gradient differs from it by `payload["off"]` in one element. What the
    parity check measures shard by shard, against what the whole gradients say."""
    import torch
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import distribute_tensor
    from torch.distributed.tensor.placement_types import _StridedShard

    from harness.checks.parity import shard_comparison
    from harness.stacks.placed import Placed, Trainable

    mesh = init_device_mesh(ctx.device_type, (ctx.world_size,))
    placements = [_StridedShard(0, split_factor=2)]
    full = torch.arange(32.0).reshape(8, 4) / 10
    model = torch.nn.Linear(4, 8, bias=False)
    zeros = distribute_tensor(torch.zeros(8, 4), mesh, placements, src_data_rank=None)
    model.weight = torch.nn.Parameter(zeros)
    model.weight.grad = distribute_tensor(full, mesh, placements, src_data_rank=None)
    want = full.clone()
    want[5, 3] += payload["off"]
    placed = Placed(model, Trainable(model, ["weight"], []), "tp")
    over = shard_comparison(placed, {"weight": want} if ctx.rank == 0 else None, 0,
                            {"rtol": 0.0, "atol": 1e-6})
    return [(name, round(diff, 6)) for _, name, _, diff, _ in over]
