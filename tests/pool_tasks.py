"""Task functions for tests/test_pool.py; the spawned pool workers import them by name."""

from __future__ import annotations

import os
import time

from harness.failures import CellFailure


def all_reduce_rank(payload: dict, ctx) -> dict:
    import torch
    import torch.distributed as dist

    value = torch.tensor([float(ctx.rank)], device=ctx.device)
    dist.all_reduce(value)
    mesh = ctx.mesh({"dp_shard": ctx.world_size})
    return {"rank": ctx.rank, "world_size": ctx.world_size, "sum": float(value),
            "backend": ctx.backend, "pid": os.getpid(), "mesh_id": id(mesh)}


def raise_on_rank(payload: dict, ctx) -> int:
    if ctx.rank == payload["rank"]:
        if payload.get("category"):
            raise CellFailure(payload["category"], f"declared failure on rank {ctx.rank}")
        raise ValueError(f"boom on rank {ctx.rank}")
    if payload.get("collective"):  # the other ranks wait in a collective the failed rank never joins
        import torch
        import torch.distributed as dist

        dist.all_reduce(torch.ones(1, device=ctx.device))
    return ctx.rank


def die_on_rank(payload: dict, ctx) -> int:
    if ctx.rank == payload["rank"]:
        os._exit(payload.get("code", 3))
    time.sleep(payload.get("others_sleep_s", 0))
    return ctx.rank


def sleep(payload: dict, ctx) -> int:
    time.sleep(payload["seconds"])
    return ctx.rank


def rank_task_with_faults(payload: dict, ctx):
    """harness.run.runner.rank_task, except for the cells a test marks: rank 1 dies or hangs there."""
    from harness.run.runner import rank_task

    cell = payload["cell"]
    fault = {"crash": ("lora", "train"), "hang": ("sft", "parity")}
    if ctx.rank == 1 and (cell["method"], cell["check"]) == fault["crash"]:
        os._exit(7)
    if ctx.rank == 1 and (cell["method"], cell["check"]) == fault["hang"]:
        time.sleep(600)
    return rank_task(payload, ctx)
