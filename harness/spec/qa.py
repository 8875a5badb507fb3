"""The QA data set's file format: reading a JSONL or parquet file of question-answer items and
checking its shape, with errors that name the file, the line or row, and the key.

Each line/row: {"context": str, "question": str, "answer": str} required;
{"id": str, "split": "train" | "heldout" (default "train"), "fixed": bool (default false)}
optional; other keys are ignored. Errors name the file, the line (JSONL) or row (parquet,
both 1-based) and the key.

Why it is part of the matrix stage: a tier names its QA file (`dataset`), and the matrix is
checked whole at load (harness/spec/consistency.py: the file reads as a QA set, the generate
check's `prompt` is one of its fixed items), before any cell runs. The matrix stage imports
nothing of the later stages, so the reading lives here; harness/data/qa.py, which tokenises the
items for training, imports it. Nothing here imports torch or tokenizers.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

# The set the harness ships; its data stays with the training text (harness/data/).
SHIPPED = Path(__file__).parent.parent / "data" / "qa.jsonl"
SPLITS = ("train", "heldout")
REQUIRED = ("context", "question", "answer")


class DatasetError(ValueError):
    """A dataset that does not have the expected shape; the message says where and why."""


@dataclass(frozen=True)
class QAItem:
    id: str
    context: str
    question: str
    answer: str
    split: str = "train"
    fixed: bool = False  # a fixed factual prompt: one-word answer, used by the generate check


def _item(record, where: str, default_id: str) -> QAItem:
    """Validate one record; `where` is e.g. "qa.jsonl line 3" and starts every message."""
    if not isinstance(record, dict):
        raise DatasetError(f"{where}: expected an object with keys {', '.join(REQUIRED)}, "
                           f"got {type(record).__name__}")
    for key in REQUIRED:
        if key not in record or record[key] is None:
            raise DatasetError(f"{where}: missing key {key!r} (required: {', '.join(REQUIRED)})")
        value = record[key]
        if not isinstance(value, str) or not value.strip():
            raise DatasetError(f"{where}: key {key!r} must be a non-empty string, got {value!r}")
    split = record.get("split") or "train"
    if split not in SPLITS:
        raise DatasetError(f"{where}: key 'split' must be one of {', '.join(SPLITS)}, got {split!r}")
    fixed = record.get("fixed", False)
    fixed = False if fixed is None else fixed
    if not isinstance(fixed, bool):
        raise DatasetError(f"{where}: key 'fixed' must be true or false, got {fixed!r}")
    item_id = record.get("id") or default_id
    if not isinstance(item_id, str):
        raise DatasetError(f"{where}: key 'id' must be a string, got {item_id!r}")
    return QAItem(item_id, record["context"].strip(), record["question"].strip(),
                  record["answer"].strip(), split, fixed)


def _records(path: Path):
    """(where, default id, record) per line or row; parse errors name the file and line."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DatasetError(f"{path} line {number}: not valid JSON ({exc.msg})") from None
                yield f"{path} line {number}", f"{path.stem}-{number}", record
    elif suffix == ".parquet":
        import pandas as pd

        try:
            frame = pd.read_parquet(path)
        except ImportError as exc:
            raise DatasetError(f"{path}: reading parquet needs pyarrow or fastparquet ({exc})") from None
        missing = [key for key in REQUIRED if key not in frame.columns]
        if missing:
            raise DatasetError(f"{path}: missing column(s) {', '.join(map(repr, missing))} "
                               f"(required: {', '.join(REQUIRED)})")
        for number, record in enumerate(frame.to_dict(orient="records"), start=1):
            # pandas turns a missing value into NaN; call it missing, as JSON null would be.
            record = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in record.items()}
            yield f"{path} row {number}", f"{path.stem}-{number}", record
    else:
        raise DatasetError(f"{path}: unsupported file type {suffix!r}; use .jsonl or .parquet")


def load_qa(path: str | Path | None = None) -> list[QAItem]:
    """All items of the shipped set (path None) or of a local JSONL/parquet file, in file order."""
    path = Path(path) if path is not None else SHIPPED
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    items, seen = [], {}
    for where, default_id, record in _records(path):
        item = _item(record, where, default_id)
        if item.id in seen:
            raise DatasetError(f"{where}: key 'id' {item.id!r} repeats {seen[item.id]}")
        seen[item.id] = where
        items.append(item)
    if not items:
        raise DatasetError(f"{path}: no items")
    return items
