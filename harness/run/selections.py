"""The matrix selections a release bump measures, and one pytest session that runs them all.

The Makefile is the one source of what `make test` and `make matrix` run: its `selections` target
prints one selection a line (pytest's matrix arguments, from the same variables those targets
use), so a bump measures exactly what the gates will judge once the lock is bumped, and a change of
a slice reaches the bump without a second list to keep in step.

Several selections run in ONE session through scripts/run-selections.sh, as `make test` and
`make matrix` run theirs: each is collected alone, the node ids are concatenated (a cell in two
selections once) and `pytest @list` runs them, so the xdist workers and the gloo rank pools start
once, not once per selection.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import tempfile
from pathlib import Path

from harness.spec.matrix import REPO_ROOT

MATRIX_PATH = "matrix"


class SelectionsError(RuntimeError):
    """The selections could not be read or collected: the message names the command and the fix."""


def parse_lines(text: str) -> list[list[str]]:
    """One selection per non-empty line, word-split as a shell would (comments: `#` lines)."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out.append(normalize(shlex.split(line)))
    return out


def normalize(selection: list[str]) -> list[str]:
    """The matrix path first and a device marker (`-m cpu` unless one is named), so that `--arch X`
    given by hand and a Makefile line select alike."""
    words = list(selection)
    if not words or words[0].startswith("-"):
        words = [MATRIX_PATH, *words]
    if not any(w == "-m" or w.startswith("-m") for w in words[1:]):
        words[1:1] = ["-m", "cpu"]
    return words


def from_makefile(repo: Path = REPO_ROOT, make: str = "make") -> list[list[str]]:
    """`make -s selections`: what `make test` and `make matrix` run, one selection a line."""
    command = [make, "-s", "--no-print-directory", "-C", str(repo), "selections"]
    try:
        done = subprocess.run(command, capture_output=True, text=True)
    except FileNotFoundError as exc:
        raise SelectionsError(f"{make} is not installed: give the selections with --selection") from exc
    if done.returncode != 0:
        raise SelectionsError(
            f"`{' '.join(command)}` failed (exit {done.returncode}): "
            f"{(done.stderr or done.stdout).strip()[-500:]}; the Makefile's `selections` "
            "target prints one pytest selection a line"
        )
    selections = parse_lines(done.stdout)
    if not selections:
        raise SelectionsError(f"{repo / 'Makefile'}: target `selections` printed no selection")
    return selections


def run_session(
    python: Path, selections: list[list[str]], results: Path, *, jobs: int = 1
) -> subprocess.CompletedProcess:
    """Every selection's cells in one pytest session (records to `results`), by scripts/run-selections.sh
    in the environment of `python`: the same collection, list and xdist distribution as `make test`'s
    sessions. pytest's return code (1: cells failed; 5: nothing selected, and then nothing runs)."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "BIN": str(Path(python).parent), "JOBS": str(jobs), "CELLS_DIR": tmp}
        command = ["bash", str(REPO_ROOT / "scripts" / "run-selections.sh"), "bump",
                   *(" ".join(selection) for selection in selections),
                   "--", "-p", "no:cacheprovider", "--results", str(results)]
        return subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
