"""Mutations of the real matrix (hypothesis): drop a key, change a type, negate a number, misspell
a name. Loading the mutated copy either fails with the one-line message (`FILE: KEY = VALUE:
PROBLEM`, naming a file of the copy) or succeeds; and when it succeeds, the cells are the ones of
the unmutated matrix unless the mutation touched a field whose very job is to shape cells (a
row's `moe`, a check's scope, a name that is part of cell ids, ...: CELL_SHAPING). It never raises
anything else.
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from harness.spec.cells import expand
from harness.spec.load import load_matrix
from harness.spec.matrix import DEFAULT_MATRIX_DIR, MatrixError
from harness.spec.parse import TOP_LEVEL

FILES = {p.name: tomllib.loads(p.read_text()) for p in sorted(DEFAULT_MATRIX_DIR.glob("*.toml"))}
# Key paths (with * for any entry name) whose valid changes legitimately change the cells: the
# fields that decide which combinations exist, and the names that cell ids are made of. A mutation
# elsewhere (a summary, a note, a tolerance, a known limit, a release set ...) that loads must leave
# every cell as it was.
CELL_SHAPING = (
    "architectures", "methods", "layouts", "tiers", "checks", "apis", "experts", "real_shapes",
    "tiny_defaults", "architectures.*", "architectures.*.moe", "architectures.*.auto_class",
    "architectures.*.tiny", "architectures.*.tiny.*", "architectures.*.tiny.*.*",
    "methods.*", "layouts.*", "layouts.*.constraints", "layouts.*.constraints.*", "layouts.*.apis",
    "layouts.*.apis.*", "tiers.*", "tiers.*.source", "tiers.*.layouts", "tiers.*.layouts.*", "checks.*",
    "checks.*.*", "checks.*.*.*", "apis.*", "apis.*.checks", "apis.*.checks.*", "apis.*.tiers",
    "apis.*.tiers.*", "experts.*", "experts.*.layouts", "experts.*.layouts.*", "experts.*.checks",
    "experts.*.checks.*", "experts.*.tiers", "experts.*.tiers.*", "real_shapes.*",
    "real_shapes.*.architecture", "tiny_defaults.*", "tiny_defaults.*.*",
    # a stack's cells: the stacks, and what each runs
    "stacks", "stacks.*", *(f"stacks.*.{key}{tail}" for key in ("layouts", "methods", "checks", "tiers",
                                                                 "multi_rank_checks", "implementations")
                           for tail in ("", ".*")),
)
OTHER_TYPES = (0, -3, 2.5, "x", True, [], ["x"], {}, {"x": 1})


# --- a small TOML writer (the matrix's shapes: two levels of tables, then inline values) ----------

def _key(key: str) -> str:
    return json.dumps(key)


def _value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) \
            else repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    return "{ " + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + " }"


def dumps(data: dict) -> str:
    lines = [f"{_key(k)} = {_value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    for top, entries in data.items():
        if not isinstance(entries, dict):
            continue
        lines.append(f"[{_key(top)}]")
        lines += [f"{_key(k)} = {_value(v)}" for k, v in entries.items() if not isinstance(v, dict)]
        for name, body in entries.items():
            if isinstance(body, dict):
                lines.append(f"[{_key(top)}.{_key(name)}]")
                lines += [f"{_key(k)} = {_value(v)}" for k, v in body.items()]
    return "\n".join(lines) + "\n"


def test_the_writer_round_trips_the_matrix():
    for data in FILES.values():
        assert tomllib.loads(dumps(data)) == data


# --- mutations --------------------------------------------------------------------------------------

def _misspelled(draw, text: str) -> str:
    if not text:
        return "x"
    i = draw(st.integers(0, len(text) - 1))
    how = draw(st.sampled_from(["drop", "double", "swap", "replace"]))
    if how == "drop" and len(text) > 1:
        return text[:i] + text[i + 1:]
    if how == "swap" and i + 1 < len(text) and text[i] != text[i + 1]:
        return text[:i] + text[i + 1] + text[i] + text[i + 2:]
    if how == "replace":
        letter = draw(st.sampled_from("aeiouxz_"))
        if letter != text[i]:
            return text[:i] + letter + text[i + 1:]
    return text[:i] + text[i] + text[i:]


class Mutation:
    """One edit of one file (not a dataclass: hypothesis would print the whole file's data)."""

    def __init__(self, file: str, data: dict, path: str, kind: str, value: object = None):
        self.file, self.data, self.path, self.kind, self.value = file, data, path, kind, value

    def __repr__(self) -> str:
        return f"Mutation({self.file}: {self.kind} {self.path or '-'} -> {self.value!r})"


@st.composite
def mutations(draw) -> Mutation:
    name = draw(st.sampled_from(sorted(FILES)))
    data = json.loads(json.dumps(FILES[name]))
    path: list = []
    node = data
    # Walk down to a random depth: each step picks a key or an index of the current container.
    while isinstance(node, dict | list) and node and (not path or draw(st.booleans())):
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        step = draw(st.sampled_from(keys))
        path.append(step)
        node = node[step]
    if not path:
        return Mutation(name, data, "", "none")
    parent = data
    for step in path[:-1]:
        parent = parent[step]
    last, value = path[-1], parent[path[-1]]
    kinds = ["drop", "retype"]
    if isinstance(value, int | float) and not isinstance(value, bool):
        kinds.append("negate")
    if isinstance(value, str) or isinstance(last, str):
        kinds.append("misspell")
    kind = draw(st.sampled_from(kinds))
    if kind == "drop":
        del parent[last]
    elif kind == "retype":
        parent[last] = draw(st.sampled_from([v for v in OTHER_TYPES if type(v) is not type(value)]))
    elif kind == "negate":
        parent[last] = -value if value else -1
    elif isinstance(value, str) and (isinstance(last, int) or draw(st.booleans())):
        parent[last] = _misspelled(draw, value)
    else:  # rename the key, keeping its place among the others
        new = _misspelled(draw, last)
        if new in parent:
            return Mutation(name, data, "", "none")
        items = [(new if k == last else k, v) for k, v in parent.items()]
        parent.clear()
        parent.update(items)
    shown = parent.get(last, "(dropped)") if isinstance(parent, dict) else \
        (parent[last] if last < len(parent) else "(dropped)")
    return Mutation(name, data, ".".join(map(str, path)), kind, shown if kind != "misspell" or
                    last in parent else f"key renamed: {list(parent)}")


def _generic(path: str) -> str:
    """architectures.LlamaForCausalLM.tiny.head_dim -> architectures.*.tiny.* (list indices too)."""
    parts = path.split(".")
    out = parts[:1] + ["*" if i == 1 else p for i, p in enumerate(parts[1:], start=1)]
    return ".".join("*" if re.fullmatch(r"\d+", p) else p for p in out)


def _shapes_cells(path: str) -> bool:
    generic = _generic(path)
    return any(re.fullmatch(re.escape(pattern).replace(r"\*", r"[^.]+") + r"(\..*)?", generic)
               for pattern in CELL_SHAPING if pattern.count(".") <= generic.count("."))


ORIGINAL_CELLS = None
MESSAGE = re.compile(r"(?P<file>\S+\.toml|\S+): (?P<key>\S.*?) = (?P<value>.*): (?P<problem>.+)")


@pytest.fixture(scope="module")
def original_ids():
    cells, pruned = expand(load_matrix())
    return [c.id for c in cells], [(p.id, p.reason) for p in pruned]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutation=mutations())
def test_a_mutated_matrix_loads_the_same_cells_or_fails_with_one_line(mutation, original_ids,
                                                                      tmp_path_factory):
    name, data, path, kind = mutation.file, mutation.data, mutation.path, mutation.kind
    directory = tmp_path_factory.mktemp("mutated")
    for other, content in FILES.items():
        (directory / other).write_text(dumps(data if other == name else content))
    try:
        matrix = load_matrix(directory)
    except MatrixError as exc:
        message = str(exc)
        assert "\n" not in message
        match = MESSAGE.fullmatch(message)
        assert match, message
        named = Path(match["file"])
        assert named == directory or (named.parent == directory and named.exists()), message
        section = match["key"].split(".")[0]
        assert section in TOP_LEVEL or section == "<syntax>" or "did you mean" in message, message
        event("MatrixError")
        return
    cells, pruned = expand(matrix)
    same = ([c.id for c in cells], [(p.id, p.reason) for p in pruned]) == original_ids
    if kind == "none" or not _shapes_cells(path):
        assert same, f"{name}: {kind} {path} loaded with other cells"
    event("loaded, the same cells" if same else "loaded, a cell-shaping field changed the cells")
