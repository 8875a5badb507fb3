"""The one loader of the matrix: every entry point (the pytest plugin, each `compat-harness`
subcommand, the pool's ranks) calls load_matrix, so a mistake in the TOML is the same one-line
MatrixError everywhere.

It sits above the three kinds of checks and imports each at top level: each table on its own
(harness/spec/parse.py), what spans tables (harness/spec/consistency.py), and what only the
installed transformers can confirm (harness/spec/release_check.py).
"""

from __future__ import annotations

from pathlib import Path

from harness.spec.consistency import check_consistency
from harness.spec.custom_check import check_custom
from harness.spec.matrix import DEFAULT_MATRIX_DIR, Matrix, MatrixError
from harness.spec.parse import parse_matrix
from harness.spec.release_check import check_release


def matrix_files(matrix_dir: Path | str = DEFAULT_MATRIX_DIR) -> list[Path]:
    directory = Path(matrix_dir)
    if not directory.is_dir():
        raise MatrixError(directory, "<directory>", str(directory), "matrix directory not found")
    files = sorted(directory.glob("*.toml"))
    if not files:
        raise MatrixError(directory, "<directory>", str(directory), "holds no *.toml files")
    return files


def load_matrix(matrix_dir: Path | str = DEFAULT_MATRIX_DIR) -> Matrix:
    """Read every matrix/*.toml file and return one validated Matrix (or raise MatrixError).

    The one loader of every entry point (the pytest plugin, each `compat-harness` subcommand, the
    pool's ranks). It checks each table against its schema and each value against its domain
    (harness/spec/parse.py), then what spans tables (harness/spec/consistency.py), then what only
    the installed transformers can confirm (harness/spec/release_check.py): a mistake is one
    MatrixError here, never a failure of a cell later.
    """
    matrix, files_of = parse_matrix(matrix_files(matrix_dir))
    check_consistency(matrix, files_of)
    check_release(matrix, files_of)
    check_custom(matrix)
    return matrix
