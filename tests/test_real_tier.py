"""The real tier resolves a checkpoint from the local HF cache only, or skips saying how to get it."""

from __future__ import annotations

import shutil

import pytest

from harness.matrix import load_matrix
from harness.tiny import tiny_checkpoint
from tests.conftest import LLAMA_ROW, write_rows
from tests.test_plugin_e2e import run_matrix

REAL_ROW = LLAMA_ROW + 'real_checkpoint = "tiny-org/tiny-llama"\n'


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """A Hugging Face hub cache laid out as `hf download` leaves it, around a tiny Llama."""
    matrix = load_matrix()
    source = tiny_checkpoint(matrix.architectures["LlamaForCausalLM"], matrix)
    cache = tmp_path / "hub"
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / "models--tiny-org--tiny-llama"
    shutil.copytree(source, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return repo / "snapshots" / revision


def test_real_cell_runs_on_a_cached_checkpoint(pytester, matrix_dir, hf_cache):
    write_rows(matrix_dir, REAL_ROW)
    outcome, records = run_matrix(pytester, matrix_dir, "-m", "cpu", "--tier", "real", "--method", "lora")
    outcome.assert_outcomes(passed=1, deselected=1)
    assert records[0]["metrics"]["checkpoint"] == str(hf_cache)
    assert records[0]["cell_id"] == "LlamaForCausalLM-lora-single-real-train"


def test_absent_checkpoint_skips_naming_the_id_and_the_prefetch(pytester, matrix_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    write_rows(matrix_dir, REAL_ROW)
    outcome, records = run_matrix(pytester, matrix_dir, "-m", "cpu", "--tier", "real", "-rs")
    outcome.assert_outcomes(skipped=2, deselected=2)
    assert {r["category"] for r in records} == {"checkpoint-absent"}
    outcome.stdout.fnmatch_lines(
        ["*tiny-org/tiny-llama is not in the local Hugging Face cache*hf download tiny-org/tiny-llama*"])
