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


class _ClaimsExperts(torch.nn.Linear):
    """A real torch module that says it routes experts through transformers but has no config."""

    @classmethod
    def _can_set_experts_implementation(cls):
        return True


def test_harness_code_asking_a_torch_module_for_a_missing_attribute_is_a_harness_error():
    """nn.Module.__getattr__ raises inside torch; the code that asked (harness/stacks/placed.py
    reading `.config`) is ours, so the mistake is ours."""
    from harness.stacks.placed import experts_implementation

    exc = _raised(lambda: experts_implementation(_ClaimsExperts(2, 2)))
    assert isinstance(exc, AttributeError) and "config" in str(exc)
    category, message = classify(exc)
    assert category == HARNESS_ERROR
    assert "harness/stacks/placed.py" in message


def test_an_attribute_error_inside_a_librarys_own_method_is_the_stacks():
    """A library's forward asks its own module for a missing attribute (through the same
    nn.Module.__getattr__): the first frame outside it is the library's, so the stack's error."""
    linear = torch.nn.Linear(2, 2)
    del linear.weight
    exc = _raised(lambda: linear(torch.ones(1, 2)))
    assert isinstance(exc, AttributeError) and "weight" in str(exc)
    assert classify(exc)[0] == "error"


def test_a_harness_call_with_arguments_forward_does_not_take_is_a_harness_error():
    """The TypeError is raised in torch's _call_impl (forward never starts): the caller's mistake."""
    from harness.stacks.loop import model_loss

    exc = _raised(lambda: model_loss(torch.nn.Linear(2, 2), {"input_ids": torch.ones(1, 2)}))
    assert isinstance(exc, TypeError)
    category, message = classify(exc)
    assert category == HARNESS_ERROR and "harness/stacks/loop.py" in message


def test_a_type_error_inside_a_librarys_forward_is_the_stacks():
    linear = torch.nn.Linear(2, 2)
    exc = _raised(lambda: linear(torch.ones(1, 3)))  # torch's own matmul refuses the shapes
    assert classify(exc)[0] == "error"


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

