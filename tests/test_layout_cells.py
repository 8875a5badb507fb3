"""Multi-rank layouts as matrix cells, end to end through the plugin on CPU (gloo).

Cells of layouts with more than one rank go to the persistent rank pool; every rank runs the
same check module and rank 0's metrics become the record. A rank that dies or hangs fails its
own cell (crash / timeout, with that rank's log) and the cells after it still run and record.
"""

from __future__ import annotations

import pytest

from harness.run import runner
from tests.conftest import LLAMA_ROW, write_rows
from tests.test_plugin_e2e import run_matrix


@pytest.fixture
def private_pools(monkeypatch):
    """Pools of this test only: its crash and timeout restarts do not touch the shared pools."""
    from harness.run import pool

    pools: dict = {}
    monkeypatch.setattr(pool, "_POOLS", pools)
    yield pools
    for each in pools.values():
        each.close()


def by_id(records):
    return {r["cell_id"]: r for r in records}


def test_a_multi_rank_cell_trains_matches_one_device_and_records_its_world(pytester, matrix_dir):
    """What a multi-rank cell's record holds, on the 2-D mesh (4 ranks: a world size unlike the 2 of
    the other layouts). Whether every layout's cells pass is the layout slice's job: `make test` runs
    train and parity of Llama and Qwen3-MoE under fsdp2, tp, fsdp2_tp and ep under each gate set."""
    write_rows(matrix_dir, LLAMA_ROW)
    outcome, records = run_matrix(pytester, matrix_dir, "--arch", "LlamaForCausalLM", "--layout",
                                  "fsdp2_tp", "--check", "train,parity", "--method", "sft",
                                  "-m", "cpu", "--tier", "tiny", "--variant", "default")
    outcome.assert_outcomes(passed=2)
    records = by_id(records)
    assert len(records) == 2
    for layout, world in (("fsdp2_tp", 4),):
        train = records[f"LlamaForCausalLM-sft-{layout}-tiny-train"]
        parity = records[f"LlamaForCausalLM-sft-{layout}-tiny-parity"]
        for record in (train, parity):
            assert record["status"] == "pass", record["message"]
            assert record["env"]["world_size"] == world
            assert record["metrics"]["world_size"] == world
            assert record["metrics"]["layout_kind"] == layout
        losses = train["metrics"]["losses"]
        assert losses[-1] < losses[0]
        assert train["metrics"]["weights_changed"] > 0
        metrics = parity["metrics"]
        assert len(metrics["reference_losses"]) == len(metrics["losses"])
        assert metrics["max_rel_diff_loss"] <= metrics["rtol"]


def test_a_rank_that_dies_or_hangs_fails_only_its_cell(pytester, matrix_dir, monkeypatch, private_pools):
    """sft-parity hangs on rank 1 (timeout) and lora-train kills rank 1 (crash); the rest pass."""
    write_rows(matrix_dir, LLAMA_ROW)
    monkeypatch.setattr(runner, "RANK_TASK", "tests.pool_tasks:rank_task_with_faults")
    monkeypatch.setenv("COMPAT_HARNESS_CELL_TIMEOUT", "10")
    outcome, records = run_matrix(pytester, matrix_dir, "--arch", "LlamaForCausalLM", "--layout", "fsdp2",
                                  "--check", "train,parity", "-m", "cpu", "--tier", "tiny",
                                  "--variant", "default")
    outcome.assert_outcomes(passed=2, failed=2)
    records = by_id(records)
    assert len(records) == 4, "every cell is recorded, including those after the failures"
    hang = records["LlamaForCausalLM-sft-fsdp2-tiny-parity"]
    assert (hang["status"], hang["category"]) == ("fail", "timeout")
    assert "still busy" in hang["message"] and "rank 1" in hang["traceback"]
    crash = records["LlamaForCausalLM-lora-fsdp2-tiny-train"]
    assert (crash["status"], crash["category"]) == ("fail", "crash")
    assert "rank 1 died" in crash["message"] and "exit code 7" in crash["message"]
    for cell_id in ("LlamaForCausalLM-sft-fsdp2-tiny-train", "LlamaForCausalLM-lora-fsdp2-tiny-parity"):
        assert records[cell_id]["status"] == "pass", records[cell_id]["message"]
    assert private_pools[(2, "cpu")].starts == 3, "rebuilt after the timeout and after the crash"


def test_a_rank_that_raises_is_a_fail_with_its_traceback_and_the_pool_stays(pytester, matrix_dir):
    """GPT-2 has no TP plan in transformers: every rank raises no-tp-plan; nothing is torn down."""
    write_rows(matrix_dir, LLAMA_ROW + LLAMA_ROW.replace("LlamaForCausalLM", "GPT2LMHeadModel")
               .replace('"llama"', '"gpt2"'))
    from harness.run.pool import get_pool

    outcome, records = run_matrix(pytester, matrix_dir, "--arch", "GPT2LMHeadModel", "--layout", "tp",
                                  "--check", "train", "--method", "sft", "-m", "cpu", "--tier", "tiny",
                                  "--variant", "default")
    outcome.assert_outcomes(failed=1)
    (record,) = records
    assert (record["status"], record["category"]) == ("fail", "no-tp-plan")
    assert "base_model_tp_plan" in record["message"]
    assert "Traceback" in record["traceback"]
    # pytest shows the rank's verdict as its one-line message; only the record keeps the traceback
    outcome.stdout.fnmatch_lines(["*GPT2LMHeadModel-sft-tp-tiny-train on cpu: [[]no-tp-plan[]] rank 0: *"])
    assert "Traceback" not in outcome.stdout.str()
    assert get_pool(2, "cpu").alive


def test_cell_timeout_default_tier_and_override(monkeypatch):
    from harness.spec.load import load_matrix

    tiers = load_matrix().tiers
    monkeypatch.delenv("COMPAT_HARNESS_CELL_TIMEOUT", raising=False)
    assert runner.cell_timeout_s() == runner.DEFAULT_CELL_TIMEOUT_S
    assert runner.cell_timeout_s(tiers["tiny"]) == runner.DEFAULT_CELL_TIMEOUT_S
    real = tiers["real"].cell_timeout_s
    assert runner.cell_timeout_s(tiers["real"]) == real > runner.DEFAULT_CELL_TIMEOUT_S
    monkeypatch.setenv("COMPAT_HARNESS_CELL_TIMEOUT", "42.5")
    assert runner.cell_timeout_s(tiers["real"]) == 42.5


def test_parity_compare_shows_both_curves():
    from harness.checks.parity import compare_curves
    from harness.stacks.result import TrainResult

    ref = TrainResult([2.0, 1.5], [1.0, 0.9], [0.1, 0.1], 64)
    got = TrainResult([2.0, 1.6], [1.0, 0.9], [0.1, 0.1], 64)
    problems, metrics = compare_curves("tp", ref, ref, {"rtol": 1e-5, "atol": 1e-6})
    assert problems == [] and metrics["max_rel_diff_loss"] == 0
    problems, _ = compare_curves("tp", got, ref, {"rtol": 1e-5, "atol": 1e-6})
    assert len(problems) == 1 and "[2.0, 1.6]" in problems[0] and "[2.0, 1.5]" in problems[0]


def test_parity_names_the_worst_parameters():
    import torch

    from harness.checks.parity import compare_grads, describe

    want = {"a": torch.ones(3), "b": torch.full((2,), 4.0)}
    got = {"a": torch.ones(3), "b": torch.tensor([4.0, 4.01])}
    compared = compare_grads(0, got, want, {"rtol": 1e-5, "atol": 1e-6})
    over = [c for c in compared if c[0] > 1]
    assert [c[1] for c in over] == ["b"]
    text = describe(over, "fsdp2", {"rtol": 1e-5, "atol": 1e-6}, 6)
    assert "b at step 0" in text and "largest gradient 4.000e+00" in text
