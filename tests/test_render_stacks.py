"""Render per stack: llm.md stays the reference stack's page, each other declared stack gets
reports/stacks/<stack>.md from its own records, and the family pages set the stacks side by side.

Records are real ones (make_record through tests.test_results.record) of native and trl cells of
the test matrix of tests/test_render.py (the real axes, so `[stacks.trl]` is declared).
"""

from __future__ import annotations

import re

import pytest

from harness.report.render import render_docs, stale_files, write_docs
from harness.report.results import load_results
from harness.spec.cells import Cell
from harness.spec.load import load_matrix
from tests.conftest import write_rows
from tests.test_render import (
    DAY,
    EP_LAYOUT,
    ROWS,
    Tables,
    arch_cells,
    headings,
    llm_table,
    markdown_html,
    planted_records,
    render,
)
from tests.test_results import record

TRL_FAILURE = "loss went up under SFTTrainer on trl"


@pytest.fixture
def matrix(matrix_dir):
    write_rows(matrix_dir, ROWS)
    with (matrix_dir / "axes.toml").open("a") as handle:
        handle.write(EP_LAYOUT)
    return load_matrix(matrix_dir)


def trl_records(matrix) -> list[dict]:
    """trl: Llama passes everything but LoRA under fsdp2 (numerics); Mixtral and Qwen3 have no
    trl record. (native, from planted_records: Llama passes all, Mixtral fails one cell.)"""
    out = []
    for c in arch_cells(matrix, "LlamaForCausalLM", stack="trl"):
        failing = c.method == "lora" and c.layout == "fsdp2"
        out.append(record(c, "fail" if failing else "pass", run_id="trl-run", timestamp=DAY,
                          category="numerics" if failing else None,
                          message=TRL_FAILURE if failing else ""))
    return out


@pytest.fixture
def both(matrix, tmp_path):
    return render(matrix, tmp_path, planted_records(matrix) + trl_records(matrix), "both.jsonl")


@pytest.fixture
def native_only(matrix, tmp_path):
    return render(matrix, tmp_path, planted_records(matrix), "native.jsonl")


def stacks_table(family: str, arch: str) -> dict[str, dict[str, str]]:
    """An architecture's stacks table on its family page: row label -> stack -> cell text."""
    section = family.split(f"## `{arch}`")[1].split(f"### Stacks: `{arch}`")[1].split("\n### ")[0]
    table = Tables(markdown_html(section)).tables[0]
    stacks = [text for text, _ in table[0][1:]]
    return {row[0][0]: dict(zip(stacks, (text for text, _ in row[1:]), strict=True)) for row in table[1:]}


def test_records_of_trl_cells_leave_llm_md_and_the_overview_unchanged(matrix, tmp_path, both, native_only):
    assert both["llm.md"] == native_only["llm.md"]
    assert both["overview.md"] == native_only["overview.md"]
    assert both["stacks/trl.md"] != native_only["stacks/trl.md"]
    assert TRL_FAILURE not in both["llm.md"]


def test_the_trl_page_shows_trl_verdicts_and_not_natives(matrix, both):
    page = both["stacks/trl.md"]
    spec = matrix.stacks["trl"]
    assert page.splitlines()[2] == "# Large Language Models (LLMs) on the `trl` stack"
    assert spec.summary in page and f"<{spec.docs}>" in page and f"`{spec.install}`" in page
    assert "a mark here is\n`trl`'s records only" in page
    table = llm_table(page)
    assert sorted(table) == sorted(matrix.architectures)
    llama = table["LlamaForCausalLM"]
    assert llama["FSDP2 with SFT / PEFT"][0] == "sft ✓ · lora ✗ numerics"  # native: "sft lora ✓"
    assert llm_table(both["llm.md"])["LlamaForCausalLM"]["FSDP2 with SFT / PEFT"][0] == "sft lora ✓"
    # Mixtral failed on native (oom on a GPU); trl has no record of it: nothing of native's shows.
    assert table["MixtralForCausalLM"]["FSDP2 with SFT / PEFT"] == ("sft lora —", [])
    assert "oom" not in page and "H100" not in page
    assert "Verdicts on `trl`: 0 supported,\n1 not supported, 2 not verified" in page


def test_every_mark_of_the_trl_page_links_to_trl_evidence_on_the_family_page(both):
    table = llm_table(both["stacks/trl.md"])
    checked = 0
    for row in table.values():
        for column in ("FSDP2 with SFT / PEFT", "Other layouts"):
            text, hrefs = row[column]
            assert len(hrefs) == len(re.findall(r"[✓✗⊘]", text))
            for href in hrefs:
                page, _, anchor = href.partition("#")
                assert page.startswith("../models/"), href
                assert anchor in headings(both[page.removeprefix("../")]), href
                checked += 1
    assert checked >= 2
    fsdp2 = table["LlamaForCausalLM"]["FSDP2 with SFT / PEFT"][1]
    assert set(fsdp2) == {"../models/llama-3.md#fsdp2-on-trl-llamaforcausallm"}


def test_the_family_page_shows_both_stacks_side_by_side(both):
    family = both["models/llama-3.md"]
    table = {row: {k: v for k, v in marks.items() if k in ("native", "trl")}
             for row, marks in stacks_table(family, "LlamaForCausalLM").items()}
    assert table["Verdict"] == {"native": "✓ supported", "trl": "✗ not supported: numerics"}
    assert table["fsdp2"] == {"native": "sft lora ✓", "trl": "sft ✓ · lora ✗ numerics"}
    assert table["single"] == {"native": "sft lora ✓", "trl": "sft lora ✓"}
    assert table["ep_test"] == {"native": "n/a", "trl": "n/a"}
    # every declared stack has a column (the automodel stack two: its own class and force_hf)
    assert ("| | [`native`](../llm.md) | [`automodel`](../stacks/automodel.md) | [`automodel · force_hf`]"
            "(../stacks/automodel.md) | [`trl`](../stacks/trl.md) |") in family
    # trl's layouts that ran have their own sections, with the runs and the failure's message.
    section = family.split("### `fsdp2` on trl: LlamaForCausalLM")[1].split("\n### ")[0]
    assert TRL_FAILURE in section and "`trl:LlamaForCausalLM-lora-fsdp2-" in section
    assert "| `trl-run` |" in family and "| `cpu-run` |" in family
    assert "### `fsdp2`: LlamaForCausalLM" in family  # native's section, as before
    # A row with no trl record still shows trl's column (it has runnable cells), marked not run.
    qwen = stacks_table(both["models/qwen3.md"], "Qwen3ForCausalLM")
    assert {k: v for k, v in qwen["fsdp2"].items() if k in ("native", "trl")} == {"native": "sft lora —",
                                                                                 "trl": "sft lora —"}
    assert "on trl:" not in both["models/qwen3.md"]  # no trl section: nothing ran


def test_a_stack_without_records_still_has_its_page(matrix):
    docs = render_docs(matrix, load_results([]))
    table = llm_table(docs["stacks/trl.md"])
    assert sorted(table) == sorted(matrix.architectures)
    assert all(row["transformers"][0] == "—" for row in table.values())
    assert table["LlamaForCausalLM"]["FSDP2 with SFT / PEFT"] == ("sft lora —", [])
    assert "Places that produced these marks: none yet." in docs["stacks/trl.md"]
    assert "[`trl`](../stacks/trl.md)" in docs["models/index.md"]


def test_records_of_an_undeclared_stack_are_counted_as_unused(matrix, tmp_path, native_only):
    stray = Cell("LlamaForCausalLM", "lora", "single", "tiny", "train", stack="deepspeed")
    rows = planted_records(matrix) + [record(stray, "pass", run_id="ds-run", timestamp=DAY)]
    docs = render(matrix, tmp_path, rows, "stray.jsonl")
    note = ("1 record(s) name cells that are not in the current matrix (1 on stack `deepspeed`, "
            "which the matrix does not declare); they are not shown.")
    assert note in docs["llm.md"] and note in docs["stacks/trl.md"] and note in docs["stacks/automodel.md"]
    assert "ds-run" not in docs["index.html"] and "ds-run" not in docs["models/llama-3.md"]
    assert "stacks/deepspeed.md" not in docs
    for name in native_only:
        if name not in ("llm.md", "stacks/trl.md", "stacks/automodel.md"):
            assert docs[name] == native_only[name], name


def test_a_record_whose_stack_and_id_disagree_is_unused(matrix, tmp_path, native_only):
    """A hand-edited record: a native cell's id, but stack trl. It is no native evidence."""
    cell = arch_cells(matrix, "Qwen3ForCausalLM")[0]
    wrong = {**record(cell, "fail", run_id="odd-run", timestamp=DAY), "stack": "trl"}
    docs = render(matrix, tmp_path, [*planted_records(matrix), wrong], "odd.jsonl")
    assert "1 record(s) name cells that are not in the current matrix; they are not shown." in docs["llm.md"]
    qwen = llm_table(docs["llm.md"])["Qwen3ForCausalLM"]
    assert qwen == llm_table(native_only["llm.md"])["Qwen3ForCausalLM"]


def test_render_check_covers_the_stack_pages(tmp_path, both):
    out = tmp_path / "reports"
    write_docs(out, both)
    assert (out / "stacks" / "trl.md").is_file() and stale_files(out, both) == []
    (out / "stacks" / "trl.md").write_text("hand edited\n")
    (out / "stacks" / "gone.md").write_text("a stack no longer declared\n")
    assert stale_files(out, both) == ["stacks/gone.md", "stacks/trl.md"]
    write_docs(out, both)
    assert stale_files(out, both) == [] and not (out / "stacks" / "gone.md").exists()


def test_the_dashboard_keeps_to_its_stacks(both, native_only):
    """index.html shows DASHBOARD_STACKS only (the reference stack: the page must stay under 1 MB);
    trl's records add no row there (only their run to the runs list); they are read on the stack
    and family pages."""
    html = both["index.html"]
    assert 'id="f-stack"' not in html and "data-stack=" not in html and 'id="arch-trl-' not in html
    assert html.count('<td class="cell ') == native_only["index.html"].count('<td class="cell ')


def test_the_dashboard_adds_trl_rows_and_a_stack_filter_only_with_trl_records(matrix, tmp_path, monkeypatch):
    from harness.report import render as render_module

    monkeypatch.setattr(render_module, "DASHBOARD_STACKS", ("native", "trl"))
    native_only = render(matrix, tmp_path / "n", planted_records(matrix), "native.jsonl")
    assert 'id="f-stack"' not in native_only["index.html"]
    assert "data-stack=" not in native_only["index.html"]
    records = planted_records(matrix) + trl_records(matrix)
    html = render(matrix, tmp_path / "b", records, "both.jsonl")["index.html"]
    assert 'id="f-stack"' in html and '<option value="trl">trl</option>' in html
    assert html.count('data-stack="trl"') == 1  # Llama only: the rows trl has records for
    row = html.split('<tr id="arch-trl-LlamaForCausalLM"')[1].split("</tr>")[0]
    assert "<span>on trl</span>" in row and TRL_FAILURE in row
    groups = len(matrix.methods) * len(matrix.layouts)
    assert html.count('<td class="cell ') == groups * (len(matrix.architectures) + 1)
