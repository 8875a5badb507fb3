"""Machine paths in messages are shown without the machine's prefix; other text is untouched."""

from __future__ import annotations

import pytest

from harness.report.machine_paths import has_machine_path, strip_machine_paths


@pytest.mark.parametrize(("text", "shown"), [
    ("give the row a tp_plan table in /work/main/.evidence/matrix/architectures.toml to run",
     "give the row a tp_plan table in matrix/architectures.toml to run"),
    ('File "/tmp/ci/.venv/lib/python3.11/site-packages/peft/tuners/lora/layer.py", line 3',
     'File "peft/tuners/lora/layer.py", line 3'),
    ("/opt/torch/.venv/lib/python3.12/site-packages/torch/nn/modules/module.py:1775",
     "torch/nn/modules/module.py:1775"),
    ("/tmp/newest/transformers/models/llama4/modeling_llama4.py", "…/llama4/modeling_llama4.py"),
    ("/usr/lib/python3.12/contextlib.py", "contextlib.py"),
    ("(/work/wt/harness/checks/train.py)", "(harness/checks/train.py)"),
    ("checkpoint /root/.cache/compat-harness/tiny/Llama-ab12", "checkpoint …/tiny/Llama-ab12"),
])
def test_machine_prefixes_are_dropped(text, shown):
    assert strip_machine_paths(text) == shown
    assert not has_machine_path(strip_machine_paths(text))


@pytest.mark.parametrize("text", [
    "loss 1/2 of 3/6 cells", "https://huggingface.co/meta-llama/Llama-3.2-1B", "a / b",
    "meta-llama/Llama-3.2-1B", "</script>", "dtype float32 rtol 1e-05/atol 1e-06",
])
def test_other_text_is_left_alone(text):
    assert strip_machine_paths(text) == text and not has_machine_path(text)
