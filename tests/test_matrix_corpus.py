"""The corpus of malformed matrices (tests/matrix_corpus.toml) through every entry point.

Each case is a copy of matrix/ with one thing broken by hand. Loading it must fail with one line
that names the file and the key path, and the same line on every entry point: load_matrix,
pytest's collection (exit 4, pytest's usage code) and `compat-harness render --check` and
`compat-harness cells` (exit 2, argparse's usage code); never a traceback. The in-process runs
cover every case; real processes (the console script, `python -m pytest`) cover a sample.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from harness import cli
from harness.report.records import REPO_ROOT
from harness.spec.load import load_matrix
from harness.spec.matrix import DEFAULT_MATRIX_DIR, MatrixError

CORPUS_FILE = Path(__file__).parent / "matrix_corpus.toml"
CORPUS = tomllib.loads(CORPUS_FILE.read_text())["case"]
# Real processes are slow to start (torch is imported by the plugin's conftest chain): a sample.
IN_SUBPROCESS = ("model_type typo that no transformers release has", "TOML syntax error",
                 "a negative parity tolerance", "known limit that covers no cell of its row")


def broken_matrix(directory: Path, case: dict) -> Path:
    """A copy of matrix/ in `directory` with the case's one edit."""
    directory.mkdir(parents=True, exist_ok=True)
    for source in DEFAULT_MATRIX_DIR.glob("*.toml"):
        shutil.copy(source, directory / source.name)
    target = directory / case["file"]
    text = target.read_text()
    if "append" in case:
        text += case["append"]
    else:
        assert text.count(case["find"]) == 1, f"{case['name']}: the edit's anchor must occur once"
        text = text.replace(case["find"], case["replace"])
    target.write_text(text)
    return directory


def expected_message(directory: Path, case: dict) -> str:
    with pytest.raises(MatrixError) as info:
        load_matrix(directory)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{directory / case['file']}: {case['key']} = "), message
    assert case["expect"] in message, message
    return message


def test_the_corpus_is_large_and_spans_every_file():
    assert len(CORPUS) >= 30
    assert {c["file"] for c in CORPUS} == {p.name for p in DEFAULT_MATRIX_DIR.glob("*.toml")}
    assert len({c["name"] for c in CORPUS}) == len(CORPUS)


@pytest.mark.parametrize("case", CORPUS, ids=[c["name"] for c in CORPUS])
def test_one_line_on_every_entry_point(case, tmp_path, pytester, capsys):
    directory = broken_matrix(tmp_path / "matrix", case)
    message = expected_message(directory, case)

    result = pytester.runpytest_inprocess("--collect-only", "-q", "-p", "no:cacheprovider",
                                          "--matrix-dir", str(directory))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert [line for line in result.errlines if line.strip()] == [f"ERROR: {message}"]
    assert "Traceback" not in "\n".join(result.outlines + result.errlines)

    capsys.readouterr()
    for argv in (["render", "--check", "--matrix", str(directory)],
                 ["cells", "--matrix-dir", str(directory)]):
        assert cli.main(argv) == cli.USAGE_ERROR
        out, err = capsys.readouterr()
        assert (out, err) == ("", f"ERROR: {message}\n")


def console_script() -> list[str]:
    script = Path(sys.executable).parent / "compat-harness"
    return [str(script)] if script.exists() else [sys.executable, "-m", "harness.cli"]


@pytest.mark.parametrize("name", IN_SUBPROCESS)
def test_one_line_from_real_processes(name, tmp_path):
    case = next(c for c in CORPUS if c["name"] == name)
    directory = broken_matrix(tmp_path / "matrix", case)
    message = expected_message(directory, case)
    runs = {
        4: [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
            f"--matrix-dir={directory}"],
        2: [*console_script(), "render", "--check", "--matrix", str(directory)],
    }
    for code, argv in runs.items():
        done = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, env=os.environ)
        assert done.returncode == code, done.stderr
        assert [line for line in done.stderr.splitlines() if line.strip()] == [f"ERROR: {message}"]
        assert "Traceback" not in done.stdout + done.stderr
