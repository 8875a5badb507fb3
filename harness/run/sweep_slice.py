"""The cells a sweep runs under every release, declared as data (matrix/sweeps/slices.toml).

A slice is a pytest selection of the matrix plugin written as a TOML table, one key per selection
option (`arch = ["LlamaForCausalLM", ...]`, as `--arch` takes them) and `marker` (pytest's -m). It
becomes the arguments of one pytest session per release (harness/run/sweep.py). A mistake in the
file is one line naming the file, the key and the fix, before anything runs.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from harness.spec.cells import SELECTION_OPTIONS, SelectionError, validate_selection
from harness.spec.matrix import DEFAULT_MATRIX_DIR, Matrix

SLICES_FILE = DEFAULT_MATRIX_DIR / "sweeps" / "slices.toml"
DEFAULT_SLICE = "release"
OTHER_KEYS = ("summary", "marker")
MARKERS = ("cpu", "gpu")


class SliceError(ValueError):
    """A slice that cannot be read: `FILE: slices.NAME.KEY = VALUE: PROBLEM; FIX`, one line."""


@dataclass(frozen=True)
class Slice:
    name: str
    summary: str
    options: dict[str, list[str]]  # pytest option (arch, layout, ...) -> values; absent: unrestricted
    marker: str = "cpu"
    source: Path = field(default=SLICES_FILE, compare=False)

    def narrowed(self, overrides: dict[str, list[str]]) -> Slice:
        """The slice with some options given anew (the command line's --arch, --layout, ...)."""
        given = {k: v for k, v in overrides.items() if v}
        return Slice(self.name, self.summary, {**self.options, **given}, self.marker, self.source)

    @property
    def selection(self) -> list[str]:
        """pytest's arguments: the matrix, the device marker, one option per restricted axis."""
        words = ["matrix", "-m", self.marker]
        for option in SELECTION_OPTIONS:
            if self.options.get(option):
                words += [f"--{option}", ",".join(self.options[option])]
        return words


def _fail(path: Path, key: str, value, problem: str, fix: str) -> SliceError:
    shown = repr(value)
    return SliceError(f"{path}: {key} = {shown[:160]}: {problem}; {fix}")


def _names(path: Path, key: str, value) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise _fail(path, key, value, "not a list of names",
                    'write a non-empty list of strings, e.g. ["LlamaForCausalLM"], or leave the key out')
    return value


def parse_slice(data: dict, name: str, path: Path = SLICES_FILE) -> Slice:
    """The slice `name` of a parsed slices file (checked for its shape, not against the matrix)."""
    slices = data.get("slices")
    if not isinstance(slices, dict) or not slices:
        raise _fail(path, "slices", slices, "no [slices.NAME] table", "declare one, e.g. [slices.release]")
    if name not in slices:
        raise _fail(path, "slices", sorted(slices), f"no slice {name!r}",
                    f"pick one of {', '.join(sorted(slices))} (--slice) or add [slices.{name}]")
    table = slices[name]
    if not isinstance(table, dict):
        raise _fail(path, f"slices.{name}", table, "not a table", f"write it as [slices.{name}]")
    allowed = [*SELECTION_OPTIONS, *OTHER_KEYS]
    for key in table:
        if key not in allowed:
            raise _fail(path, f"slices.{name}.{key}", table[key], "unknown key",
                        f"use one of {', '.join(allowed)} (the pytest options of the matrix plugin)")
    marker = table.get("marker", "cpu")
    if marker not in MARKERS:
        raise _fail(path, f"slices.{name}.marker", marker, "unknown device marker",
                    f"write one of {', '.join(MARKERS)}")
    summary = table.get("summary", "")
    if not isinstance(summary, str):
        raise _fail(path, f"slices.{name}.summary", summary, "not a string", "write one line of text")
    options = {key: _names(path, f"slices.{name}.{key}", table[key])
               for key in SELECTION_OPTIONS if key in table}
    return Slice(name, summary, options, marker, path)


def check_against(slice_: Slice, matrix: Matrix) -> None:
    """Every name in the slice is one the matrix declares (the message says which key holds it)."""
    for option, values in slice_.options.items():
        try:
            validate_selection(matrix, {SELECTION_OPTIONS[option]: values})
        except SelectionError as exc:
            raise _fail(slice_.source, f"slices.{slice_.name}.{option}", values, str(exc),
                        "fix the name (`compat-harness cells` lists the matrix's names)") from None


def load_slice(name: str = DEFAULT_SLICE, path: Path = SLICES_FILE, matrix: Matrix | None = None) -> Slice:
    """The slice `name` of `path`, checked against `matrix` when one is given."""
    if not Path(path).is_file():
        raise SliceError(f"{path}: no such file; sweep slices are declared there as [slices.NAME] tables")
    try:
        data = tomllib.loads(Path(path).read_text())
    except tomllib.TOMLDecodeError as exc:
        raise SliceError(f"{path}: not valid TOML ({exc}); fix the syntax") from None
    found = parse_slice(data, name, Path(path))
    if matrix is not None:
        check_against(found, matrix)
    return found
