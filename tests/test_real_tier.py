"""The real tier resolves a checkpoint from the local HF cache only, or skips saying how to get it,
and trains on real text (the QA set) through the checkpoint's own tokenizer."""

from __future__ import annotations

import re
import shutil

import pytest

from harness.ckpt.tiny import tiny_checkpoint
from harness.data.qa import SHIPPED
from harness.spec.load import load_matrix
from tests.conftest import LLAMA_ROW, write_rows
from tests.test_plugin_e2e import run_matrix

REAL_ROW = LLAMA_ROW + 'real_checkpoint = "tiny-org/tiny-llama"\n'


def char_tokenizer():
    """A real (fast) tokenizer with one token per character of the QA set: fits the tiny vocab."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = sorted(set(SHIPPED.read_text(encoding="utf-8")) - {"\n"}) + ["\n"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{c: i + 3 for i, c in enumerate(chars)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex("."), "isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>", pad_token="</s>")


def small_real_tier(matrix_dir, **values):
    """The copied axes with the real tier made cheap for a tiny model and character tokens.

    A random tiny model learns no answer format in 6 steps: the held-out fall the tier requires of
    a pretrained model (heldout_fall_min) is waived; the loss must still fall.
    """
    axes = matrix_dir / "axes.toml"
    text = axes.read_text()
    head, rest = text.split("[tiers.real]", 1)
    tier, tail = rest.split("\n[", 1)
    defaults = {"seq_len": 512, "steps": 6, "heldout_batch_size": 6, "heldout_fall_min": 0.0}
    for key, value in {**defaults, **values}.items():
        tier = re.sub(rf"(?m)^{key} = .*$", f"{key} = {value}", tier)
    axes.write_text(head + "[tiers.real]" + tier + "\n[" + tail)


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """A Hugging Face hub cache laid out as `hf download` leaves it, around a tiny Llama."""
    matrix = load_matrix()
    source = tiny_checkpoint(matrix.architectures["LlamaForCausalLM"], matrix)
    cache = tmp_path / "hub"
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / "models--tiny-org--tiny-llama"
    shutil.copytree(source, repo / "snapshots" / revision)
    char_tokenizer().save_pretrained(repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return repo / "snapshots" / revision


def test_real_cell_trains_on_real_text_from_a_cached_checkpoint(pytester, matrix_dir, hf_cache):
    # A random tiny model starts far above a pretrained one; only the threshold is relaxed here.
    small_real_tier(matrix_dir, start_loss_max=20.0, lr="{ sft = 1e-2, lora = 1e-2 }")
    write_rows(matrix_dir, REAL_ROW)
    outcome, records = run_matrix(pytester, matrix_dir, "-m", "cpu", "--tier", "real", "--method", "lora")
    outcome.assert_outcomes(passed=1, deselected=1)
    metrics = records[0]["metrics"]
    assert metrics["checkpoint"] == str(hf_cache)
    assert records[0]["cell_id"] == "LlamaForCausalLM-lora-single-real-train"
    assert metrics["heldout_loss_after"] < metrics["heldout_loss_before"]
    assert metrics["start_loss"] == metrics["losses"][0] and len(metrics["losses"]) == 6
    assert metrics["heldout_items"] == 6 and metrics["answer_tokens"] > 6


def test_a_model_that_starts_where_no_pretrained_model_would_fails(pytester, matrix_dir, hf_cache):
    small_real_tier(matrix_dir, steps=2)
    write_rows(matrix_dir, REAL_ROW)
    outcome, records = run_matrix(pytester, matrix_dir, "-m", "cpu", "--tier", "real", "--method", "sft")
    outcome.assert_outcomes(failed=1, deselected=1)
    assert records[0]["category"] == "check-failed"
    assert "above 3.0, where a pretrained model starts" in records[0]["message"]


def test_generate_on_real_text_needs_the_expected_answer(pytester, matrix_dir, hf_cache):
    small_real_tier(matrix_dir, steps=2, start_loss_max=20.0, lr="{ sft = 1e-2, lora = 1e-2 }")
    write_rows(matrix_dir, REAL_ROW)
    outcome, records = run_matrix(pytester, matrix_dir, "-m", "cpu", "--tier", "real", "--method", "lora",
                                  "--check", "generate")
    outcome.assert_outcomes(failed=1)
    assert records[0]["category"] == "check-failed"
    assert "capital-france" in records[0]["message"] and "'Paris'" in records[0]["message"]


def test_absent_checkpoint_skips_naming_the_id_and_the_prefetch(pytester, matrix_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    write_rows(matrix_dir, REAL_ROW)
    outcome, records = run_matrix(pytester, matrix_dir, "-m", "cpu", "--tier", "real", "-rs")
    outcome.assert_outcomes(skipped=2, deselected=2)
    assert {r["category"] for r in records} == {"checkpoint-absent"}
    outcome.stdout.fnmatch_lines(
        ["*tiny-org/tiny-llama is not in the local Hugging Face cache*hf download tiny-org/tiny-llama*"])


@pytest.mark.parametrize(("layout", "dp_size"), [("fsdp2", 2), ("tp", 1)])
def test_real_text_trains_under_multi_rank_layouts_through_the_cellrun_placement(
        pytester, matrix_dir, hf_cache, layout, dp_size):
    small_real_tier(matrix_dir, start_loss_max=20.0, lr="{ sft = 1e-2, lora = 1e-2 }")
    write_rows(matrix_dir, REAL_ROW)
    outcome, records = run_matrix(pytester, matrix_dir, "-m", "cpu", "--tier", "real", "--method", "sft",
                                  "--layout", layout)
    outcome.assert_outcomes(passed=1, deselected=1)
    metrics = records[0]["metrics"]
    assert metrics["world_size"] == 2 and metrics["dp_size"] == dp_size
    assert metrics["heldout_loss_after"] < metrics["heldout_loss_before"]
