"""The nightly pipeline simulated on the CPU: shards are a partition, a regression fails the merge.

One real simulation runs (2 shards over 4 tiny cells of two architectures) against a copy of
the matrix in which LlamaForCausalLM's row is broken (KV heads that do not divide the heads),
with the committed CPU evidence as the "previous nightly", where those cells passed.
"""

from __future__ import annotations

import json
import shutil

import pytest

from harness.report import nightly
from harness.report.records import REPO_ROOT

ARCHS = "LlamaForCausalLM,Qwen3ForCausalLM"
SELECTION = ["-m", "cpu", "--tier", "tiny", "--layout", "single", "--check", "train",
             "--arch", ARCHS]
PLANTED = {"LlamaForCausalLM-sft-single-tiny-train", "LlamaForCausalLM-lora-single-tiny-train"}


def record(cell_id: str, status: str, timestamp: str, run_id: str) -> dict:
    arch, method, layout, tier, check = cell_id.split("-")
    return {"schema": 1, "cell_id": cell_id, "architecture": arch, "method": method,
            "layout": layout, "tier": tier, "check": check, "status": status,
            "category": None if status == "pass" else "error", "message": "", "traceback": "",
            "metrics": {"duration_s": 1.5}, "git_sha": "x", "run_id": run_id,
            "timestamp": timestamp,
            "env": {"device_type": "cpu", "device_name": "cpu", "transformers": "5.23.0",
                    "torch": "2.13.0", "python": "3.11", "peft": "0.21.2", "device_count": 1,
                    "world_size": 1, "backend": None, "platform": "linux"}}


def write(path, records) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


@pytest.fixture(scope="module")
def broken_run(tmp_path_factory):
    pytest.importorskip("pytest_split", reason="pytest-split (the dev extra) shards the nightly")
    tmp = tmp_path_factory.mktemp("nightly")
    matrix = tmp / "matrix"
    shutil.copytree(REPO_ROOT / "matrix", matrix)
    arch_file = matrix / "architectures.toml"
    text = arch_file.read_text()
    header = "[architectures.LlamaForCausalLM]\n"
    assert header in text
    # The row's known limits (LoRA under tp) cover no cell once its KV heads stop dividing over 2
    # ranks, which the loader refuses: the broken copy drops them.
    row = text.index(header)
    limits = text.index("known_limits = [\n", row)
    text = text[:limits] + text[text.index("]\n", limits) + 2:]
    arch_file.write_text(text.replace(header, header + "tiny = { num_key_value_heads = 3 }\n"))
    previous = write(tmp / "previous.jsonl", [
        record(f"{arch}-{method}-single-tiny-train", "pass", "2026-01-01T00:00:00+00:00", "prev")
        for arch in ARCHS.split(",") for method in ("sft", "lora")])
    lines: list[str] = []
    code = nightly.simulate(2, SELECTION, tmp / "work", previous=previous, matrix_dir=matrix,
                            log=lines.append)
    return code, tmp / "work", "\n".join(lines)


def test_shards_are_disjoint_and_complete(broken_run):
    _, work, log = broken_run
    plan = json.loads((work / "partition.json").read_text())
    groups = [set(g) for g in plan["groups"]]
    assert plan["total"] == 4 and all(groups), log
    assert not (groups[0] & groups[1]), log
    assert sum(len(g) for g in groups) == plan["total"], log
    assert not plan["missing"] and not plan["duplicated"] and not plan["foreign"], log
    assert "disjoint and complete" in log


def test_planted_regression_fails_the_merge(broken_run):
    code, work, log = broken_run
    assert code == 1, log
    assert set(PLANTED) <= set(log.split("REGRESSIONS")[-1].replace(",", " ").split()), log
    merged = [json.loads(line) for line in (work / "merged.jsonl").read_text().splitlines()]
    # every selected cell ran exactly once, in one shard or the other
    assert sorted(r["cell_id"] for r in merged) == sorted(
        f"{a}-{m}-single-tiny-train" for a in ARCHS.split(",") for m in ("sft", "lora"))
    assert len({r["run_id"] for r in merged}) == 1
    assert (work / "docs" / "llm.md").is_file()
    durations = json.loads((work / "durations.updated").read_text())
    assert len(durations) == 4 and all(nid.endswith("[cpu]") for nid in durations)


def test_check_partition_reports_overlap_and_gaps():
    plan = nightly.check_partition(["a", "b", "c"], [["a", "b"], ["b", "x"]])
    assert not plan.ok
    assert plan.missing == ["c"] and plan.duplicated == ["b"] and plan.foreign == ["x"]
    assert nightly.check_partition(["a", "b"], [["b"], ["a"]]).ok


def test_merge_exit_code_follows_regressions(tmp_path):
    cell = "LlamaForCausalLM-sft-single-tiny-train"
    previous = write(tmp_path / "prev.jsonl", [record(cell, "pass", "2026-01-01T00:00:00+00:00", "a")])
    failing = write(tmp_path / "s1.jsonl", [record(cell, "fail", "2026-01-02T00:00:00+00:00", "b")])
    passing = write(tmp_path / "s2.jsonl", [record(cell, "pass", "2026-01-02T00:00:00+00:00", "c")])
    bad = nightly.merge([failing], tmp_path / "m1.jsonl", tmp_path / "h1.sqlite", previous,
                        tmp_path / "d1")
    good = nightly.merge([passing], tmp_path / "m2.jsonl", tmp_path / "h2.sqlite", previous,
                         tmp_path / "d2", durations=tmp_path / "durations")
    assert (bad.exit_code, bad.regressions) == (1, [cell])
    assert (good.exit_code, good.regressions) == (0, [])
    assert json.loads((tmp_path / "durations").read_text()) == {
        f"matrix/architectures.toml::{cell}[cpu]": 1.5}


def test_regression_in_one_shard_fails_the_merge(tmp_path):
    """Two shards, the other one green: one failing cell in one shard is enough."""
    cells = ["LlamaForCausalLM-sft-single-tiny-train", "Qwen3ForCausalLM-sft-single-tiny-train"]
    previous = write(tmp_path / "prev.jsonl",
                     [record(c, "pass", "2026-01-01T00:00:00+00:00", "a") for c in cells])
    green = write(tmp_path / "shard-1.jsonl", [record(cells[0], "pass", "2026-01-02T00:00:00+00:00", "n")])
    red = write(tmp_path / "shard-2.jsonl", [record(cells[1], "fail", "2026-01-02T00:00:01+00:00", "n")])
    result = nightly.merge([green, red], tmp_path / "merged.jsonl", tmp_path / "h.sqlite", previous,
                           tmp_path / "docs")
    assert (result.exit_code, result.regressions, result.records) == (1, [cells[1]], 2)
