"""A stack's own supported-models page (reports/stacks/automodel/llm.md): the published table's rows
in their order and shape, each with the verdict of the stack's records, the rows it omits that
pass, the declaration against the layouts that ran, and the diff against the published table.

Records are real ones (make_record through tests.test_results.record) of automodel cells of the
real matrix, planted with the outcomes the GPU run showed (harness/report/claims_table.py decides).
"""

from __future__ import annotations

import re

import pytest

from harness.report.render import render_docs
from harness.report.results import load_results
from harness.spec.cells import expand
from harness.spec.load import load_matrix
from tests.test_results import gpu_env, record, write

GENERATE_ERROR = "AttributeError: 'LlamaForCausalLM' object has no attribute 'generate'"
# A published row whose every cell passes, and a row the published table does not list.
PASSING = ("GritLM", "LlavaNextForConditionalGeneration")
RELOAD = "adapter save -> plain peft load into a fresh base: logits differ by 1.2e+00"


def facts(own: bool, declared: dict | None) -> dict:
    return {"layout_kind": "single", "automodel": {"release": "0.7.0", "own_class": own, "declared": declared,
                          "model_class": "nemo_automodel.components.models.llama.model.LlamaForCausalLM"
                          if own else "transformers.models.x.X",
                          **({} if declared else {"declared_error": "KeyError: not registered"})}}


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> str:
    matrix = load_matrix()
    cells = [c for c in expand(matrix)[0] if c.stack == "automodel" and c.layout == "single"]
    env = gpu_env("NVIDIA H200", nemo_automodel="0.7.0", transformers="5.18.0")
    llama = {"supports_tp": True, "supports_ep": False}
    rows = []
    for c in cells:
        own = c.implementation == ""
        if c.architecture == "LlamaForCausalLM":  # own class: no generate; force_hf: every cell passes
            failing = own and c.check == "generate"
            rows.append(record(c, "fail" if failing else "pass", env=env,
                               category="error" if failing else None,
                               message=GENERATE_ERROR if failing else "", metrics=facts(own, llama)))
        elif c.architecture == "MistralForCausalLM":  # no class of its own: force_hf passes
            rows.append(record(c, "skip", env=env, category="not-offered", message="no class of its own")
                        if own else record(c, "pass", env=env, metrics=facts(False, None)))
        elif c.architecture == "Phi3ForCausalLM" and not own:  # the PEFT export does not reload
            failing = c.method == "lora" and c.check == "peft_roundtrip"
            rows.append(record(c, "fail" if failing else "pass", env=env, message=RELOAD if failing else "",
                               metrics=facts(False, None)))
        elif c.architecture == "AquilaForCausalLM":
            rows.append(record(c, "skip", env=env, category="remote-code", message="hub remote code"))
        elif c.architecture in PASSING and not own:
            rows.append(record(c, "pass", env=env, metrics=facts(False, None)))
    path = write(tmp_path_factory.mktemp("records") / "automodel.jsonl", rows)
    return render_docs(matrix, load_results([path]))["stacks/automodel/llm.md"]


def table_rows(page: str) -> dict[str, list[str]]:
    """The Supported Models table: first column (the architectures) -> cells."""
    section = page.split("## Supported Models")[1].split("###")[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    return {r.split(" | ")[0].removeprefix("| "): r.split(" | ") for r in rows}


def test_the_published_rows_keep_their_order_shape_and_grouping(page):
    table = table_rows(page)
    names = list(table)
    assert names[:4] == ["`AquilaForCausalLM`", "`BaiChuanForCausalLM`", "`BambaForCausalLM`",
                         "`ChatGLMModel` / `ChatGLMForConditionalGeneration`"]
    assert "`CohereForCausalLM` / `Cohere2ForCausalLM`" in table  # one published row, two architectures
    assert len(table) == 52
    header = next(line for line in page.splitlines() if line.startswith("| Architecture |"))
    assert header.startswith("| Architecture | Models | Example HF Models |")
    assert "`meta-llama/Meta-Llama-3.1-70B`" in table["`LlamaForCausalLM`"][2]
    assert "`llama3_2_1b_squad.yaml`" in table["`LlamaForCausalLM`"][2]


def test_each_row_has_the_verdict_of_its_default_path_with_the_message(page):
    table = table_rows(page)
    llama = table["`LlamaForCausalLM`"][3]
    assert llama.startswith("**✗ failing**") and GENERATE_ERROR in llama and "force_hf: sft, lora ✓" in llama
    assert table["`MistralForCausalLM`"][3] == "**✓ verified** — force_hf: sft, lora ✓ |"
    phi3 = table["`Phi3ForCausalLM`"][3]
    assert phi3.startswith("**✗ failing**") and "peft_roundtrip numerics" in phi3 and "sft ✓" in phi3
    assert table["`AquilaForCausalLM`"][3].startswith("**⊘ not run** — own class: sft, lora ⊘ remote-code")
    assert table["`Qwen3ForCausalLM`"][3].startswith("**⊘ not run**")  # no record at all


def test_rows_the_table_omits_that_pass_are_listed_and_the_diff_counts_every_row(page):
    also = page.split("### Also passes")[1].split("##")[0]
    assert "`LlavaNextForConditionalGeneration` — force_hf: sft, lora ✓" in also
    diff = page.split("## Against the published table")[1]
    counts = re.search(r"\*\*(\d+) claimed and verified\*\*, \*\*(\d+) claimed and\s+failing\*\*, "
                       r"\*\*(\d+) claimed and not run\*\*", diff)
    assert counts and tuple(map(int, counts.groups())) == (2, 2, 48)
    verified = diff.split("Claimed and verified:")[1].splitlines()[0]
    assert verified.strip() == "`GritLM`, `MistralForCausalLM`."
    assert "`LlamaForCausalLM`" in diff.split("Claimed and failing:")[1].splitlines()[0]


def test_the_declaration_is_set_against_the_layouts_that_ran(page):
    declared = page.split("## Declared and observed")[1].split("## Against")[0]
    llama = next(line for line in declared.splitlines() if line.startswith("| `LlamaForCausalLM`"))
    # it declares tp; no tp cell ran (one GPU): the page says so rather than agreeing
    assert llama == ("| `LlamaForCausalLM` | supports_tp | not run | n/a | declares supports_tp, no tp cell "
                     "has run |")
    assert "AutoModel declares nothing for" in declared and "`MistralForCausalLM`" in declared
    assert "nemo-automodel 0.7.0" in page and "transformers 5.18.0" in page and "NVIDIA H200" in page


def test_the_verdict_column_names_what_ran_from_the_records(page):
    """One GPU, AutoModel's FSDP2 strategy proved nothing sharded (layout_kind 'single'): the head
    says so instead of promising FSDP2."""
    assert ("| Architecture | Models | Example HF Models | "
            "Verified (SFT / PEFT; 1 GPU, FSDP2 not applied at world size 1) |") in page
