"""Render: docs from records only, in the seed's shape, with release ranges and regressions,
linked to their evidence, escaped, free of machine paths, deterministic, checkable."""

from __future__ import annotations

import json
import random
import re
from html.parser import HTMLParser

import pytest
from markdown_it import MarkdownIt

from harness.cli import main
from harness.report import history
from harness.report.llm_table import HEADER, github_anchor
from harness.report.machine_paths import has_machine_path
from harness.report.render import render_docs, stale_files, write_docs
from harness.report.results import load_results
from harness.spec.cells import expand
from harness.spec.load import load_matrix
from harness.spec.matrix import REFERENCE_STACK
from tests.conftest import write_rows
from tests.test_results import cpu_env, gpu_env, older, record, write

ROWS = """
[architectures.LlamaForCausalLM]
families = ["Llama 3", "LLaMA"]
examples = ["meta-llama/Meta-Llama-3-8B", "meta-llama/Llama-2-7b-hf"]
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
# A real config for the Llama row, so that the test matrix has real-shape cells (id '...@Llama-1B').
REAL_SHAPE = """
[real_shapes."Llama-1B"]
architecture = "LlamaForCausalLM"
checkpoint = "meta-llama/Llama-3.2-1B"
expected_params = 1_235_814_400
config = { hidden_size = 2048 }
"""
SCRIPT = '<script>document.title="pwned"</script>'
DAY = "2026-01-01T00:00:00+00:00"


@pytest.fixture
def matrix(matrix_dir):
    write_rows(matrix_dir, ROWS)
    with (matrix_dir / "axes.toml").open("a") as handle:
        handle.write(EP_LAYOUT)
    return load_matrix(matrix_dir)


def arch_cells(matrix, arch, **axes):
    """A row's runnable cells on the reference stack (or on the stack given as `stack=`)."""
    axes.setdefault("stack", REFERENCE_STACK)
    return [c for c in expand(matrix)[0] if c.architecture == arch
            and all(getattr(c, k) == v for k, v in axes.items())]


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


def render(matrix, tmp_path, rows, name="run.jsonl"):
    return render_docs(matrix, load_results([write(tmp_path / "records" / name, rows)]))


@pytest.fixture
def docs(matrix, tmp_path):
    return render(matrix, tmp_path, planted_records(matrix))


class Tables(HTMLParser):
    """The tables of an HTML page: rows of (cell text, hrefs of the cell's links)."""

    def __init__(self, html: str):
        super().__init__()
        self.tables: list[list[list[tuple[str, list[str]]]]] = []
        self.cell: list | None = None
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self.cell = ["", []]
        elif tag == "a" and self.cell is not None:
            self.cell[1].append(dict(attrs)["href"])

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.tables[-1][-1].append((" ".join(self.cell[0].split()), self.cell[1]))
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell[0] += data


def markdown_html(text: str) -> str:
    """CommonMark with GitHub's tables, as GitHub renders a .md file."""
    return MarkdownIt("commonmark").enable("table").render(text)


def same_head(head: list[str]) -> bool:
    """llm.md's head: HEADER, the verdict column followed by what its records ran, '(2 CPU ranks)'."""
    if len(head) != len(HEADER):
        return False
    same_others = head[:3] == list(HEADER[:3]) and head[4:] == list(HEADER[4:])
    return same_others and head[3].startswith(HEADER[3] + " (")


def llm_table(llm: str) -> dict[str, dict[str, tuple[str, list[str]]]]:
    """The supported-models table of llm.md as GitHub would show it: architecture -> column -> cell."""
    tables = [t for t in Tables(markdown_html(llm)).tables if same_head([c[0] for c in t[0]])]
    assert len(tables) == 1, "llm.md must hold exactly one table with the expected columns"
    rows = tables[0][1:]
    assert all(len(row) == len(HEADER) for row in rows)
    return {row[0][0]: dict(zip(HEADER, row, strict=True)) for row in rows}


def headings(markdown: str) -> set[str]:
    return {github_anchor(line.lstrip("#").strip()) for line in markdown.splitlines() if line.startswith("#")}


def test_llm_table_parses_one_row_per_architecture_with_the_seed_columns(docs, matrix):
    table = llm_table(docs["llm.md"])
    assert sorted(table) == sorted(matrix.architectures)
    llama = table["LlamaForCausalLM"]
    assert llama["Models"][0] == "Llama 3, LLaMA"
    assert llama["Example HF Models"][0] == "meta-llama/Meta-Llama-3-8B etc.; recipes llama3_2_1b_squad.yaml"
    assert llama["FSDP2 with SFT / PEFT"][0] == "sft lora ✓"
    others = llama["Other layouts"][0]
    assert others.startswith("single tp fsdp2_tp ") and others.endswith("ep_test n/a")
    assert table["MixtralForCausalLM"]["Other layouts"][0].startswith("single (sft) ✗ oom · single (lora)")
    assert table["Qwen3ForCausalLM"]["FSDP2 with SFT / PEFT"] == ("sft lora —", [])
    assert "[^" not in docs["llm.md"], "no footnotes: run details live on the family pages"


def test_every_mark_links_to_its_evidence_on_the_family_page(docs):
    table = llm_table(docs["llm.md"])
    checked = 0
    for arch, row in table.items():
        for column in ("FSDP2 with SFT / PEFT", "Other layouts"):
            text, hrefs = row[column]
            assert len(hrefs) == len(re.findall(r"[✓✗⊘]", text))  # every mark is a link
            for href in hrefs:
                page, _, anchor = href.partition("#")
                assert page.startswith("models/") and anchor in headings(docs[page]), href
                assert arch in docs[page]
                checked += 1
    assert checked >= 4
    llama = table["LlamaForCausalLM"]["FSDP2 with SFT / PEFT"][1]
    assert llama == ["models/llama-3.md#fsdp2-llamaforcausallm"]


def test_table_rows_read_as_plain_text(docs):
    """Links are reference-style, so a row holds short marks, no URLs and no footnotes."""
    rows = [line for line in docs["llm.md"].splitlines() if line.startswith("| `")]
    assert len(rows) == 3
    for line in rows:
        assert "](" not in line and "http" not in line and "[^" not in line
        fsdp2, others, releases = (c.strip() for c in line.split(" | ")[3:6])
        assert len(re.sub(r"\]\[[\w.]+\]", "]", fsdp2)) <= 40, fsdp2
        assert len(releases.rstrip(" |")) <= 40, releases


def test_verdicts_and_where_they_were_verified_are_on_the_family_pages(docs):
    llama = docs["models/llama-3.md"]
    assert "| Verdict | ✓ supported |" in llama
    history_row = r"\| 5\.\d+\.\d+ \| [\d.]+ \| [^|]+ \| cpu \(x86_64, \d+ cores\), gloo \| ✓ \(\d+/\d+"
    assert re.search(history_row, llama)
    assert "H100" not in llama  # a CPU pass is never shown as a GPU pass
    mixtral = docs["models/mixtral.md"]
    assert "H100 ×8" in mixtral and "| Verdict | ✗ not supported: oom |" in mixtral
    assert "| `gpu-run` | H100 ×8, nccl |" in mixtral  # the runs table: place, versions, commit, date
    assert "Nothing ran under this layout yet." in docs["models/qwen3.md"]


def release_records(matrix, arch, layout, releases: list[tuple[str, str, str, dict]]):
    """(transformers, status, day, env) per release, for every cell of one row and layout."""
    out = []
    for transformers, status, day, env in releases:
        for c in arch_cells(matrix, arch, layout=layout):
            failed = status == "fail"
            out.append(record(c, status, run_id=f"run-{transformers}",
                              env={**env, "transformers": transformers},
                              timestamp=f"2026-0{day}-01T00:00:00+00:00",
                              category="error" if failed else None,
                              message="AttributeError: no attribute 'image_outputs'" if failed else ""))
    return out


def test_release_ranges_and_a_regression_marked_and_listed(matrix, tmp_path):
    rows = release_records(matrix, "LlamaForCausalLM", "single", [
        ("5.17.0", "pass", 1, gpu_env(peft="0.21.0")), ("5.23.0", "pass", 2, cpu_env()),
        ("5.24.0", "fail", 3, cpu_env())])
    rows += release_records(matrix, "LlamaForCausalLM", "fsdp2", [("5.23.0", "pass", 2, cpu_env())])
    docs = render(matrix, tmp_path, rows)
    llama = llm_table(docs["llm.md"])["LlamaForCausalLM"]
    # the GPU run of peft 0.21.0 is a release line of its own: never joined to the CPU's range
    gpu, cpu = gpu_env(peft="0.21.0"), cpu_env()
    gpu_line = f"peft 0.21.0, torch {gpu['torch']}, {gpu['device_name']}"
    cpu_line = f"peft {cpu['peft']}, torch {cpu['torch']}, cpu"
    assert llama["transformers"][0] == f"5.17 ✓ ({gpu_line}); 5.23 ✓ · 5.24 ✗ ({cpu_line}) regression"
    assert llama["FSDP2 with SFT / PEFT"][0] == "sft lora ✓"
    assert llama["Other layouts"][0].startswith("single ✗ error regression")
    top = docs["llm.md"].split("| Architecture |")[0]
    assert (f"- `LlamaForCausalLM` fails from transformers **5.24** with {cpu_line} (passed on 5.23, the "
            "others the same) under `single` (sft, lora)") in top
    assert "no attribute 'image_outputs'" in top
    section = docs["models/llama-3.md"].split("### `single`: LlamaForCausalLM")[1].split("###")[0]
    assert [line.split(" | ")[0] for line in section.splitlines() if re.match(r"\| 5\.", line)] == [
        "| 5.24.0", "| 5.23.0", "| 5.17.0"]  # the full history, newest first
    assert (f"5.23 ✓ · 5.24 ✗ ({cpu_line}) **regression**: fails from transformers **5.24** with {cpu_line}"
            in docs["models/llama-3.md"])


def test_a_bisects_first_bad_release_is_named_in_the_rows_release_column(matrix, tmp_path):
    """A finding of `compat-harness bisect --save` (reports/bisects/) for a cell of the row."""
    from harness.report.bisects import load_findings
    from harness.report.results import load_results

    rows = release_records(matrix, "LlamaForCausalLM", "single", [
        ("5.17.0", "pass", 1, cpu_env()), ("5.24.0", "fail", 3, cpu_env())])
    bad = next(r["cell_id"] for r in rows if r["status"] == "fail")
    (tmp_path / "bisects").mkdir()
    (tmp_path / "bisects" / "llama.json").write_text(json.dumps({
        "package": "transformers", "first_bad": "5.21.0", "last_good": "5.20.2", "cells": [bad],
        "runs": 4, "seconds": 160.0, "held": {"peft": "0.21.2"}}))
    findings = load_findings(tmp_path / "bisects")
    docs = render_docs(matrix, load_results([write(tmp_path / "records.jsonl", rows)]), findings=findings)
    llama = llm_table(docs["llm.md"])["LlamaForCausalLM"]
    assert llama["transformers"][0] == ("5.17 ✓ · 5.24 ✗ regression · single sft: first bad transformers "
                                        "5.21.0 (bisect; last good 5.20.2, peft 0.21.2)")
    assert "first bad" not in llm_table(docs["llm.md"])["Qwen3ForCausalLM"]["transformers"][0]


def test_a_failure_fixed_by_a_later_release_is_no_regression(matrix, tmp_path):
    rows = release_records(matrix, "Qwen3ForCausalLM", "single", [
        ("5.0.0", "fail", 1, cpu_env()), ("5.17.0", "pass", 2, cpu_env())])
    docs = render(matrix, tmp_path, rows)
    assert llm_table(docs["llm.md"])["Qwen3ForCausalLM"]["transformers"][0] == "5.0 ✗ · 5.17 ✓"
    assert "**Regressions**: none in these records" in docs["llm.md"]


def test_each_peft_release_is_a_line_of_its_own(matrix, tmp_path):
    rows = release_records(matrix, "Qwen3ForCausalLM", "single", [
        ("5.17.0", "pass", 1, cpu_env(peft="0.21.0")), ("5.17.0", "fail", 2, cpu_env(peft="0.21.2")),
        ("5.23.0", "pass", 3, cpu_env(peft="0.21.2"))])
    docs = render(matrix, tmp_path, rows)
    torch = cpu_env()["torch"]
    assert (llm_table(docs["llm.md"])["Qwen3ForCausalLM"]["transformers"][0]
            == f"5.17 ✓ (peft 0.21.0, torch {torch}, cpu); 5.17 ✗ · 5.23 ✓ (peft 0.21.2, torch {torch}, cpu)")


def test_script_in_a_message_is_text_everywhere(docs):
    html = docs["index.html"]
    assert html.count("<script") == 1  # the page's own filter script; the message's is text
    assert "CUDA out of memory &lt;script&gt;document.title=&#34;pwned&#34;&lt;/script&gt;" in html
    for name in ("overview.md", "models/mixtral.md"):
        assert f"`CUDA out of memory {SCRIPT} \\| tried 2 GiB`" in docs[name], name  # code span


def test_machine_paths_in_messages_are_never_published(matrix, tmp_path):
    cells = arch_cells(matrix, "Qwen3ForCausalLM", layout="tp")
    message = ("rank 0: Qwen3ForCausalLM has no tp plan; give the row a tp_plan table in "
               "/work/main/.evidence/matrix/architectures.toml (File \"/tmp/ci/.venv/lib/python3.11/"
               "site-packages/peft/tuners/lora/layer.py\", line 3)")
    rows = [record(c, "fail", category="no-tp-plan", message=message,
                   metrics={"checkpoint": "/root/.cache/x"}) for c in cells]
    docs = render(matrix, tmp_path, rows)
    for name, text in docs.items():
        assert not has_machine_path(text), (name, has_machine_path(text))
    shown = "tp_plan table in matrix/architectures.toml (File \"peft/tuners/lora/layer.py\""
    assert shown in docs["overview.md"] and shown in docs["models/qwen3.md"]
    assert shown.replace('"', "&#34;") in docs["index.html"]


def test_overview_tables_come_from_real_categories_and_messages(docs):
    overview = docs["overview.md"]
    row = next(line for line in overview.splitlines() if line.startswith("| **oom**"))
    assert "CUDA out of memory" in row and "`MixtralForCausalLM`" in row and "H100, transformers" in row
    assert "**numerics**" not in overview  # only categories that the records show
    auto = next(line for line in overview.splitlines() if line.startswith("| `AutoModelForCausalLM`"))
    assert "| Supported |" in auto and "1 of 3 architectures supported" in auto


def test_family_pages_show_every_layout_with_peak_memory_and_failures(docs):
    assert {"models/llama.md", "models/llama-3.md", "models/mixtral.md", "models/qwen3.md",
            "models/index.md"} <= set(docs)
    llama = docs["models/llama.md"]
    assert "| [`fsdp2`](#fsdp2-llamaforcausallm) | 2 | ✓ | ✓ |" in llama and "3.0 MiB" in llama
    assert "| `ep_test` | 2 | n/a | n/a | layout ep_test" in llama
    mixtral = docs["models/mixtral.md"]
    assert "5.0 GiB" in mixtral and "| Failed cell |" in mixtral and "| oom |" in mixtral


def test_render_is_deterministic_whatever_the_record_order(matrix, tmp_path, docs):
    shuffled = planted_records(matrix)
    random.Random(7).shuffle(shuffled)
    write(tmp_path / "a" / "one.jsonl", shuffled[:5])
    write(tmp_path / "a" / "two.jsonl", shuffled[5:])
    again = render_docs(matrix, load_results([str(tmp_path / "a" / "*.jsonl")]))
    assert again == docs
    assert render_docs(matrix, load_results([str(tmp_path / "a" / "*.jsonl")])) == again


def test_index_grid_has_a_cell_per_method_and_layout_with_history(matrix, tmp_path):
    records = planted_records(matrix)
    cell = arch_cells(matrix, "LlamaForCausalLM")[0]
    older = record(cell, "fail", run_id="old-run", timestamp="2025-12-01T00:00:00+00:00")
    path = write(tmp_path / "r.jsonl", records)
    db = tmp_path / "h.sqlite"
    history.ingest([write(tmp_path / "old.jsonl", [older]), path], db)
    html = render_docs(matrix, load_results([path]), [history.load_frame(db)])["index.html"]
    groups = len(matrix.methods) * len(matrix.layouts)
    assert html.count('<td class="cell ') == groups * len(matrix.architectures)
    td = re.search(rf'data-layout="{cell.layout}" data-method="{cell.method}".*?</td>',
                   html.split('data-arch="LlamaForCausalLM"')[1], re.S).group(0)
    squares = re.findall(r'class="h s-(\w+)" title="([^"]+)"', td)
    release = cpu_env()["transformers"]
    assert squares[0] == ("fail", f"2025-12-01T00:00:00+00:00 · run old-run · cpu · {release} · fail")
    assert f"<i>{cell.tier}-{cell.check}</i>" in td and "✓ cpu" in td


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


def test_the_real_matrix_renders_a_row_for_every_architecture(tmp_path):
    matrix = load_matrix()
    picked = [c for c in expand(matrix)[0] if c.architecture == sorted(matrix.architectures)[0]]
    path = write(tmp_path / "r.jsonl", [record(c, "pass", timestamp=DAY) for c in picked])
    table = llm_table(render_docs(matrix, load_results([path]))["llm.md"])
    assert sorted(table) == sorted(matrix.architectures)
    assert all(row["transformers"][0] for row in table.values())


def test_cells_an_environment_cannot_run_are_shown_with_their_category(matrix, tmp_path):
    """Remote-code and needs-newer-transformers skips are verdicts, not holes in the table."""
    rows = [record(c, "skip", run_id="cpu-run", timestamp=DAY, category="remote-code",
                   message="Qwen3ForCausalLM exists only as hub remote code")
            for c in arch_cells(matrix, "Qwen3ForCausalLM")]
    out = render(matrix, tmp_path, rows)
    qwen = llm_table(out["llm.md"])["Qwen3ForCausalLM"]
    assert qwen["FSDP2 with SFT / PEFT"][0] == "sft lora ⊘ remote-code"
    assert qwen["transformers"][0].endswith(" ⊘")
    # a row that only waits for the opt-in is not run, never "not supported"
    assert "| Verdict | ⊘ not run (remote code, opt-in) |" in out["models/qwen3.md"]
    assert "**remote-code**" in out["overview.md"]
    assert "exists only as hub remote code" in out["overview.md"]


def test_overview_lists_the_script_choices_the_calls_and_the_known_limits_with_their_links(tmp_path):
    """What a run chooses, which documented call applies each layout, what is known to fail."""
    matrix = load_matrix()
    overview = render_docs(matrix, load_results([]))["overview.md"]
    for choice in matrix.choices.values():
        assert f"`{choice.name}` | `{choice.value}`" in overview
    call = "`from_pretrained(path, distributed_config=DistributedConfig(tp_size=N))`"
    assert f"`distributed_config_tp` | {call}" in overview
    assert "variant `+tp_plan`" in overview
    assert "[peft#3614](https://github.com/huggingface/peft/pull/3614)" in overview
    assert "transformers ==5.24.*" in overview and "image_outputs" in overview
    assert "**gpu-image** (a gate of `make test`): transformers 5.17.0, peft 0.21.0" in overview


def test_records_of_the_older_format_render_the_same_docs(matrix_dir, tmp_path):
    """Schema 1 records (no shape, no variant fields) and schema 2 records give the same bytes: the
    reader fills in the older format's fields, and render uses fields, never parts of an id. The
    records cover what render groups by those fields: variants, a regression, real-shape rows."""
    write_rows(matrix_dir, ROWS)
    with (matrix_dir / "axes.toml").open("a") as handle:
        handle.write(EP_LAYOUT)
    write_rows(matrix_dir, REAL_SHAPE, "real_shapes.toml")
    matrix = load_matrix(matrix_dir)
    shaped = arch_cells(matrix, "LlamaForCausalLM", tier="real-shape")
    assert shaped and {c.shape for c in shaped} == {"Llama-1B"}
    rows = planted_records(matrix) + release_records(matrix, "Qwen3ForCausalLM", "fsdp2", [
        ("5.23.0", "pass", 1, cpu_env()), ("5.24.0", "fail", 2, cpu_env())])
    rows += [record(c, "pass", run_id="shape-run", env=gpu_env(), timestamp=DAY,
                    metrics={"params_total": 1_235_814_400, "peak_reserved_bytes": 9 * 2**30,
                             "tokens_per_s": 5000.0, "mfu": 0.25}) for c in shaped]
    assert any(r["variant"] for r in rows) and any(r["shape"] for r in rows)
    new = render_docs(matrix, load_results([write(tmp_path / "new" / "run.jsonl", rows)]))
    old = render_docs(matrix, load_results([write(tmp_path / "old" / "run.jsonl", [older(r) for r in rows])]))
    for name in new:
        assert old[name] == new[name], name
    llm = new["llm.md"]
    assert all(f"| `meta-llama/Llama-3.2-1B` | {method} | H100 |" in llm for method in ("sft", "lora"))
    assert "`Qwen3ForCausalLM` fails from transformers **5.24**" in llm and "[evidence][3.fsdp2]" in llm
    assert "tiny-train+" in new["index.html"]
