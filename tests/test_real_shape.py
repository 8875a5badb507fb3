"""The real-shape tier without a GPU: real configs at their published sizes on the meta device,
the MFU arithmetic, out-of-memory records from a genuine allocator failure, and claim verdicts."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from harness.cellrun import CellRun
from harness.checks import train as train_check
from harness.failures import CellFailure, classify
from harness.spec.cells import Cell, expand
from harness.spec.claims import FAILS, HOLDS, UNVERIFIED, evaluate
from harness.spec.load import load_matrix
from harness.spec.matrix import Claim, RealShape
from harness.stacks.native.realshape import (
    asked_bytes,
    find_gpu,
    flops_per_token,
    meta_model,
    mfu,
    oom_failure,
    param_counts,
)

GIB = 1 << 30
MATRIX = load_matrix()
TINY = {"vocab_size": 512, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "tie_word_embeddings": False}


@pytest.mark.parametrize("name", sorted(MATRIX.real_shapes))
def test_real_config_builds_on_meta_at_its_published_size(name):
    shape = MATRIX.real_shapes[name]
    model = meta_model(MATRIX.architectures[shape.architecture], shape)
    assert type(model).__name__ == MATRIX.architectures[shape.architecture].expected_class
    assert all(p.device.type == "meta" and p.dtype == torch.bfloat16 for p in model.parameters())
    counts = param_counts(model)
    assert counts.total == shape.expected_params
    assert counts.active <= counts.matmul <= counts.total + counts.embedding


def _counts(name: str):
    shape = MATRIX.real_shapes[name]
    return param_counts(meta_model(MATRIX.architectures[shape.architecture], shape))


def test_moe_active_parameters_count_top_k_of_the_experts():
    qwen, oss = _counts("Qwen3-30B-A3B"), _counts("gpt-oss-20b")
    # Published: Qwen3-30B-A3B activates 3.3 B parameters, gpt-oss-20b 3.6 B (both with embeddings).
    assert 2.9e9 < qwen.active < 3.5e9 and qwen.expert > 0.9 * qwen.total
    assert 3.0e9 < oss.active < 3.8e9
    llama = _counts("Llama-3.2-1B")
    assert llama.expert == 0 and llama.matmul == llama.total  # tied: the head is the embedding


def test_flops_and_mfu_arithmetic():
    counts = _counts("Llama-3.1-8B")
    assert counts.active == 8_030_261_248 - 128256 * 4096
    sft = flops_per_token(counts, n_attention=32, heads=32, head_dim=128, seq_len=2048, lora=False)
    assert sft == 6 * counts.active + 12 * 32 * 32 * 128 * 2048
    lora = flops_per_token(counts, n_attention=32, heads=32, head_dim=128, seq_len=2048, lora=True)
    assert sft - lora == 2 * counts.active
    assert mfu(10_000, 6e9, 1000.0) == pytest.approx(0.06)
    assert mfu(3_000, sft, 989.4) == pytest.approx(3_000 * sft / 989.4e12)


def test_peak_flops_come_from_the_device_name():
    assert find_gpu(MATRIX.gpus, "NVIDIA H100 80GB HBM3").bf16_tflops == 989.4
    assert find_gpu(MATRIX.gpus, "NVIDIA H100 PCIe").bf16_tflops == 756.0
    assert find_gpu(MATRIX.gpus, "NVIDIA H200").name == "H200"
    assert find_gpu(MATRIX.gpus, "cpu (x86_64, 2 cores)") is None


def test_a_genuine_cuda_oom_error_is_categorised_with_what_it_asked_for():
    exc = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.50 GiB. GPU 0 has a total "
                                 "capacity of 79.19 GiB of which 1.02 GiB is free.")
    assert classify(exc)[0] == "oom"
    failure = oom_failure(exc, {"planned_bytes": 96 * GIB}, 79 * GIB, "training")
    assert failure.category == "oom" and failure.metrics["asked_bytes"] == int(2.5 * GIB)
    assert "96.0 GiB" in failure.message and "2.50 GiB" in failure.message
    assert asked_bytes("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1024 bytes") == 1024


def _cell_run(shape_config: dict, method: str, claims=()) -> CellRun:
    shape = RealShape("tiny-llama", "LlamaForCausalLM", "tiny-org/tiny-llama", shape_config, 0)
    matrix = dataclasses.replace(MATRIX, real_shapes={"tiny-llama": shape},
                                 claims={c.name: c for c in claims})
    cell = Cell("LlamaForCausalLM", method, "single", "real-shape", "train", "tiny-llama")
    return CellRun(matrix, cell, "cpu")


def test_materialising_keeps_tied_embeddings_tied():
    from harness.stacks.native.realshape import materialise

    shape = RealShape("tied", "LlamaForCausalLM", "x/y", {**TINY, "tie_word_embeddings": True}, 0)
    model = materialise(meta_model(MATRIX.architectures["LlamaForCausalLM"], shape), "cpu")
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert model.model.embed_tokens.weight.device.type == "cpu"


def test_real_shape_train_runs_on_cpu_with_a_shrunk_config():
    claim = Claim("tiny-claim", "tiny-org/tiny-llama", "lora", 1, 80.0, "test", shape="tiny-llama")
    metrics = train_check.run(_cell_run(TINY, "lora", [claim]))
    assert metrics["losses"][-1] < metrics["losses"][0]
    from transformers import LlamaConfig, LlamaForCausalLM

    base = sum(p.numel() for p in LlamaForCausalLM(LlamaConfig(**TINY)).parameters())
    assert metrics["params_total"] == base and 0 < metrics["params_trainable"] < base / 4
    assert metrics["seq_len"] == 2048 and metrics["gradient_checkpointing"] is True
    assert metrics["mfu"] is None  # no peak FLOPs for a CPU
    assert metrics["claims"][0]["verdict"] == UNVERIFIED


def test_a_shape_that_does_not_fit_is_an_oom_record_with_the_memory_it_asked_for():
    huge = {**TINY, "vocab_size": 1 << 32, "hidden_size": 1024, "num_attention_heads": 8, "head_dim": 128}
    with pytest.raises(CellFailure) as info:
        train_check.run(_cell_run(huge, "sft"))  # a genuine allocator refusal: 8 TiB of embedding
    assert info.value.category == "oom"
    assert info.value.metrics["asked_bytes"] >= (1 << 32) * 1024 * 2
    assert info.value.metrics["oom_at"] == "materialising the weights"
    assert info.value.metrics["planned_bytes"] > 8 * (1 << 40)


def _verdict(claim: Claim, **measured):
    defaults = {"status": "pass", "category": None, "peak_bytes": 40 * GIB, "device_count": 1,
                "device_name": "NVIDIA H100 80GB HBM3", "device_total_bytes": int(79.2 * GIB)}
    return evaluate(claim, **{**defaults, **measured})


def test_claims_are_judged_only_by_what_was_measured():
    one = Claim("c1", "m", "lora", 1, 79.6, "seed 003", shape="Llama-3.1-8B")
    assert _verdict(one).verdict == HOLDS
    assert _verdict(one, peak_bytes=85 * GIB).verdict == FAILS
    assert _verdict(one, status="fail", category="oom", peak_bytes=None).verdict == FAILS
    bigger = _verdict(one, status="fail", category="oom", peak_bytes=None, device_total_bytes=139 * GIB)
    assert bigger.verdict == FAILS and "more than the claimed" in bigger.reason
    assert _verdict(one, status="fail", category="crash").verdict == UNVERIFIED
    assert _verdict(one, status=None).verdict == UNVERIFIED
    four = dataclasses.replace(one, gpus=4, tp=2)
    assert _verdict(four).verdict == UNVERIFIED and "needs 4 GPUs" in _verdict(four).reason
    assert _verdict(dataclasses.replace(one, shape=None)).verdict == UNVERIFIED


def test_seed_003_claims_and_real_shape_cells_are_in_the_matrix():
    assert MATRIX.claims["nemotron-nano-8b-v1-lora"].gpus == 1
    assert {c.model for c in MATRIX.claims.values()} >= {"nvidia/Llama-3.1-Nemotron-Nano-8B-v1",
                                                         "nvidia/NVIDIA-Nemotron-Nano-9B-v2"}
    cells, _ = expand(MATRIX)
    ids = {c.id for c in cells if c.tier == "real-shape"}
    assert "LlamaForCausalLM-lora-single-real-shape-train@Llama-3.1-8B" in ids
    assert len(ids) == 2 * len(MATRIX.real_shapes)  # sft and lora, single layout only


def test_matrix_errors_name_the_claim_and_the_tier_key(tmp_path):
    from harness.spec.matrix import DEFAULT_MATRIX_DIR, MatrixError

    for name in ("axes.toml", "architectures.toml", "real_shapes.toml"):
        (tmp_path / name).write_text((DEFAULT_MATRIX_DIR / name).read_text())
    (tmp_path / "claims.toml").write_text('[claims.x]\nmodel = "m"\nmethod = "lora"\ngpus = 1\n'
                                          'gpu_memory_gib = 80\nsource = "s"\nshape = "Llama-3.1-80B"\n')
    with pytest.raises(MatrixError, match=r"claims.x.shape = 'Llama-3.1-80B': unknown name.*Llama-3.1-8B"):
        load_matrix(tmp_path)
    (tmp_path / "claims.toml").unlink()
    axes = (tmp_path / "axes.toml").read_text().replace('data = "qa"', 'data = "squad"')
    (tmp_path / "axes.toml").write_text(axes)
    with pytest.raises(MatrixError, match=r"tiers.real.data = 'squad'.*allowed: random, qa"):
        load_matrix(tmp_path)
