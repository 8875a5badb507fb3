"""Results: corrupt lines are skipped loudly, and "latest" is per cell and per environment.

The helpers at the top make real records with harness.report.records.make_record; the history,
diff and render tests import them so every test writes records the same way.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.report.records import append_record, environment, make_record
from harness.report.results import CorruptRecordWarning, latest, load_results, short_device
from harness.spec.cells import Cell

LLAMA_TINY = Cell("LlamaForCausalLM", "lora", "single", "tiny", "train")
LLAMA_SFT = Cell("LlamaForCausalLM", "sft", "single", "tiny", "train")
GPU_NAME = "NVIDIA H100 80GB HBM3"


def cpu_env(**changes) -> dict:
    return {**environment("cpu", backend="gloo"), **changes}


def gpu_env(name: str = GPU_NAME, **changes) -> dict:
    """A GPU environment as records.environment('cuda') writes it, without needing a GPU."""
    return {**environment("cpu"), "device_type": "cuda", "device_name": name, "device_count": 8,
            "backend": "nccl", **changes}


def record(cell: Cell, status: str, *, run_id: str = "run-a", timestamp: str = "2026-01-01T00:00:00+00:00",
           env: dict | None = None, category: str | None = None, message: str = "",
           metrics: dict | None = None) -> dict:
    """A record from make_record with a fixed timestamp, so that tests are deterministic."""
    if status != "pass" and category is None and status in ("fail", "xfail"):
        category = "numerics"
    made = make_record(cell, status, category=category, message=message, metrics=metrics,
                       env=env or cpu_env(), run_id=run_id)
    made["timestamp"] = timestamp
    made["git_sha"] = "0123456789abcdef"
    return made


def write(path: Path, records: list[dict]) -> Path:
    for rec in records:
        append_record(path, rec)
    return path


def test_loads_files_and_globs_with_flat_environment(tmp_path):
    write(tmp_path / "a.jsonl", [record(LLAMA_TINY, "pass")])
    write(tmp_path / "b.jsonl", [record(LLAMA_SFT, "fail", env=gpu_env(), message="boom")])
    frame = load_results([tmp_path / "a.jsonl", str(tmp_path / "*.jsonl")])
    assert len(frame) == 2  # a.jsonl named twice is read once
    by_cell = frame.set_index("cell_id")
    cpu, gpu = by_cell.loc[LLAMA_TINY.id], by_cell.loc[LLAMA_SFT.id]
    assert (cpu["device_class"], cpu["where"], cpu["where_short"]) == ("cpu", "cpu", "cpu")
    assert (gpu["device_class"], gpu["where"], gpu["where_short"]) == ("gpu", GPU_NAME, "H100")
    assert gpu["message"] == "boom" and gpu["category"] == "numerics"
    assert cpu["category"] is None  # stays None, not NaN, so templates can test it
    assert gpu["source"].endswith("b.jsonl:1")


def test_corrupt_lines_are_skipped_with_a_warning_naming_file_and_line(tmp_path):
    path = write(tmp_path / "r.jsonl", [record(LLAMA_TINY, "pass")])
    with path.open("a") as handle:
        handle.write('{"cell_id": "torn write\n')          # line 2: broken JSON
        handle.write("[1, 2]\n")                           # line 3: not an object
        handle.write(json.dumps({"cell_id": "x"}) + "\n")  # line 4: missing keys
        handle.write("\n")                                 # blank: not a record, not corrupt
    bad_status = {**record(LLAMA_SFT, "pass"), "status": "passed"}
    with path.open("a") as handle:
        handle.write(json.dumps(bad_status) + "\n")         # line 6: unknown status
    write(path, [record(LLAMA_SFT, "pass", timestamp="2026-01-02T00:00:00+00:00")])
    with pytest.warns(CorruptRecordWarning) as caught:
        frame = load_results([path])
    messages = [str(w.message) for w in caught]
    assert len(messages) == 4
    for line, reason in ((2, "not valid JSON"), (3, "expected a JSON object"), (4, "missing keys"),
                         (6, "status 'passed'")):
        assert any(f"{path}:{line}:" in m and reason in m for m in messages), (line, messages)
    assert sorted(frame["cell_id"]) == sorted([LLAMA_SFT.id, LLAMA_TINY.id])


def test_latest_is_per_cell_and_per_environment(tmp_path):
    path = write(tmp_path / "r.jsonl", [
        record(LLAMA_TINY, "pass", run_id="r1", timestamp="2026-01-01T00:00:00+00:00", env=gpu_env()),
        record(LLAMA_TINY, "pass", run_id="r1", timestamp="2026-01-01T00:00:00+00:00"),
        record(LLAMA_TINY, "fail", run_id="r2", timestamp="2026-01-02T00:00:00+00:00"),
        record(LLAMA_TINY, "pass", run_id="r3", timestamp="2026-01-03T00:00:00+00:00",
               env=cpu_env(transformers="4.0.0")),
    ])
    newest = latest(load_results([path]))
    verdicts = {(r["device_class"], r["transformers"]): (r["status"], r["run_id"])
                for r in newest.to_dict("records")}
    current = cpu_env()["transformers"]
    assert verdicts == {
        ("gpu", current): ("pass", "r1"),   # an older GPU pass is not hidden by a newer CPU run
        ("cpu", current): ("fail", "r2"),   # the newer CPU verdict replaces the older one
        ("cpu", "4.0.0"): ("pass", "r3"),   # another transformers version is another environment
    }


def test_same_timestamp_keeps_file_order(tmp_path):
    path = write(tmp_path / "r.jsonl", [record(LLAMA_TINY, "fail", run_id="r1"),
                                        record(LLAMA_TINY, "pass", run_id="r1")])
    assert latest(load_results([path]))["status"].tolist() == ["pass"]


def test_missing_file_is_an_error_and_an_empty_glob_is_empty(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_results([tmp_path / "nope.jsonl"])
    frame = load_results([str(tmp_path / "*.jsonl")])
    assert frame.empty and "cell_id" in frame.columns
    assert latest(frame).empty


def test_short_device_names():
    assert short_device("NVIDIA H100 80GB HBM3") == "H100"
    assert short_device("NVIDIA A100-SXM4-80GB") == "A100-SXM4-80GB"
    assert short_device("AMD Instinct MI300X") == "MI300X"


def older(made: dict) -> dict:
    """A record as schema 1 wrote it (the committed records of 2026-11/12): no shape, no variant, no
    stack (every such record ran on the reference stack)."""
    return {**{k: v for k, v in made.items() if k not in ("shape", "variant", "stack")}, "schema": 1}


def older_record(cell: Cell, status: str = "pass", **kwargs) -> dict:
    return older(record(cell, status, **kwargs))


SHAPED = Cell("LlamaForCausalLM", "sft", "fsdp2", "real-shape", "train", "Llama-3.1-8B", "fully_shard")
VARIANT = Cell("Qwen3MoeForCausalLM", "lora", "ep", "tiny", "train", variant="experts_grouped_mm")


def test_an_older_record_gets_its_shape_and_variant_at_read_time(tmp_path):
    """Schema 1 did not write shape and variant; reading fills them in, so that the frame has the
    same fields whichever format wrote a record, and nothing after it takes an id apart."""
    cells = (LLAMA_TINY, SHAPED, VARIANT, Cell("LlamaForCausalLM", "lora", "tp", "real-shape", "parity",
                                               "Llama-3.2-1B"))
    old = load_results([write(tmp_path / "old.jsonl", [older_record(c) for c in cells])])
    new = load_results([write(tmp_path / "new.jsonl", [record(c, "pass") for c in cells])])
    fields = ["cell_id", "architecture", "method", "layout", "tier", "check", "shape", "variant", "stack",
              "implementation"]
    assert old[fields].to_dict("records") == new[fields].to_dict("records")
    assert old[fields].to_dict("records") == [{"cell_id": c.id, **vars(c)} for c in cells]
    assert "shape" not in old["record"][0]  # the record itself is kept as it was written


def test_an_older_record_whose_id_does_not_follow_its_fields_is_skipped_loudly(tmp_path):
    bad = {**older_record(LLAMA_TINY), "layout": "fsdp2"}  # the id says single
    path = write(tmp_path / "r.jsonl", [bad, older_record(LLAMA_SFT)])
    with pytest.warns(CorruptRecordWarning, match=r"r.jsonl:1: .*LlamaForCausalLM-lora-fsdp2-tiny-train"):
        frame = load_results([path])
    assert frame["cell_id"].tolist() == [LLAMA_SFT.id]
