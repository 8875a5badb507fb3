"""The automodel stack's CPU-side parts: its cells, its skips, and how the matrix maps onto
AutoModel's configuration. AutoModel itself runs only on a GPU (its evidence: reports/records/*automodel*)."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from harness.spec.cells import expand, prune_reason
from harness.spec.load import load_matrix
from harness.stacks.automodel import settings
from harness.stacks.automodel.stack import output_layer_name

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def matrix():
    return load_matrix(REPO / "matrix")


def test_cells_run_both_implementations_and_train_only_under_a_layout(matrix):
    cells, pruned = expand(matrix)
    mine = [c for c in cells if c.stack == "automodel"]
    assert {c.implementation for c in mine} == {"", "force_hf"}
    assert {c.tier for c in mine} == {"tiny"}
    assert {c.check for c in mine if matrix.layouts[c.layout].world_size > 1} == {"train"}
    assert {c.check for c in mine if c.layout == "single"} == {"train", "peft_roundtrip", "generate",
                                                                 "implementation_parity"}
    ids = {c.id for c in mine}
    assert "automodel:LlamaForCausalLM-lora-single-tiny-peft_roundtrip~force_hf" in ids
    assert "automodel:LlamaForCausalLM-lora-single-tiny-peft_roundtrip" in ids
    # the custom registry's classes are the native and TRL stacks' second implementation, not AutoModel's
    assert not any(c.implementation == "custom" for c in mine)
    reasons = {p.reason for p in pruned if p.cell.stack == "automodel" and p.cell.check == "peft_roundtrip"
               and p.cell.layout == "fsdp2" and p.cell.method == "lora" and p.cell.tier == "tiny"}
    assert reasons == {"stack automodel runs train only under a layout of more than one rank"}


def test_native_and_trl_cells_keep_the_rows_implementations(matrix):
    cells, _ = expand(matrix)
    assert not any(c.implementation == "force_hf" for c in cells if c.stack != "automodel")
    custom = {c.architecture for c in cells if c.stack == "native" and c.implementation == "custom"}
    assert custom == {"DeciLMForCausalLM", "NemotronNASForCausalLM"}


def test_an_undeclared_multi_rank_check_is_pruned_with_its_reason(matrix):
    cell = next(c for c in expand(matrix)[0] if c.stack == "automodel" and c.layout == "fsdp2")
    assert prune_reason(matrix, replace(cell, check="generate")).startswith("stack automodel runs train only")


def test_cpu_cells_skip_as_stack_absent_naming_the_device(tmp_path):
    """Through pytest, as users run it: on a CPU every automodel cell skips, and says where it runs."""
    results = tmp_path / "records.jsonl"
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "matrix", "-q", "-p", "no:randomly", "-p", "no:cacheprovider",
         "--stack", "automodel", "--arch", "LlamaForCausalLM", "--layout", "single", "--check", "train",
         "-m", "cpu", "--results", str(results)],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    records = [json.loads(line) for line in results.read_text().splitlines()]
    assert len(records) == 4  # sft and lora, AutoModel's own class and force_hf
    assert {(r["status"], r["category"]) for r in records} == {("skip", "stack-absent")}
    assert {r["implementation"] for r in records} == {"", "force_hf"}
    assert all("runs on cuda only" in r["message"] for r in records)
    assert all("nemo_automodel" in r["env"] for r in records)


def test_lora_settings_map_to_automodels_peft_config(matrix):
    lora = matrix.methods["lora"]
    llama = matrix.architectures["LlamaForCausalLM"]
    # peft's all-linear leaves out the output layer: AutoModel's "every linear but" form names it
    assert settings.peft_config_kwargs(llama, lora, "lm_head") == {"dim": 8, "alpha": 16, "dropout": 0.0,
                                                                   "exclude_modules": ["lm_head"]}
    # a model without an output layer: every linear layer, AutoModel's match_all_linear
    assert settings.peft_config_kwargs(llama, lora)["match_all_linear"] is True
    # module names match as suffixes in peft, by full-name wildcards in AutoModel
    named = replace(llama, lora_targets=("q_proj", "gate"))
    assert settings.peft_config_kwargs(named, lora)["target_modules"] == ["*.q_proj", "*.gate"]
    # all-linear with exclusions: AutoModel's "every linear but" form
    excluded = replace(llama, lora_exclude=("out_proj",))
    kwargs = settings.peft_config_kwargs(excluded, lora, "embed_out")
    assert kwargs["exclude_modules"] == ["embed_out", "*.out_proj"] and "match_all_linear" not in kwargs
    # a regular expression has no AutoModel spelling: the cell says so instead of guessing
    regex = replace(llama, lora_targets=r"^model\.language_model\..*\.(q_proj|v_proj)$")
    with pytest.raises(settings.NotExpressible, match="regular expression"):
        settings.peft_config_kwargs(regex, lora)
    with pytest.raises(settings.NotExpressible, match="not both"):
        settings.peft_config_kwargs(replace(named, lora_exclude=("o_proj",)), lora)


def test_layouts_and_precision_map_to_automodels_sizes(matrix):
    layouts = matrix.layouts
    assert settings.parallelism_sizes(layouts["single"]) == {"tp_size": 1, "ep_size": 1}
    assert settings.parallelism_sizes(layouts["tp"]) == {"tp_size": 2, "ep_size": 1}
    assert settings.parallelism_sizes(layouts["ep"]) == {"tp_size": 1, "ep_size": 2}
    assert [settings.data_parallel_size(layouts[n]) for n in ("single", "fsdp2", "tp", "ep")] == [1, 2, 1, 2]
    assert settings.mixed_precision("tier_dtype", "float32") == {"param_dtype": "float32",
                                                                 "reduce_dtype": "float32"}
    assert settings.mixed_precision("automodel_default", "float32") is None
    call = settings.call_text("AutoModelForCausalLM", layouts["tp"], {"dim": 8}, True, None)
    assert call.startswith("NeMoAutoModelForCausalLM.from_pretrained(path, distributed_setup=")
    assert "ParallelismSizes(tp_size=2, ep_size=1)" in call and "force_hf=True" in call


def test_next_token_labels_give_transformers_own_loss():
    """AutoModel's recipe loss on shifted labels equals the loss transformers computes itself."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2, vocab_size=64))
    ids = torch.randint(0, 64, (2, 12))
    labels = ids.clone()
    labels[:, :3] = -100
    shifted = settings.next_token_labels(labels)
    assert torch.equal(shifted[:, :-1], labels[:, 1:]) and (shifted[:, -1] == -100).all()
    logits = model(input_ids=ids).logits
    mine = torch.nn.functional.cross_entropy(logits.flatten(0, 1), shifted.flatten(), ignore_index=-100,
                                             reduction="sum") / (shifted != -100).sum()
    torch.testing.assert_close(mine, model(input_ids=ids, labels=labels).loss)


def test_the_output_layer_comes_from_transformers_class_without_weights(matrix, tmp_path):
    """What peft's all-linear leaves out, for AutoModel's exclude_modules; a classifier has none."""
    from transformers import BertConfig, LlamaConfig

    for row, config, expected in (
            ("LlamaForCausalLM", LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                             num_attention_heads=2, vocab_size=64), "lm_head"),
            ("BertForSequenceClassification", BertConfig(hidden_size=32, intermediate_size=64,
                                                         num_hidden_layers=1, num_attention_heads=2,
                                                         vocab_size=64), None)):
        config.save_pretrained(tmp_path / row)
        assert output_layer_name(matrix.architectures[row], tmp_path / row) == expected
