"""The harness's verdict on LoRA under tensor parallel is the stack's own, message for message.

The same tiny Llama goes through the harness's cell (LlamaForCausalLM-lora-tp-tiny-train) and
through tests/plain_stack.py, which is torch + transformers + peft as a user writes them, with
no harness code. Both must pass, or both fail with the same exception and message.
"""

from __future__ import annotations

import re

import pytest

from harness.ckpt.tiny import tiny_checkpoint
from harness.run.pool import get_pool
from harness.run.ranks import PoolTaskError
from harness.run.runner import run_cell
from harness.spec.cells import Cell
from harness.spec.load import load_matrix


def _exception(message: str) -> str:
    """The exception part of a record or pool message ("rank 0: RuntimeError: ...")."""
    return re.sub(r"^(known limit \(.*?\): )?rank \d+: ", "", message, flags=re.S).strip()


@pytest.mark.parametrize("variant", ["", "tp_plan"])
def test_lora_under_tp_harness_matches_the_plain_stack(variant):
    matrix = load_matrix()
    cell = Cell("LlamaForCausalLM", "lora", "tp", "tiny", "train", "", variant)
    outcome = run_cell(matrix, cell, "cpu")
    if outcome.category == "not-offered":
        pytest.skip(outcome.message)
    path = str(tiny_checkpoint(matrix.architectures["LlamaForCausalLM"], matrix))
    try:
        get_pool(2, "cpu").run("tests.plain_stack:lora_tp_task", {"path": path}, 120)
        plain = None
    except PoolTaskError as exc:
        plain = _exception(exc.message)
    if plain is None:
        assert outcome.status == "pass", outcome.message
    else:
        assert outcome.status in ("fail", "xfail"), "the plain stack fails; the harness must not pass"
        assert _exception(outcome.message) == plain
