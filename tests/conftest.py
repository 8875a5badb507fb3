"""Fixtures shared by the harness's own tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import transformers.models.llama.modeling_llama  # noqa: F401

# pytester's in-process runs drop every module first imported inside them, and importing torch
# a second time crashes the interpreter; loading the whole stack here keeps it loaded once.
import harness.checks.dcp_roundtrip  # noqa: F401
import harness.checks.generate  # noqa: F401
import harness.checks.parity  # noqa: F401
import harness.checks.peft_roundtrip  # noqa: F401
import harness.run.hardware  # noqa: F401
import harness.run.pool  # noqa: F401
import harness.run.runner  # noqa: F401
import harness.stacks.native.placement  # noqa: F401
from harness.spec.matrix import DEFAULT_MATRIX_DIR

torch.cuda.is_available()

pytest_plugins = ["pytester"]

AXES = DEFAULT_MATRIX_DIR / "axes.toml"

LLAMA_ROW = """
[architectures.LlamaForCausalLM]
families = ["Llama"]
examples = ["meta-llama/Llama-3.2-1B"]
auto_class = "AutoModelForCausalLM"
model_type = "llama"
"""


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Tiny checkpoints go to one cache per test session, never the user's home."""
    monkeypatch.setenv("COMPAT_HARNESS_CACHE", str(tmp_path_factory.getbasetemp() / "harness-cache"))


@pytest.fixture
def matrix_dir(tmp_path) -> Path:
    """A matrix directory with the real axes and whatever rows a test writes next to them."""
    directory = tmp_path / "matrix"
    directory.mkdir()
    shutil.copy(AXES, directory / "axes.toml")
    return directory


def write_rows(matrix_dir: Path, text: str, name: str = "architectures.toml") -> Path:
    path = matrix_dir / name
    path.write_text(text)
    return path
