"""History: every record of every run in one embedded SQLite database.

Record files are per machine and per CI shard; the history is where they meet, so that a
regression can be found against any earlier run and the dashboard can show how a cell
behaved over time. Ingesting is idempotent: a record is keyed by a hash of its canonical
JSON, so ingesting the same file (or the same run from two merged files) twice adds nothing,
while a cell that really ran twice, even within one second, is kept twice.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from harness.report.records import REPO_ROOT
from harness.report.results import SourcedRecord, device_class, expand_paths, read_records, to_frame

DEFAULT_DB = REPO_ROOT / "reports" / "history.sqlite"

SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    key TEXT PRIMARY KEY,
    run_id TEXT NOT NULL,
    cell_id TEXT NOT NULL,
    timestamp TEXT NOT NULL,
    status TEXT NOT NULL,
    category TEXT,
    device_class TEXT NOT NULL,
    device_name TEXT,
    transformers TEXT,
    torch TEXT,
    source TEXT NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS records_by_run ON records (run_id, timestamp);
CREATE INDEX IF NOT EXISTS records_by_cell ON records (cell_id, timestamp);
"""


@dataclass(frozen=True)
class IngestReport:
    files: int
    read: int
    added: int


@dataclass(frozen=True)
class Run:
    run_id: str
    started: str
    finished: str
    cells: int
    device_classes: tuple[str, ...]
    devices: tuple[str, ...]


def record_key(record: dict) -> str:
    """Content hash of the record: equal records are one row, whatever file they came from."""
    canonical = json.dumps(record, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def connect(db: Path | str = DEFAULT_DB) -> sqlite3.Connection:
    Path(db).parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(db))
    conn.executescript(SCHEMA)
    return conn


def _row(sourced: SourcedRecord) -> tuple:
    rec, env = sourced.record, sourced.record["env"]
    return (
        record_key(rec), rec["run_id"], rec["cell_id"], rec["timestamp"], rec["status"],
        rec.get("category"), device_class(env), env.get("device_name"),
        str(env.get("transformers")), str(env.get("torch")),
        f"{Path(sourced.path).name}:{sourced.line}",
        json.dumps(rec, sort_keys=True, default=str),
    )


def ingest(paths: Iterable[str | Path], db: Path | str = DEFAULT_DB) -> IngestReport:
    """Add the records of these files (paths or globs); records already present are ignored."""
    files = expand_paths(paths)
    sourced = read_records(files)
    with closing(connect(db)) as conn, conn:
        before = conn.total_changes
        conn.executemany("INSERT OR IGNORE INTO records VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                         [_row(s) for s in sourced])
        added = conn.total_changes - before
    return IngestReport(files=len(files), read=len(sourced), added=added)


def load_frame(db: Path | str = DEFAULT_DB, run_ids: Iterable[str] | None = None) -> pd.DataFrame:
    """Records from the database as the same frame that results.load_results gives."""
    query, params = "SELECT source, record FROM records", ()
    if run_ids is not None:
        run_ids = tuple(run_ids)
        query += f" WHERE run_id IN ({','.join('?' * len(run_ids))})"
        params = run_ids
    query += " ORDER BY timestamp, run_id, cell_id, key"
    with closing(connect(db)) as conn:
        rows = conn.execute(query, params).fetchall()
    sourced = []
    for source, text in rows:
        path, _, line = source.rpartition(":")
        sourced.append(SourcedRecord(f"{db}#{path}", int(line or 0), json.loads(text)))
    return to_frame(sourced)


def runs(db: Path | str = DEFAULT_DB) -> list[Run]:
    """Every run in the database, oldest first (by its first record, then by run id)."""
    query = "SELECT run_id, timestamp, cell_id, device_class, device_name FROM records"
    with closing(connect(db)) as conn:
        rows = conn.execute(query).fetchall()
    grouped: dict[str, list[tuple]] = {}
    for row in rows:
        grouped.setdefault(row[0], []).append(row)
    found = [
        Run(run_id, min(r[1] for r in group), max(r[1] for r in group),
            len({r[2] for r in group}), tuple(sorted({r[3] for r in group})),
            tuple(sorted({str(r[4]) for r in group})))
        for run_id, group in grouped.items()
    ]
    return sorted(found, key=lambda run: (run.started, run.run_id))


def count(db: Path | str = DEFAULT_DB) -> int:
    with closing(connect(db)) as conn:
        return conn.execute("SELECT COUNT(*) FROM records").fetchone()[0]
