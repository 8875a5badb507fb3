"""Matrix files are named relative to the repo, so a record message never carries the absolute
path of the machine that ran it, while collection still finds each row's file from any cwd."""

from __future__ import annotations

import os
from pathlib import Path

from harness.spec.load import load_matrix
from harness.spec.matrix import REPO_ROOT
from tests.conftest import LLAMA_ROW, write_rows


def test_rows_of_the_repo_matrix_name_their_file_relative_to_the_repo():
    matrix = load_matrix()
    files = {arch.source_file for arch in matrix.architectures.values()}
    assert files and all(f.startswith("matrix/") and f.endswith(".toml") for f in files), files
    for arch in matrix.architectures.values():
        assert arch.source_path == REPO_ROOT / arch.source_file and arch.source_path.is_file()


def test_source_path_does_not_depend_on_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    arch = next(iter(load_matrix().architectures.values()))
    assert not Path(arch.source_file).is_absolute() and arch.source_path.is_file()
    assert Path(os.getcwd()) == tmp_path


def test_a_matrix_outside_the_repo_keeps_its_own_path(matrix_dir):
    path = write_rows(matrix_dir, LLAMA_ROW)
    arch = load_matrix(matrix_dir).architectures["LlamaForCausalLM"]
    assert arch.source_path == path.resolve() and arch.source_file == str(path.resolve())
