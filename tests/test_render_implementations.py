"""The docs name the code each verdict rests on: transformers, remote code @ revision, or a custom class.

Real matrix, records made with make_record: the DeciLM row is remote code with a custom class
(custom_models/decilm/), so its cells come in two implementations whose records the docs keep apart.
"""

from __future__ import annotations

import pytest

from harness.report.render import render_docs
from harness.report.results import load_results
from harness.spec.cells import expand
from harness.spec.load import load_matrix
from tests.test_render import llm_table
from tests.test_results import record, write

ROW = "DeciLMForCausalLM"
REMOTE = {"kind": "remote-code", "repo": "nvidia/Llama-3_3-Nemotron-Super-49B-v1",
          "revision": "0123456789abcdef0123", "files": {"modeling_decilm.py": "ab" * 32}}
CUSTOM = {"kind": "custom", "module": "custom_models.decilm", "files": {"modeling_decilm.py": "cd" * 32}}


@pytest.fixture(scope="module")
def matrix():
    return load_matrix()


def records_for(matrix, implementation: str, status: str, code: dict) -> list[dict]:
    cells = [c for c in expand(matrix)[0] if c.architecture == ROW and c.implementation == implementation
             and c.stack == "native" and c.tier == "tiny"]
    out = []
    for cell in cells:
        made = record(cell, status, category="remote-code" if status == "skip" else None,
                      message="pass --trust-remote-code" if status == "skip" else "")
        made["code"] = code
        out.append(made)
    return out


def rendered(matrix, tmp_path, rows):
    return render_docs(matrix, load_results([write(tmp_path / "r.jsonl", rows)]))


def decilm_rows(llm: str) -> list[str]:
    return [line for line in llm.splitlines() if line.startswith(f"| `{ROW}` |")]


def test_the_row_rests_on_the_custom_class_where_the_remote_code_did_not_run(matrix, tmp_path):
    docs = rendered(matrix, tmp_path, records_for(matrix, "", "skip", {**REMOTE, "revision": None})
                    + records_for(matrix, "custom", "pass", CUSTOM))
    rows = decilm_rows(docs["llm.md"])
    assert len(rows) == 1
    row = llm_table(docs["llm.md"])[ROW]
    assert row["Models"][0] == "DeciLM (custom custom_models.decilm)"
    assert row["FSDP2 with SFT / PEFT"][0] == "sft lora ✓"
    page = docs["models/decilm.md"]
    module = "custom_models.decilm"
    assert (f"custom registry: `{module}:DeciLMForCausalLM` with `{module}:DeciLMConfig`: "
            f"`modeling_decilm.py` sha256 `{'cd' * 8}`") in page
    assert "remote code of `nvidia/Llama-3_3-Nemotron-Super-49B-v1`: no record ran it" in page
    # the family page puts both implementations side by side and gives the custom one its sections
    assert "`native · custom`" in page and "### `fsdp2` (custom): DeciLMForCausalLM" in page
    # the three views agree: the verdict the row rests on, on the family page and the dashboard
    assert "| Verdict | ✓ supported (custom `custom_models.decilm`) |" in page
    dashboard = docs["index.html"].split(f'<tr id="arch-{ROW}"')[1].split("</tr>")[0]
    assert 'data-implementation="custom"' in dashboard and ">✓ supported</td>" in dashboard


def test_both_verdicts_appear_each_labelled_where_both_ran(matrix, tmp_path):
    docs = rendered(matrix, tmp_path, records_for(matrix, "", "fail", REMOTE)
                    + records_for(matrix, "custom", "pass", CUSTOM))
    rows = decilm_rows(docs["llm.md"])
    assert len(rows) == 2
    # which repo's code ran, at which snapshot
    assert f"DeciLM (remote code `{REMOTE['repo']}@0123456789`)" in rows[0] and "✗ numerics" in rows[0]
    assert "DeciLM (custom `custom_models.decilm`)" in rows[1] and "sft lora [✓]" in rows[1]
    assert f"remote code of `{REMOTE['repo']}` @ `{REMOTE['revision']}`: `modeling_decilm.py` sha256 " \
           f"`{'ab' * 8}`" in docs["models/decilm.md"]
    # every link of both rows resolves to a definition (the custom row's labels are its own)
    labels = {part.split("]")[0] for row in rows for part in row.split("][")[1:]}
    assert all(f"[{label}]: " in docs["llm.md"] for label in labels) and any(lbl.endswith("c.fsdp2")
                                                                             for lbl in labels)


def test_nothing_ran_shows_the_rows_own_implementation(matrix, tmp_path):
    docs = rendered(matrix, tmp_path, records_for(matrix, "", "skip", {**REMOTE, "revision": None}))
    row = llm_table(docs["llm.md"])[ROW]
    assert row["Models"][0] == f"DeciLM (remote code {REMOTE['repo']}, not run)"
    assert "⊘ remote-code" in row["FSDP2 with SFT / PEFT"][0]
    assert "| Verdict | ⊘ not run (remote code, opt-in) |" in docs["models/decilm.md"]
    assert "not supported" not in docs["models/decilm.md"].split("| Verdict |")[1].splitlines()[0]
