"""Render: docs from records only, marked by where they ran, escaped, deterministic, checkable."""

from __future__ import annotations

import random
import re

import pytest

from harness import history
from harness.cells import expand
from harness.cli import main
from harness.matrix import load_matrix
from harness.render import render_docs, stale_files, write_docs
from harness.results import load_results
from tests.conftest import write_rows
from tests.test_results import cpu_env, gpu_env, record, write

ROWS = """
[architectures.LlamaForCausalLM]
families = ["Llama 3", "LLaMA"]
examples = ["meta-llama/Meta-Llama-3-8B"]
recipes = ["llama3_2_1b_squad.yaml"]
auto_class = "AutoModelForCausalLM"
model_type = "llama"

[architectures.MixtralForCausalLM]
families = ["Mixtral"]
examples = ["mistralai/Mixtral-8x7B-v0.1"]
auto_class = "AutoModelForCausalLM"
model_type = "mixtral"
moe = true

[architectures.Qwen3ForCausalLM]
families = ["Qwen3"]
examples = ["Qwen/Qwen3-8B"]
auto_class = "AutoModelForCausalLM"
model_type = "qwen3"
"""
# A layout only MoE rows can run: its cells are pruned (n/a) for the dense rows.
EP_LAYOUT = """
[layouts.ep_test]
summary = "expert parallel over two ranks (test layout)"
world_size = 2
mesh = { ep = 2 }
constraints = ["moe_only"]
apis = ["distributed_config_ep"]
"""
SCRIPT = '<script>document.title="pwned"</script>'
DAY = "2026-01-01T00:00:00+00:00"


@pytest.fixture
def matrix(matrix_dir):
    write_rows(matrix_dir, ROWS)
    with (matrix_dir / "axes.toml").open("a") as handle:
        handle.write(EP_LAYOUT)
    return load_matrix(matrix_dir)


def arch_cells(matrix, arch):
    return [c for c in expand(matrix)[0] if c.architecture == arch]


def planted_records(matrix) -> list[dict]:
    """Llama passes everything on the CPU only; Mixtral fails one cell on a GPU with <script>;
    Qwen3 has no records at all."""
    out = [record(c, "pass", run_id="cpu-run", timestamp=DAY, metrics={"peak_memory_bytes": 3 * 2**20})
           for c in arch_cells(matrix, "LlamaForCausalLM")]
    for i, c in enumerate(arch_cells(matrix, "MixtralForCausalLM")):
        failing = i == 0
        out.append(record(c, "fail" if failing else "pass", run_id="gpu-run", env=gpu_env(),
                          timestamp="2026-01-02T00:00:00+00:00", category="oom" if failing else None,
                          message=f"CUDA out of memory {SCRIPT} | tried 2 GiB" if failing else "",
                          metrics={"peak_memory_bytes": 5 * 2**30, "wall_s": 1.5}))
    return out


@pytest.fixture
def docs(matrix, tmp_path):
    path = write(tmp_path / "records" / "run.jsonl", planted_records(matrix))
    return render_docs(matrix, load_results([path]))


def table_row(md: str, arch: str) -> str:
    return next(line for line in md.splitlines() if line.startswith(f"| `{arch}` |"))


def test_every_architecture_gets_a_row_with_a_verdict(docs, matrix):
    llm = docs["llm.md"]
    for name in matrix.architectures:
        row = table_row(llm, name)
        assert re.search(r"(✓ supported|✗ not supported|— not verified|n/a)", row.split("|")[-3])
    assert "✓ supported (cpu)" in table_row(llm, "LlamaForCausalLM")
    assert "✗ not supported: oom (H100)" in table_row(llm, "MixtralForCausalLM")
    assert "— not verified: 0 of" in table_row(llm, "Qwen3ForCausalLM")


def test_every_status_says_where_and_a_cpu_pass_is_never_a_gpu_pass(docs, matrix):
    llm = docs["llm.md"]
    header = next(line for line in llm.splitlines() if line.startswith("| Architecture |"))
    assert "sft · single" in header and "lora · ep_test" in header
    llama = table_row(llm, "LlamaForCausalLM")
    assert "✓ cpu[^run-cpu-run]" in llama and "H100" not in llama
    assert "| n/a |" in llama  # ep_test needs a MoE model
    mixtral = table_row(llm, "MixtralForCausalLM")
    assert "✗ H100 oom[^run-gpu-run]" in mixtral and "cpu" not in mixtral.split("|")[5]
    # No bare mark: every ✓ or ✗ is followed by its place.
    for line in llm.splitlines():
        if line.startswith("| `"):
            assert not re.search(r"[✓✗](?! (cpu|H100|supported|not supported))", line), line
    notes = dict(re.findall(r"^\[\^(run-[\w-]+)\]: (.*)$", llm, re.M))
    assert "CPU (gloo)" in notes["run-cpu-run"] and "2026-01-01" in notes["run-cpu-run"]
    assert "GPU NVIDIA H100 80GB HBM3 ×8" in notes["run-gpu-run"]
    assert f"transformers {cpu_env()['transformers']}" in notes["run-gpu-run"]


def test_every_pass_traces_to_a_record(docs, matrix):
    llm = docs["llm.md"]
    row = r"^\| `([^`]+)` \| (\S+(?: \S+)*) \| (\w+)[^|]* \| `([^`]+)`\[\^run-"
    evidence = set(re.findall(row, llm, re.M))
    for cell in arch_cells(matrix, "LlamaForCausalLM"):
        assert (cell.id, "cpu", "pass", "cpu-run") in evidence
    gpu = {e for e in evidence if e[1] == "NVIDIA H100 80GB HBM3"}
    assert len(gpu) == len(arch_cells(matrix, "MixtralForCausalLM"))
    for ref in set(re.findall(r"\[\^(run-[\w-]+)\]", llm)):
        assert f"[^{ref}]: run `" in llm  # every footnote reference has its footnote


def test_script_in_a_message_is_text_everywhere(docs):
    html = docs["index.html"]
    assert "<script" not in html
    assert "CUDA out of memory &lt;script&gt;document.title=&#34;pwned&#34;&lt;/script&gt;" in html
    for name in ("llm.md", "overview.md", "models/mixtral.md"):
        assert f"`CUDA out of memory {SCRIPT} \\| tried 2 GiB`" in docs[name], name  # code span


def test_overview_tables_come_from_real_categories_and_messages(docs):
    overview = docs["overview.md"]
    row = next(line for line in overview.splitlines() if line.startswith("| **oom**"))
    assert "CUDA out of memory" in row and "`MixtralForCausalLM`" in row and "H100" in row
    assert "**numerics**" not in overview  # only categories that the records show
    auto = next(line for line in overview.splitlines() if line.startswith("| `AutoModelForCausalLM`"))
    assert "| Supported |" in auto and "1 of 3 architectures supported" in auto


def test_family_pages_show_layouts_that_passed_and_peak_memory(docs):
    assert {"models/llama.md", "models/llama-3.md", "models/mixtral.md", "models/qwen3.md",
            "models/index.md"} <= set(docs)
    llama = docs["models/llama.md"]
    assert "| sft | single | 1 | ✓ cpu[^run-cpu-run] |" in llama and "3.0 MiB" in llama
    mixtral = docs["models/mixtral.md"]
    assert "5.0 GiB" in mixtral and "✓ H100" in mixtral and "### Failures" in mixtral
    assert "No layout has passed yet." in docs["models/qwen3.md"]


def test_render_is_deterministic_whatever_the_record_order(matrix, tmp_path, docs):
    shuffled = planted_records(matrix)
    random.Random(7).shuffle(shuffled)
    write(tmp_path / "a" / "one.jsonl", shuffled[:5])
    write(tmp_path / "a" / "two.jsonl", shuffled[5:])
    again = render_docs(matrix, load_results([str(tmp_path / "a" / "*.jsonl")]))
    assert again == docs
    assert render_docs(matrix, load_results([str(tmp_path / "a" / "*.jsonl")])) == again


def test_index_grid_has_a_cell_per_combination_with_history(matrix, tmp_path):
    records = planted_records(matrix)
    cell = arch_cells(matrix, "LlamaForCausalLM")[0]
    older = record(cell, "fail", run_id="old-run", timestamp="2025-12-01T00:00:00+00:00")
    path = write(tmp_path / "r.jsonl", records)
    db = tmp_path / "h.sqlite"
    history.ingest([write(tmp_path / "old.jsonl", [older])], db)
    html = render_docs(matrix, load_results([path]), [history.load_frame(db)])["index.html"]
    combos = (len(matrix.methods) * len(matrix.layouts) * len(matrix.tiers) * len(matrix.checks))
    assert html.count('<td class="cell ') == combos * len(matrix.architectures)
    td = re.search(rf'data-cell="{cell.id}".*?</td>', html, re.S).group(0)
    assert re.findall(r'class="h s-(\w+)" title="([^"]+)"', td) == [
        ("fail", "2025-12-01T00:00:00+00:00 · run old-run · cpu · fail"),
        ("pass", f"{DAY} · run cpu-run · cpu · pass")]
    assert f"record {cell.id} · run cpu-run" in td


def test_check_detects_stale_missing_and_leftover_docs(matrix, tmp_path, docs):
    out = tmp_path / "reports"
    write_docs(out, docs)
    assert stale_files(out, docs) == []
    (out / "llm.md").write_text("hand edited\n")
    (out / "models" / "gone.md").write_text("a family no longer in the matrix\n")
    (out / "overview.md").unlink()
    assert stale_files(out, docs) == ["llm.md", "models/gone.md", "overview.md"]
    write_docs(out, docs)
    assert stale_files(out, docs) == [] and not (out / "models" / "gone.md").exists()


def test_cli_render_and_check(matrix_dir, matrix, tmp_path, capsys):
    records = tmp_path / "records"
    write(records / "run.jsonl", planted_records(matrix))
    args = ["--records", str(records / "*.jsonl"), "--out", str(tmp_path / "out"),
            "--matrix", str(matrix_dir)]
    assert main(["render", "--check", *args]) == 1  # nothing rendered yet
    assert main(["render", *args]) == 0
    assert main(["render", "--check", *args]) == 0
    first = (tmp_path / "out" / "llm.md").read_bytes()
    assert main(["render", *args]) == 0
    assert (tmp_path / "out" / "llm.md").read_bytes() == first
    # A new record makes the committed docs stale, and --check names the files.
    write(records / "run.jsonl", [record(arch_cells(matrix, "Qwen3ForCausalLM")[0], "pass",
                                         run_id="new", timestamp="2026-02-01T00:00:00+00:00")])
    capsys.readouterr()
    assert main(["render", "--check", *args]) == 1
    out = capsys.readouterr().out
    assert "stale: " in out and "llm.md" in out and "index.html" in out


def test_the_real_matrix_renders_a_verdict_for_every_row(tmp_path):
    matrix = load_matrix()
    cells = expand(matrix)[0]
    picked = [c for c in cells if c.architecture == sorted(matrix.architectures)[0]]
    path = write(tmp_path / "r.jsonl", [record(c, "pass", timestamp=DAY) for c in picked])
    llm = render_docs(matrix, load_results([path]))["llm.md"]
    # Main-table rows have the status columns; evidence and failure rows have 4 or 5 cells.
    rows = [line for line in llm.splitlines() if line.startswith("| `") and line.count("|") > 6]
    verdicts = {line.split("|")[1].strip(" `"): line.split("|")[-2] for line in rows}
    assert set(matrix.architectures) <= set(verdicts)
    assert all(v.strip() for v in verdicts.values())


def test_cells_an_environment_cannot_run_are_shown_with_their_category(matrix, tmp_path):
    """Remote-code and needs-newer-transformers skips are verdicts, not holes in the table."""
    rows = [record(c, "skip", run_id="cpu-run", timestamp=DAY, category="remote-code",
                   message="Qwen3ForCausalLM exists only as hub remote code")
            for c in arch_cells(matrix, "Qwen3ForCausalLM")]
    path = write(tmp_path / "records" / "run.jsonl", rows)
    out = render_docs(matrix, load_results([path]))
    qwen = next(line for line in out["llm.md"].splitlines() if line.startswith("| `Qwen3ForCausalLM`"))
    assert "⊘ cpu remote-code" in qwen
    assert "✗ not supported: remote-code (cpu)" in qwen
    assert "**remote-code**" in out["overview.md"]
    assert "exists only as hub remote code" in out["overview.md"]


def test_oldest_transformers_with_a_pass_is_stated(matrix, tmp_path):
    cells = arch_cells(matrix, "LlamaForCausalLM")
    rows = [record(c, "pass", run_id="new", env=cpu_env(transformers="5.23.0")) for c in cells]
    rows += [record(c, "pass", run_id="old", env=gpu_env(transformers="5.17.0")) for c in cells]
    rows += [record(c, "fail", run_id="older", env=gpu_env(name="NVIDIA A100", transformers="5.1.0"))
             for c in arch_cells(matrix, "Qwen3ForCausalLM")]
    out = render_docs(matrix, load_results([write(tmp_path / "records" / "run.jsonl", rows)]))
    lines = out["llm.md"].splitlines()
    assert next(x for x in lines if x.startswith("| `LlamaForCausalLM`")).endswith("| ≥ 5.17.0 |")
    assert next(x for x in lines if x.startswith("| `Qwen3ForCausalLM`")).endswith("| — |")
