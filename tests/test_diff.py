"""Diff: a regression planted between two runs is found, and the exit code says so."""

from __future__ import annotations

import json

from harness.cli import main
from harness.report import history
from harness.spec.cells import Cell
from tests.test_results import LLAMA_SFT, LLAMA_TINY, gpu_env, record, write

QWEN = Cell("Qwen3ForCausalLM", "sft", "single", "tiny", "train")
GONE = Cell("GemmaForCausalLM", "sft", "single", "tiny", "train")
DAY1, DAY2, DAY3 = (f"2026-01-0{d}T00:00:00+00:00" for d in (1, 2, 3))


def two_runs(tmp_path):
    before = write(tmp_path / "before.jsonl", [
        record(LLAMA_TINY, "pass", run_id="r1", timestamp=DAY1),
        record(LLAMA_SFT, "fail", run_id="r1", timestamp=DAY1, category="oom", message="out of memory"),
        record(GONE, "pass", run_id="r1", timestamp=DAY1),
    ])
    after = write(tmp_path / "after.jsonl", [
        record(LLAMA_TINY, "fail", run_id="r2", timestamp=DAY2, category="numerics",
               message="loss did not fall: 6.2 -> 6.3"),
        record(LLAMA_SFT, "pass", run_id="r2", timestamp=DAY2),
        record(QWEN, "pass", run_id="r2", timestamp=DAY2),
    ])
    return before, after


def test_planted_regression_between_two_files_fails_the_exit_code(tmp_path, capsys):
    before, after = two_runs(tmp_path)
    assert main(["diff", str(before), str(after)]) == 1
    table = capsys.readouterr().out
    assert "Regressions (pass -> fail): 1" in table
    assert LLAMA_TINY.id in table and "[numerics] loss did not fall" in table

    assert main(["diff", str(before), str(after), "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert [c["cell_id"] for c in out["regressions"]] == [LLAMA_TINY.id]
    assert out["regressions"][0]["before"] == "pass" and out["regressions"][0]["after"] == "fail"
    assert [c["cell_id"] for c in out["fixes"]] == [LLAMA_SFT.id]
    assert [c["cell_id"] for c in out["new"]] == [QWEN.id]
    assert [c["cell_id"] for c in out["vanished"]] == [GONE.id]
    assert out["a"]["run_ids"] == ["r1"] and out["b"]["run_ids"] == ["r2"]


def test_no_regression_exits_zero(tmp_path, capsys):
    before, after = two_runs(tmp_path)
    assert main(["diff", str(after), str(before)]) == 1  # reversed: the fix becomes a regression
    assert main(["diff", str(before), str(before)]) == 0
    assert "Regressions (pass -> fail): 0" in capsys.readouterr().out


def test_run_ids_from_the_history_and_the_default_pair(tmp_path, capsys):
    before, after = two_runs(tmp_path)
    gpu_run = write(tmp_path / "gpu.jsonl", [
        record(LLAMA_TINY, "pass", run_id="g1", timestamp=DAY3, env=gpu_env())])
    db = tmp_path / "h.sqlite"
    history.ingest([before, after], db)
    assert main(["diff", "r1", "r2", "--db", str(db), "--json"]) == 1
    assert len(json.loads(capsys.readouterr().out)["regressions"]) == 1

    # Newest CPU run r2 against the CPU run before it, not against a GPU run in between.
    history.ingest([gpu_run], db)
    write(tmp_path / "cpu3.jsonl", [record(LLAMA_TINY, "pass", run_id="r3",
                                           timestamp="2026-01-04T00:00:00+00:00")])
    history.ingest([tmp_path / "cpu3.jsonl"], db)
    assert main(["diff", "--db", str(db), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["a"]["run_ids"], out["b"]["run_ids"]) == (["r2"], ["r3"])
    assert [c["cell_id"] for c in out["fixes"]] == [LLAMA_TINY.id]


def test_unknown_run_is_a_usage_error(tmp_path, capsys):
    before, _ = two_runs(tmp_path)
    db = tmp_path / "h.sqlite"
    history.ingest([before], db)
    assert main(["diff", "r1", "nope", "--db", str(db)]) == 2
    assert "no run 'nope'" in capsys.readouterr().err
    assert main(["diff", "--db", str(db)]) == 2
    assert "need two runs" in capsys.readouterr().err
    assert main(["diff", "r1", "--db", str(db)]) == 2
