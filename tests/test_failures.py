"""A harness bug is never a verdict: where an exception was raised decides its category."""

from __future__ import annotations

import pytest
import torch

from harness.failures import HARNESS_ERROR, CellFailure, classify
from tests.conftest import LLAMA_ROW, write_rows
from tests.test_plugin_e2e import run_matrix


def _raised(call):
    try:
        call()
    except Exception as exc:  # noqa: BLE001 - the test inspects whatever was raised
        return exc
    raise AssertionError("expected an exception")


def test_an_exception_raised_in_harness_code_is_a_harness_error():
    from harness.data.batches import label_tokens

    category, message = classify(_raised(lambda: label_tokens({"labels": None}, per_sequence=False)))
    assert category == HARNESS_ERROR
    assert "harness/data/batches.py" in message and "not a verdict" in message


def test_an_exception_raised_in_a_library_is_the_stacks():
    category, message = classify(_raised(lambda: torch.load("/nonexistent/checkpoint.pt")))
    assert category == "error" and "FileNotFoundError" in message


def test_a_library_importing_an_absent_package_skips_but_a_broken_release_fails():
    import importlib

    category, message = classify(_raised(lambda: importlib.import_module("mamba_ssm_surely_absent")))
    assert category == "stack-absent" and "mamba_ssm_surely_absent" in message
    category, _ = classify(_raised(lambda: importlib.import_module("torch.surely_absent_module")))
    assert category == "error"


def test_a_cell_failure_keeps_its_category_wherever_it_is_raised():
    assert classify(CellFailure("numerics", "curves differ")) == ("numerics", "curves differ")


def test_a_harness_error_fails_the_run_with_exit_3_even_where_failures_are_findings(pytester, matrix_dir,
                                                                                    monkeypatch):
    """A broken batch reaches the training loop: the loop (our code) raises, not the model."""
    from harness.cellrun import CellRun

    write_rows(matrix_dir, LLAMA_ROW)
    monkeypatch.setattr(CellRun, "batch", lambda self: {"input_ids": None, "labels": None})
    outcome, records = run_matrix(pytester, matrix_dir, "--arch", "LlamaForCausalLM", "--tier", "tiny",
                                  "--method", "sft", "-m", "cpu")
    assert outcome.ret == 3
    (record,) = records
    assert (record["status"], record["category"]) == ("fail", HARNESS_ERROR)
    outcome.stdout.fnmatch_lines(["*cell(s) failed with harness-error*"])


@pytest.mark.parametrize("category", ["harness-error"])
def test_a_harness_error_cannot_be_declared_a_known_limit(matrix_dir, category):
    from harness.spec.load import load_matrix
    from harness.spec.matrix import MatrixError

    write_rows(matrix_dir, LLAMA_ROW + f'known_limits = [{{ category = "{category}", reason = "r" }}]\n')
    with pytest.raises(MatrixError, match="known_limits"):
        load_matrix(matrix_dir)
