"""Layouts on CPU (gloo) through the rank pool: what parity sees, and what the layout code reads.

The matrix cells themselves (`train` and `parity` of Llama, Qwen3 and Qwen3-MoE under every
layout) run in `make test`'s layout slice through the plugin. These tests check the pieces
those cells rest on:
- planted bugs: a comparison of the loss curve and the total gradient norm (the old parity)
  misses a gradient off by 0.1% on one rank and a replicated parameter whose gradient is never
  averaged; comparing every parameter's gradient catches both and names the parameter;
- the loss is the global mean over label tokens, whatever each rank's share of them;
- plain-tensor shards (releases whose TP keeps local tensors) are read back whole;
- which documented call a layout runs, and categories for what cannot run.
"""

from __future__ import annotations

import os

import pytest
import torch

from harness.failures import CellFailure
from harness.run.pool import get_pool
from harness.run.ranks import PoolTaskError
from harness.spec.cells import Cell
from harness.spec.load import load_matrix
from harness.spec.matrix import Api, Layout
from harness.stacks.native.placement import choose_api

DEVICE = os.environ.get("COMPAT_HARNESS_TEST_DEVICE", "cpu")
MATRIX = load_matrix()
TASKS = "tests.layout_tasks"


def _run(world_size: int, task: str, payload: dict, timeout_s: float = 180):
    """Run a task on the pool; the cell's tiny checkpoint is built here first, as the runner does."""
    from harness.ckpt.tiny import tiny_checkpoint
    from harness.run.hardware import missing_devices

    if reason := missing_devices(DEVICE, world_size):
        pytest.skip(reason)
    if "arch" in payload:
        payload = {**payload, "path": str(tiny_checkpoint(MATRIX.architectures[payload["arch"]], MATRIX))}
    return get_pool(world_size, DEVICE).run(f"{TASKS}:{task}", payload, timeout_s)


def test_planted_scaled_gradient_is_caught_by_name():
    """Rank 1's shard of one norm weight's gradient x (1 + 1e-3): AdamW divides the scale out."""
    target = "model.layers.0.input_layernorm.weight"
    out = _run(2, "planted_parity", {"arch": "LlamaForCausalLM", "method": "sft", "layout": "fsdp2",
                                     "bug": "scale", "target": target})[0]
    assert out["old_problems"] == [], "the loss and total-norm comparison should miss this bug"
    assert out["flagged"] == [target]
    assert target in out["new_problems"][0] and "largest gradient" in out["new_problems"][0]


def test_planted_unreduced_replica_is_caught_by_name():
    """LoRA added after transformers' FSDP2 at load: one adapter's gradient is never averaged.

    At LoRA's usual learning rate of 1e-4 the loss curve and the total norm stay within 1e-5 of
    one device; the adapter's own gradient (and that of its B, which it feeds) does not.
    """
    target = "base_model.model.model.layers.1.self_attn.q_proj.lora_A.default.weight"
    out = _run(2, "planted_parity", {"arch": "LlamaForCausalLM", "method": "lora", "layout": "fsdp2",
                                     "variant": "distributed_config_fsdp", "bug": "unreduced",
                                     "target": target, "lr": 1e-4})[0]
    assert out["old_problems"] == [], "the loss and total-norm comparison should miss this bug"
    assert target in out["flagged"] and len(out["flagged"]) <= 2, out["flagged"]
    assert target in out["new_problems"][0]


def test_no_bug_no_problem():
    out = _run(2, "planted_parity", {"arch": "LlamaForCausalLM", "method": "lora", "layout": "fsdp2"})[0]
    assert out["old_problems"] == [] and out["new_problems"] == []


def test_loss_is_the_global_token_mean():
    """Rank 0's half of the batch has 3 label tokens, rank 1's 31 (answers of unequal length)."""
    ids = torch.arange(1, 65).reshape(2, 32) % 500 + 1
    labels = ids.clone()
    labels[0, :29] = -100
    out = _run(2, "planted_parity", {"arch": "LlamaForCausalLM", "method": "sft", "layout": "fsdp2",
                                     "batches": [{"input_ids": ids, "labels": labels}]})[0]
    assert out["losses"][0] == pytest.approx(out["reference_losses"][0], rel=1e-6)
    assert out["old_problems"] == [] and out["new_problems"] == []


def test_plain_shards_read_back_whole():
    out = _run(2, "plain_shards", {})
    assert all(all(rank.values()) for rank in out), out


def test_record_names_the_call_and_the_kernel():
    rank0 = _run(2, "place_only", {"arch": "Qwen3MoeForCausalLM", "method": "sft", "layout": "fsdp2",
                                   "variant": "experts_batched_mm"})[0]
    assert rank0["api"] == "fully_shard" and rank0["experts_implementation"] == "batched_mm"
    assert "fully_shard" in rank0["api_call"]


def test_no_tp_plan_is_a_category():
    with pytest.raises(PoolTaskError) as info:
        _run(2, "place_only", {"arch": "FalconForCausalLM", "method": "sft", "layout": "tp"}, 60)
    assert info.value.category == "no-tp-plan"
    assert "base_model_tp_plan" in info.value.message


def test_ep_needs_moe():
    with pytest.raises(PoolTaskError) as info:
        _run(2, "place_only", {"arch": "LlamaForCausalLM", "method": "sft", "layout": "ep"}, 60)
    assert info.value.category == "layout-unsupported"


def test_choose_api_offers_a_call_from_its_first_release_on():
    """A call is offered from `since` on, on every later release (no upper bound exists to hide a
    release that breaks it); before `since` a variant cell is a `not-offered` skip that names it."""
    import transformers
    from packaging.version import Version

    here = Version(transformers.__version__)
    later = f"{here.major}.{here.minor + 1}.0"
    apis = {"new": Api("new", "", "new()", since=later, needs=("ep_size",)),
            "now": Api("now", "", "now()", since=str(here)), "any": Api("any", "", "any()"),
            "old": Api("old", "", "old()", since="5.0.0")}
    layout = Layout("tp", "", 2, {"tp": 2}, apis=("new", "now", "any"))
    assert choose_api(apis, layout).name == "now", "the first call this release offers"
    assert choose_api(apis, layout, "any").name == "any", "a variant runs its own call"
    assert choose_api(apis, layout, "old").name == "old", "offered once, offered on every later release"
    with pytest.raises(CellFailure) as info:
        choose_api(apis, layout, "new")
    assert info.value.category == "not-offered" and "new()" in info.value.message
    assert f"introduced in {later}" in info.value.message and "ep_size" in info.value.message
    assert choose_api(apis, Layout("single", "", 1, {})) is None


def test_variant_cells_and_ids():
    cell = Cell("Qwen3MoeForCausalLM", "sft", "ep", "tiny", "parity", "", "experts_eager")
    assert cell.id == "Qwen3MoeForCausalLM-sft-ep-tiny-parity+experts_eager"
    from harness.spec.cells import expand

    ids = {c.id for c in expand(MATRIX)[0]}
    assert cell.id in ids
    assert "LlamaForCausalLM-sft-tp-tiny-train+tp_plan" in ids
    dense_kernels = [i for i in ids if i.startswith("LlamaForCausalLM") and "+experts_" in i]
    assert dense_kernels == [], "dense rows have no experts kernels"


def test_a_weight_moved_on_one_rank_moved_on_every_rank_without_a_gather():
    """The train check's evidence under a layout: each rank compares its own shard, and the ranks
    agree that a weight whose shard moved on rank 1 only moved, and one untouched did not."""
    assert _run(2, "shard_changes", {}) == [["moved"], ["moved"]]


def test_parity_compares_gradients_shard_by_shard_where_torch_cannot_gather_them():
    """Each rank compares its own `_StridedShard` piece with the same piece of the one-device
    gradient: a difference in one element, held by one rank, reaches rank 0's comparison."""
    assert _run(2, "strided_shard_parity", {"off": 0.5}) == [[("weight", 0.5)], []]
    assert _run(2, "strided_shard_parity", {"off": 0.0}) == [[("weight", 0.0)], []]
