"""The pytest plugin end to end on the CPU: real torch, transformers and peft on tiny models.

Each test runs pytest inside pytest (pytester) against a matrix directory of its own, so the
rows can be made to fail in each documented way.
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import LLAMA_ROW, write_rows


def run_matrix(pytester, matrix_dir, *args, subprocess: bool = False):
    """Run the matrix in matrix_dir; only `train` on `single` unless the test names others.

    `subprocess`: in a fresh interpreter, for a stack whose libraries register global state once
    per process (datasets' pyarrow extension types), which pytester's in-process run would have
    them register twice when it restores sys.modules between runs."""
    if "--check" not in args:
        args = (*args, "--check", "train")
    if "--layout" not in args:  # multi-rank layouts have their own tests (test_layout_cells.py)
        args = (*args, "--layout", "single")
    results = pytester.path / "records.jsonl"
    run = pytester.runpytest_subprocess if subprocess else pytester.runpytest_inprocess
    outcome = run(str(matrix_dir), "--matrix-dir", str(matrix_dir), "--results", str(results),
                  "-p", "no:cacheprovider", *args)
    records = [json.loads(x) for x in results.read_text().splitlines()] if results.exists() else []
    return outcome, records


def test_llama_sft_and_lora_train_on_cpu(pytester, matrix_dir):
    write_rows(matrix_dir, LLAMA_ROW)
    outcome, records = run_matrix(pytester, matrix_dir, "--arch", "LlamaForCausalLM", "--tier", "tiny",
                                  "-m", "cpu")
    outcome.assert_outcomes(passed=2, deselected=2)
    assert sorted(r["cell_id"] for r in records) == [
        "LlamaForCausalLM-lora-single-tiny-train", "LlamaForCausalLM-sft-single-tiny-train"]
    for record in records:
        assert record["status"] == "pass"
        losses = record["metrics"]["losses"]
        assert losses[-1] < losses[0]
        assert record["env"]["device_type"] == "cpu" and record["env"]["transformers"]
        # `code` names the class that ran, with its package and release (peft's wrapper looked through)
        assert record["code"]["class"] == "transformers.models.llama.modeling_llama.LlamaForCausalLM"
        assert (record["code"]["package"], record["code"]["release"]) == (
            "transformers", record["env"]["transformers"])
        assert record["code"]["kind"] == "transformers"
    lora = next(r for r in records if r["method"] == "lora")
    assert "model.layers.0.self_attn.q_proj" in lora["metrics"]["lora_modules"]
    assert lora["metrics"]["params_trainable"] < lora["metrics"]["params_total"] / 5
    outcome.stdout.fnmatch_lines(["*compat-harness verdicts*", "LlamaForCausalLM*PASS*2 pass*"])


def test_gpu_cells_skip_with_a_reason_without_cuda(pytester, matrix_dir):
    write_rows(matrix_dir, LLAMA_ROW)
    outcome, records = run_matrix(pytester, matrix_dir, "-m", "gpu", "--arch", "LlamaForCausalLM",
                                  "--tier", "tiny", "-rs")
    outcome.assert_outcomes(skipped=2, deselected=2)
    outcome.stdout.fnmatch_lines(["*no CUDA device on this machine*"])
    assert records == []


def test_unknown_arch_is_a_usage_error_with_close_matches(pytester, matrix_dir):
    write_rows(matrix_dir, LLAMA_ROW)
    outcome, _ = run_matrix(pytester, matrix_dir, "--arch", "LlamaForCasualLM")
    assert outcome.ret == pytest.ExitCode.USAGE_ERROR
    outcome.stderr.fnmatch_lines(["*unknown architecture 'LlamaForCasualLM'; did you mean LlamaForCausalLM*"])


def test_matrix_error_is_a_usage_error_naming_the_file(pytester, matrix_dir):
    path = write_rows(matrix_dir, LLAMA_ROW + "moe = 3\n")
    outcome, _ = run_matrix(pytester, matrix_dir)
    assert outcome.ret == pytest.ExitCode.USAGE_ERROR
    outcome.stderr.fnmatch_lines([f"*{path}: architectures.LlamaForCausalLM.moe = 3: must be true or false*"])


def test_comma_lists_and_repeats_select_the_same_cells(pytester, matrix_dir):
    write_rows(matrix_dir, LLAMA_ROW + LLAMA_ROW.replace("LlamaForCausalLM", "Qwen3ForCausalLM")
               .replace('"llama"', '"qwen3"'))
    a = pytester.runpytest_inprocess(str(matrix_dir), "--matrix-dir", str(matrix_dir), "--collect-only",
                                     "-q", "--arch", "LlamaForCausalLM,Qwen3ForCausalLM", "--method", "sft",
                                     "--check", "train", "--layout", "single")
    b = pytester.runpytest_inprocess(str(matrix_dir), "--matrix-dir", str(matrix_dir), "--collect-only",
                                     "-q", "--arch", "LlamaForCausalLM", "--arch", "Qwen3ForCausalLM",
                                     "--method", "sft", "--check", "train", "--layout", "single")
    lines_a = [x for x in a.outlines if "::" in x]
    lines_b = [x for x in b.outlines if "::" in x]
    assert lines_a == lines_b and len(lines_a) == 8  # 2 archs x 2 tiers x 2 devices


UNKNOWN_TYPE_ROW = """
[architectures.FutureForCausalLM]
families = ["Future"]
examples = ["org/future-7b"]
auto_class = "AutoModelForCausalLM"
model_type = "future_model_type"
min_transformers = "99.0"
"""
REMOTE_ROW = UNKNOWN_TYPE_ROW.replace("FutureForCausalLM", "RemoteForCausalLM").replace(
    'min_transformers = "99.0"', "trust_remote_code = true")


@pytest.mark.parametrize(
    ("row", "category", "fragment"),
    [
        (UNKNOWN_TYPE_ROW, "needs-newer-transformers", "has no model type 'future_model_type'"),
        (REMOTE_ROW, "remote-code",
         "RemoteForCausalLM is hub remote code (org/future-7b), run from the local HF cache only with "
         "--trust-remote-code"),
    ],
)
def test_unknown_model_types_are_reported_with_category_not_crashed(pytester, matrix_dir, row, category,
                                                                      fragment):
    write_rows(matrix_dir, row)
    outcome, records = run_matrix(pytester, matrix_dir, "-m", "cpu", "--tier", "tiny", "-rs")
    outcome.assert_outcomes(skipped=2, deselected=2)
    assert {r["category"] for r in records} == {category}
    assert all(fragment in r["message"] for r in records)
    outcome.stdout.fnmatch_lines([f"*[[]{category}[]]*"])


def test_peft_refusal_is_peft_unsupported_and_known_limits_make_it_xfail(pytester, matrix_dir):
    row = LLAMA_ROW + 'lora_targets = ["norm"]\n'  # model.norm exists, but peft cannot wrap an RMSNorm
    write_rows(matrix_dir, row)
    outcome, records = run_matrix(pytester, matrix_dir, "-m", "cpu", "--tier", "tiny", "--method", "lora")
    outcome.assert_outcomes(failed=1, deselected=1)
    assert records[0]["category"] == "peft-unsupported" and records[0]["status"] == "fail"
    assert "LlamaRMSNorm" in records[0]["message"]

    write_rows(matrix_dir, row + 'known_limits = [{ category = "peft-unsupported", method = "lora", '
                                 'reason = "adapter targets are wrong on purpose" }]\n')
    outcome, records = run_matrix(pytester, matrix_dir, "-m", "cpu", "--tier", "tiny", "--method", "lora")
    outcome.assert_outcomes(xfailed=1, deselected=1)
    assert records[-1]["status"] == "xfail"


def test_stale_known_limit_fails_the_item(pytester, matrix_dir):
    limit = 'known_limits = [{ category = "oom", method = "sft", reason = "old" }]\n'
    write_rows(matrix_dir, LLAMA_ROW + limit)
    outcome, records = run_matrix(pytester, matrix_dir, "-m", "cpu", "--tier", "tiny",
                                  "--method", "sft")
    outcome.assert_outcomes(failed=1, deselected=1)
    assert records[0]["status"] == "pass"
    outcome.stdout.fnmatch_lines(["*remove that known_limits entry*"])
    # the verdict table counts the cell as pytest does (failed, as a strict XPASS), never as a pass
    outcome.stdout.fnmatch_lines(["*compat-harness verdicts*",
                                  "LlamaForCausalLM*FAIL*1 fail:known-limit-stale",
                                  "*1 failed, 1 deselected*"])
    outcome.stdout.no_re_match_line(r"LlamaForCausalLM +\w+ +(.*, )?\d+ pass(,|$)")


def test_records_of_a_run_without_results_go_to_a_file_of_its_own(pytester, matrix_dir, monkeypatch):
    """A plain run never appends to a file another run (or `make matrix`'s report) reads."""
    from harness.report import records as records_module

    monkeypatch.setattr(records_module, "LOCAL_RECORDS", pytester.path / "local-records")
    write_rows(matrix_dir, UNKNOWN_TYPE_ROW)  # two cells that write a record without training
    args = (str(matrix_dir), "--matrix-dir", str(matrix_dir), "-p", "no:cacheprovider", "-m", "cpu",
            "--tier", "tiny", "--layout", "single", "--check", "train")
    for run_id in ("run-a", "run-b"):
        pytester.runpytest_inprocess(*args, "--run-id", run_id).assert_outcomes(skipped=2, deselected=2)
    files = sorted((pytester.path / "local-records").iterdir())
    assert [f.name for f in files] == ["run-a.jsonl", "run-b.jsonl"]
    for path in files:
        assert {json.loads(line)["run_id"] for line in path.read_text().splitlines()} == {path.stem}


def test_diverging_training_is_numerics(pytester, matrix_dir):
    write_rows(matrix_dir, LLAMA_ROW)
    axes = (matrix_dir / "axes.toml").read_text().replace("lr = 1e-3", "lr = 1e30")
    (matrix_dir / "axes.toml").write_text(axes)
    outcome, records = run_matrix(pytester, matrix_dir, "-m", "cpu", "--tier", "tiny", "--method", "sft")
    outcome.assert_outcomes(failed=1, deselected=1)
    assert records[0]["category"] == "numerics"
    assert "loss" in records[0]["message"]
    # a deliberate verdict is shown as its message, not a traceback through the harness's frames
    outcome.stdout.fnmatch_lines(["*LlamaForCausalLM-sft-single-tiny-train on cpu: [[]numerics[]] *"])
    assert "Traceback" not in outcome.stdout.str() and "harness/checks" not in outcome.stdout.str()
    assert "Traceback" in records[0]["traceback"]  # the record keeps it


ROW = "architectures.LlamaForCausalLM"


@pytest.mark.parametrize(
    ("extra", "method", "key", "close"),
    [
        ('lora_targets = ["q_proj", "v_prj"]\n', "lora", f"{ROW}.lora_targets[1]", "v_proj"),
        ("lora_targets = '^model\\.layers\\..*\\.q_prj$'\n", "lora", f"{ROW}.lora_targets", ""),
        ('lora_exclude = ["down_prj"]\n', "lora", f"{ROW}.lora_exclude[0]", "down_proj"),
        ('sft_frozen = ["vision_tower"]\n', "sft", f"{ROW}.sft_frozen[0]", ""),
    ],
)
def test_a_module_name_that_matches_nothing_is_a_matrix_error(pytester, matrix_dir, extra, method, key,
                                                               close):
    """Found only once the model is built, so at run time: matrix-error, never the stack's category."""
    path = write_rows(matrix_dir, LLAMA_ROW + extra)
    outcome, records = run_matrix(pytester, matrix_dir, "-m", "cpu", "--tier", "tiny", "--method", method)
    outcome.assert_outcomes(failed=1, deselected=1)
    (record,) = records
    assert record["category"] == "matrix-error" and record["status"] == "fail"
    message = record["message"]
    assert message.startswith(f"{path}: {key} = ") and "matches no" in message
    assert "model.layers.0.self_attn.q_proj" in message  # the module names that exist
    assert close in message


def collected(argv: list[str]) -> list[str]:
    """Node ids that `pytest --collect-only -q ARGV` lists, run as a user runs it (from the repo)."""
    import subprocess
    import sys

    from harness.report.records import REPO_ROOT

    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                           *argv], cwd=REPO_ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return [line for line in done.stdout.splitlines() if "::" in line]


def test_matrix_dir_is_collected_in_every_spelling(tmp_path):
    """--matrix-dir DIR, DIR --matrix-dir DIR and --matrix-dir=DIR collect DIR's cells, all of them."""
    import shutil

    from harness.spec.matrix import DEFAULT_MATRIX_DIR

    directory = tmp_path / "matrix"
    shutil.copytree(DEFAULT_MATRIX_DIR, directory)
    rows = directory / "architectures.toml"
    text = rows.read_text()
    start = text.index("[architectures.GemmaForCausalLM]")
    rows.write_text(text[:start] + text[text.index("[architectures.Gemma2ForCausalLM]"):])
    selection = ["--tier", "tiny", "--layout", "single"]
    whole = collected(["matrix", *selection])
    gemma = [n for n in whole if "::GemmaForCausalLM-" in n]
    assert gemma
    spellings = (["--matrix-dir", str(directory)], [str(directory), "--matrix-dir", str(directory)],
                 [f"--matrix-dir={directory}"])
    for argv in spellings:
        ids = collected([*argv, *selection])
        assert len(ids) == len(whole) - len(gemma), argv
        assert all(n.split("::")[0].endswith(".toml") for n in ids), argv
        assert not [n for n in ids if "::GemmaForCausalLM-" in n]


def test_a_stack_whose_packages_are_absent_skips_with_its_install_command(pytester, matrix_dir):
    """The TRL stack asks for a package this environment does not have: its cells skip with the
    category and the install command, before anything of the stack is imported; native runs."""
    axes = matrix_dir / "axes.toml"
    axes.write_text(axes.read_text().replace('packages = ["trl", "accelerate", "datasets"]',
                                             'packages = ["trl", "no_such_package_for_the_test"]'))
    write_rows(matrix_dir, LLAMA_ROW)
    outcome, records = run_matrix(pytester, matrix_dir, "--stack", "native,trl", "--arch", "LlamaForCausalLM",
                                  "--tier", "tiny", "-m", "cpu", "--method", "sft", "-rs")
    outcome.assert_outcomes(passed=1, skipped=1, deselected=2)
    by_id = {r["cell_id"]: r for r in records}
    skipped = by_id["trl:LlamaForCausalLM-sft-single-tiny-train"]
    assert (skipped["status"], skipped["category"], skipped["stack"]) == ("skip", "stack-absent", "trl")
    assert "no_such_package_for_the_test" in skipped["message"]
    assert "pip install 'compat-harness[trl]'" in skipped["message"]
    assert by_id["LlamaForCausalLM-sft-single-tiny-train"]["status"] == "pass"


def test_the_trl_stack_trains_a_tiny_llama_and_proves_one_device(pytester, matrix_dir):
    """SFTTrainer on a tiny checkpoint (its tokenizer saved beside it): losses from its log history,
    the adapters move and the base does not, and the record says what ran."""
    write_rows(matrix_dir, LLAMA_ROW)
    outcome, records = run_matrix(pytester, matrix_dir, "--stack", "trl", "--arch", "LlamaForCausalLM",
                                  "--tier", "tiny", "-m", "cpu", "--method", "lora", subprocess=True)
    outcome.assert_outcomes(passed=1, deselected=1)
    (record,) = records
    assert record["cell_id"] == "trl:LlamaForCausalLM-lora-single-tiny-train" and record["stack"] == "trl"
    metrics = record["metrics"]
    assert metrics["losses"][-1] < metrics["losses"][0]
    assert len(metrics["losses"]) == len(metrics["grad_norms"])
    assert metrics["api_call"].startswith("SFTTrainer(model=path")
    assert metrics["layout_proof"]["fsdp_modules"] == 0 and metrics["layout_proof"]["dtensor_sharded"] == {}
    assert metrics["weights_frozen"] > 0 and record["env"]["trl"]
