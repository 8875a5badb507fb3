"""Results: record files (JSONL) read into one pandas frame, and the latest verdict per cell.

Record files are evidence committed next to the docs, so reading them must never crash on a
torn or hand-edited line, and must never drop one silently either: a corrupt line becomes a
warning that names the file and the line number, and the rest of the file is still read.

A verdict only means something together with where it was obtained, so every row carries
its environment: the device class (a CPU run, possibly over gloo, versus a GPU run), the
device name and the torch and transformers versions. "Latest" is always taken per cell *and*
per environment, so a newer CPU pass never hides an older GPU failure.

Every row carries its cell's fields (architecture, method, layout, tier, check, shape, variant),
so no reader after this one takes a cell id apart. Records of the older format (schema 1) lack
shape and variant; `shape_and_variant` reads them from the end of the id, here and only here.
"""

from __future__ import annotations

import glob
import gzip
import json
import re
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from harness.report.records import REPO_ROOT, STATUSES
from harness.spec.matrix import REFERENCE_STACK

DEFAULT_RECORDS_GLOB = str(REPO_ROOT / "reports" / "records" / "*.jsonl")
REQUIRED_KEYS = ("cell_id", "architecture", "method", "layout", "tier", "check", "status",
                 "run_id", "timestamp", "env")
# The cell's fields; schema 1 wrote the first five, schema 2 seven, schema 3 eight, schema 4 all
# nine (harness.report.records).
CELL_FIELDS = ("architecture", "method", "layout", "tier", "check", "shape", "variant", "stack",
               "implementation")
# What a cell id holds after its first five fields: "@shape" and "+variant", each optional. A shape
# name holds neither '@' nor '+', a variant name no '+' (harness.spec.matrix AXIS_NAME).
ID_TAIL = re.compile(r"(?:@(?P<shape>[^@+]+))?(?:\+(?P<variant>[^@+]+))?")
ENV_KEYS = ("python", "torch", "transformers", "peft", "device_type", "device_name",
            "device_count", "world_size", "backend", "platform")
# The environment that a verdict belongs to (see the module docstring).
ENVIRONMENT = ("device_class", "device_name", "transformers", "torch")
# Where a claim was verified, for the docs: every CPU is "cpu"; a GPU is its device name.
WHERE = ("where",)
RAN = ("pass", "fail", "xfail")
FAILED = ("fail", "xfail")
COLUMNS = (
    "cell_id", *CELL_FIELDS, "status", "category",
    "message", "traceback", "metrics", "code", "run_id", "timestamp", "git_sha", "schema",
    *(f"env_{k}" for k in ENV_KEYS), "device_class", "device_name", "transformers", "torch",
    "where", "where_short", "source", "seq", "record",
)


class CorruptRecordWarning(UserWarning):
    """A record line that is not a valid record; it was skipped, the rest was read."""


@dataclass(frozen=True)
class SourcedRecord:
    path: str
    line: int
    record: dict


def expand_paths(patterns: Iterable[str | Path]) -> list[Path]:
    """Paths and globs to a sorted, de-duplicated list of existing files."""
    found: set[Path] = set()
    for pattern in patterns:
        text = str(pattern)
        if glob.has_magic(text):
            found.update(Path(p) for p in glob.glob(text))
        elif Path(text).is_file():
            found.add(Path(text))
        else:
            raise FileNotFoundError(f"record file not found: {text}")
    return sorted(p for p in found if p.is_file())


def problem(record) -> str | None:
    """Why a parsed line is not a usable record, or None when it is one."""
    if not isinstance(record, dict):
        return f"expected a JSON object, got {type(record).__name__}"
    missing = [k for k in REQUIRED_KEYS if k not in record]
    if missing:
        return f"missing keys {', '.join(missing)}"
    if record["status"] not in STATUSES:
        return f"status {record['status']!r} is not one of {', '.join(STATUSES)}"
    if not isinstance(record["env"], dict):
        return "env is not an object"
    if shape_and_variant(record) is None:
        base = "-".join(str(record[k]) for k in CELL_FIELDS[:5])
        return (f"cell_id {record['cell_id']!r} is not {base} with an optional @shape and +variant, "
                "so the shape and variant that this older record does not carry are unknown")
    return None


def shape_and_variant(record: dict) -> dict[str, str] | None:
    """The shape and variant of a record: its own fields, or, for a record of the older format
    (schema 1) that did not write them, read from the end of its cell id; None when such an id
    does not follow the record's other fields.

    This is the one place that takes a cell id apart, and only to read that older format: every
    other reader (views, render) uses the record's fields, and schema 2 records carry them all.
    The five fields schema 1 did write are a known prefix of the id, so the rest is read without
    guessing where a name that holds '-' ends ('real-shape', 'Llama-3.1-8B').
    """
    if "shape" in record and "variant" in record:
        return {"shape": record["shape"] or "", "variant": record["variant"] or ""}
    base = "-".join(str(record[k]) for k in CELL_FIELDS[:5])
    cell_id = str(record["cell_id"])
    tail = ID_TAIL.fullmatch(cell_id[len(base):]) if cell_id.startswith(base) else None
    if tail is None:
        return None
    return {"shape": tail["shape"] or "", "variant": tail["variant"] or ""}


def read_file(path: Path | str) -> Iterator[SourcedRecord]:
    """Every valid record of one JSONL file (or a gzipped one, `.jsonl.gz`: the sweeps keep theirs
    so); corrupt lines are skipped with a warning."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                reason = f"not valid JSON ({exc.msg} at column {exc.colno})"
            else:
                reason = problem(record)
            if reason:
                warnings.warn(f"{path}:{number}: skipped corrupt record: {reason}",
                              CorruptRecordWarning, stacklevel=2)
                continue
            yield SourcedRecord(str(path), number, record)


def read_records(patterns: Iterable[str | Path]) -> list[SourcedRecord]:
    return [rec for path in expand_paths(patterns) for rec in read_file(path)]


def device_class(env: dict) -> str:
    return "cpu" if (env.get("device_type") or "cpu") == "cpu" else "gpu"


def short_device(name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'H100': the model name that a reader recognises."""
    words = [w for w in str(name).split() if w not in ("NVIDIA", "Tesla", "GeForce", "AMD", "Instinct")]
    return words[0] if words else str(name)


def flatten(sourced: SourcedRecord, seq: int) -> dict:
    rec, env = sourced.record, sourced.record["env"]
    row = {key: rec.get(key) for key in COLUMNS if key in rec}
    # problem() turns such a record away when it is read from a file; a history database filled
    # before that check existed may still hold one, and it is shown as a plain cell, not a crash.
    row.update(shape_and_variant(rec) or {"shape": "", "variant": ""})
    # Records before schema 3 all ran on the reference stack.
    row["stack"] = rec.get("stack") or REFERENCE_STACK
    # Records before schema 4 ran the row's own implementation, and do not say whose code it was.
    row["implementation"] = rec.get("implementation") or ""
    row["code"] = rec.get("code") if isinstance(rec.get("code"), dict) else {}
    row["metrics"] = rec.get("metrics") if isinstance(rec.get("metrics"), dict) else {}
    for key in ENV_KEYS:
        row[f"env_{key}"] = env.get(key)
    cls = device_class(env)
    row["device_class"] = cls
    row["device_name"] = str(env.get("device_name") or cls)
    row["transformers"] = str(env.get("transformers"))
    row["torch"] = str(env.get("torch"))
    row["where"] = "cpu" if cls == "cpu" else row["device_name"]
    row["where_short"] = "cpu" if cls == "cpu" else short_device(row["device_name"])
    row["source"] = f"{sourced.path}:{sourced.line}"
    row["seq"] = seq
    row["record"] = rec
    return row


def to_frame(sourced: Iterable[SourcedRecord]) -> pd.DataFrame:
    """One row per record with flattened env columns; `record` keeps the original object."""
    rows = [flatten(s, i) for i, s in enumerate(sourced)]
    # object dtype keeps None as None (pandas 3 would turn missing strings into NaN).
    return pd.DataFrame(rows, columns=list(COLUMNS), dtype=object)


def load_results(patterns: Iterable[str | Path] = (DEFAULT_RECORDS_GLOB,)) -> pd.DataFrame:
    """All records of the given files and globs, in file order then line order."""
    return to_frame(read_records(patterns))


def latest(frame: pd.DataFrame, by: Iterable[str] = ENVIRONMENT) -> pd.DataFrame:
    """The newest record per cell and per `by` group (timestamp, then file and line order)."""
    keys = ["cell_id", *by]
    if frame.empty:
        return frame.copy()
    ordered = frame.sort_values(["timestamp", "seq"], kind="stable")
    newest = ordered.drop_duplicates(subset=keys, keep="last")
    return newest.sort_values(keys, kind="stable").reset_index(drop=True)
