"""Records: complete, self-describing, and never interleaved by concurrent writers."""

from __future__ import annotations

import json
import multiprocessing

from harness.report.records import append_record, environment, make_record
from harness.spec.cells import Cell

CELL = Cell("LlamaForCausalLM", "lora", "single", "tiny", "train")


def _writer(path: str, worker: int, count: int) -> None:
    # A fixed env: what is under test is the append, and environment() would import torch,
    # transformers and peft in every spawned writer (seconds each, nothing to do with interleaving).
    env = {"python": "3.11", "device_type": "cpu"}
    for i in range(count):
        # A long message makes a torn write visible as a broken JSON line.
        record = make_record(CELL, "pass", message=f"w{worker}-{i}-" + "x" * 20000, env=env, run_id="r")
        append_record(path, record)


def test_record_has_every_documented_key():
    record = make_record(CELL, "fail", category="numerics", message="m", env=environment("cpu"), run_id="r")
    assert set(record) == {"schema", "cell_id", "architecture", "method", "layout", "tier", "check",
                           "shape", "variant", "stack", "implementation", "status", "category", "message",
                           "traceback", "metrics", "code", "env", "git_sha", "run_id", "timestamp"}
    assert record["cell_id"] == CELL.id and record["schema"] == 4
    assert (record["shape"], record["variant"], record["stack"]) == ("", "", "native")
    assert (record["implementation"], record["code"]) == ("", {})
    assert {"python", "torch", "transformers", "peft", "device_name", "device_count"} <= set(record["env"])
    assert record["env"]["torch"] and record["env"]["transformers"]


def test_record_carries_every_field_of_its_cell():
    """Readers group by the fields and never take the id apart, so a shaped variant writes both."""
    cell = Cell("LlamaForCausalLM", "sft", "fsdp2", "real-shape", "train", "Llama-3.1-8B", "fully_shard")
    record = make_record(cell, "pass", env=environment("cpu"), run_id="r")
    assert record["cell_id"] == "LlamaForCausalLM-sft-fsdp2-real-shape-train@Llama-3.1-8B+fully_shard"
    assert {k: record[k] for k in ("architecture", "method", "layout", "tier", "check", "shape",
                                   "variant", "stack", "implementation")} == vars(cell)


def test_a_stack_other_than_the_reference_names_itself_in_id_and_record():
    cell = Cell("LlamaForCausalLM", "lora", "single", "tiny", "train", stack="trl")
    record = make_record(cell, "pass", env=environment("cpu"), run_id="r")
    assert record["cell_id"] == "trl:LlamaForCausalLM-lora-single-tiny-train"
    assert record["stack"] == "trl"


def test_a_custom_implementation_names_itself_in_id_and_record():
    cell = Cell("DeciLMForCausalLM", "lora", "single", "tiny", "train", implementation="custom")
    record = make_record(cell, "pass", env=environment("cpu"), run_id="r",
                         code={"kind": "custom", "module": "custom_models.decilm"})
    assert record["cell_id"] == "DeciLMForCausalLM-lora-single-tiny-train~custom"
    assert (record["implementation"], record["code"]["kind"]) == ("custom", "custom")


def test_concurrent_writers_never_interleave(tmp_path):
    path = tmp_path / "records.jsonl"
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=_writer, args=(str(path), w, 40)) for w in range(4)]
    for proc in workers:
        proc.start()
    for proc in workers:
        proc.join(60)
        assert proc.exitcode == 0
    lines = path.read_text().splitlines()
    assert len(lines) == 160
    messages = {json.loads(line)["message"].split("-x")[0] for line in lines}
    assert len(messages) == 160


def test_a_class_of_another_package_than_transformers_is_named_in_code_as_the_stacks_own():
    """A transformers row whose stack ran its own class (NeMo AutoModel's): `code` names that class,
    its package and release, and its kind is no longer transformers'."""
    from harness.run.runner import STACK_OWN, with_class_that_ran

    ran = {"class": "nemo_automodel.components.models.qwen3_next.model.Qwen3NextForCausalLM",
           "package": "nemo_automodel", "release": "0.7.0"}
    code = with_class_that_ran({"kind": "transformers", "transformers": "5.17.0"}, ran)
    assert code["kind"] == STACK_OWN and code["class"] == ran["class"] and code["release"] == "0.7.0"
    assert with_class_that_ran({"kind": "transformers"}, None) == {"kind": "transformers"}
