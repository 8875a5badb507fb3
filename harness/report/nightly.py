"""The nightly pipeline in three steps, shared by CI (.github/workflows/nightly.yml) and the
local simulation (`compat-harness nightly-sim`):

1. shard: every runner runs `pytest matrix ... --splits N --group i` (pytest-split), balanced by
   `reports/.test_durations`, which is derived from the records' `metrics.duration_s`;
2. each shard writes its own record file (same run id for all shards);
3. merge: the shard files are concatenated, ingested into the history, diffed against the
   previous nightly (exit 1 on a pass -> fail regression), the docs are rendered and the
   durations file is refreshed.

The simulation runs the shards as local subprocesses and first proves that the shards are a
partition of the selection: every collected cell id is in exactly one group.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from harness.report.records import REPO_ROOT, new_run_id

DEFAULT_DURATIONS = REPO_ROOT / "reports" / ".test_durations"
PYPROJECT = REPO_ROOT / "pyproject.toml"
# pytest exit codes a shard may end with and still have produced trustworthy records:
# 0 all passed, 1 some cells failed (the merge judges those), 5 nothing selected.
SHARD_OK = (0, 1, 5)


# --- durations ------------------------------------------------------------------------------

def node_id(source_file: str | Path, cell_id: str, device: str, rootdir: Path = REPO_ROOT) -> str:
    """The pytest node id of one cell item, e.g. matrix/architectures.toml::X-...-train[cpu]."""
    path = Path(source_file).resolve()
    try:
        rel = path.relative_to(rootdir.resolve())
    except ValueError:
        rel = Path(os.path.relpath(path, rootdir.resolve()))
    return f"{rel.as_posix()}::{cell_id}[{device}]"


def durations_from_records(records: list[str | Path], matrix_dir: str | Path | None = None,
                           rootdir: Path = REPO_ROOT) -> dict[str, float]:
    """pytest-split durations (node id -> seconds) from the newest record of each cell+device."""
    from harness.report.results import read_records
    from harness.spec.load import load_matrix
    from harness.spec.matrix import DEFAULT_MATRIX_DIR

    matrix = load_matrix(matrix_dir or DEFAULT_MATRIX_DIR)
    newest: dict[str, tuple[str, float]] = {}
    for sourced in read_records(records):
        rec = sourced.record
        arch = matrix.architectures.get(rec["architecture"])
        seconds = (rec.get("metrics") or {}).get("duration_s")
        if arch is None or not isinstance(seconds, int | float):
            continue
        device = "cuda" if rec["env"].get("device_type") == "cuda" else "cpu"
        nid = node_id(arch.source_path, rec["cell_id"], device, rootdir)
        if nid not in newest or rec["timestamp"] >= newest[nid][0]:
            newest[nid] = (rec["timestamp"], round(float(seconds), 3))
    return {nid: seconds for nid, (_, seconds) in sorted(newest.items())}


def update_durations(path: str | Path, fresh: dict[str, float]) -> dict[str, float]:
    """Merge fresh durations into the file at `path` (fresh wins); return what was written."""
    path = Path(path)
    old = json.loads(path.read_text()) if path.is_file() else {}
    merged = dict(sorted({**old, **fresh}.items()))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(merged, indent=1, sort_keys=True) + "\n")
    return merged


# --- shards ---------------------------------------------------------------------------------

def pytest_base(matrix_dir: str | Path | None, selection: list[str]) -> list[str]:
    """pytest over the matrix with this selection; works for a matrix dir outside the repo."""
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-c", str(PYPROJECT),
           "--rootdir", str(REPO_ROOT)]
    if matrix_dir:
        cmd += [str(matrix_dir), "--matrix-dir", str(matrix_dir)]
    else:
        cmd += [str(REPO_ROOT / "matrix")]
    return cmd + list(selection)


def split_args(splits: int, group: int, durations: str | Path) -> list[str]:
    return ["--splits", str(splits), "--group", str(group), "--durations-path", str(durations)]


def collect(*cmds: list[str]) -> list[list[str]]:
    """Node ids that `pytest --collect-only -q` selects for each command line (run at once)."""
    procs = [subprocess.Popen([*cmd, "--collect-only", "-q"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT) for cmd in cmds]
    found = []
    for proc in procs:
        stdout, stderr = proc.communicate()
        if proc.returncode not in (0, 5):
            raise RuntimeError(f"collection failed ({proc.returncode}):\n{stdout}\n{stderr}")
        found.append([line.strip() for line in stdout.splitlines() if "::" in line])
    return found


@dataclass
class Partition:
    total: int
    groups: list[list[str]]
    missing: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.duplicated or self.foreign)

    def summary(self) -> str:
        sizes = "+".join(str(len(g)) for g in self.groups)
        verdict = "disjoint and complete" if self.ok else (
            f"BROKEN: {len(self.missing)} missing, {len(self.duplicated)} in several shards, "
            f"{len(self.foreign)} not in the selection")
        placed = sum(map(len, self.groups))
        return f"{len(self.groups)} shards, {sizes} = {placed} of {self.total} cells: {verdict}"


def check_partition(full: list[str], groups: list[list[str]]) -> Partition:
    seen = Counter(nid for group in groups for nid in group)
    wanted = set(full)
    return Partition(
        total=len(full), groups=groups,
        missing=sorted(wanted - set(seen)),
        duplicated=sorted(nid for nid, n in seen.items() if n > 1),
        foreign=sorted(set(seen) - wanted),
    )


def plan_shards(splits: int, selection: list[str], durations: str | Path,
                matrix_dir: str | Path | None = None) -> Partition:
    base = pytest_base(matrix_dir, selection)
    shards = [base + split_args(splits, g, durations) for g in range(1, splits + 1)]
    full, *groups = collect(base, *shards)
    return check_partition(full, groups)


def run_shards(splits: int, selection: list[str], durations: str | Path, out_dir: str | Path,
               run_id: str, matrix_dir: str | Path | None = None) -> list[int]:
    """Run every shard as its own process at once, as the runners would; return exit codes."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    procs = []
    for group in range(1, splits + 1):
        cmd = (pytest_base(matrix_dir, selection) + split_args(splits, group, durations)
               + ["-q", "--results", str(out_dir / f"shard-{group}.jsonl"), "--run-id", run_id])
        log = open(out_dir / f"shard-{group}.log", "w")  # noqa: SIM115 - closed below
        procs.append((subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT), log))
    codes = []
    for proc, log in procs:
        codes.append(proc.wait())
        log.close()
    return codes


# --- merge ----------------------------------------------------------------------------------

@dataclass
class MergeResult:
    records: int
    regressions: list[str]
    diff_text: str
    docs: int
    # cells whose record says the harness itself failed: they fail the nightly before anything else
    harness_errors: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        if self.harness_errors:
            return 3
        return 1 if self.regressions else 0


def merge(shard_files: list[str | Path], merged: str | Path, db: str | Path,
          previous: str | Path | None, docs_out: str | Path,
          durations: str | Path | None = None, matrix_dir: str | Path | None = None,
          extra_records: list[str] | None = None) -> MergeResult:
    """Concatenate shard records, ingest, diff against `previous`, render, refresh durations.

    `extra_records` are rendered together with the merged run (e.g. the other committed
    evidence files) but are not part of the diff.
    """
    from harness.report.diff import compare, format_table, side
    from harness.report.history import ingest, load_frame
    from harness.report.render import render_docs, write_docs
    from harness.report.results import load_results
    from harness.spec.load import load_matrix
    from harness.spec.matrix import DEFAULT_MATRIX_DIR

    files = [Path(f) for f in shard_files if Path(f).is_file()]
    if not files:
        raise FileNotFoundError(f"no shard record files among {[str(f) for f in shard_files]}")
    merged = Path(merged)
    merged.parent.mkdir(parents=True, exist_ok=True)
    merged.write_text("".join(f.read_text() for f in files))
    ingest([merged, *([previous] if previous else [])], db)
    current = load_results([merged])
    regressions, text = [], "no previous run: nothing to diff"
    if previous:
        result = compare(side(load_results([previous]), f"file {previous}"),
                         side(current, f"file {merged}"))
        regressions = [c.cell_id for c in result.regressions]
        text = format_table(result)
    matrix = load_matrix(matrix_dir or DEFAULT_MATRIX_DIR)
    shown = load_results([merged, *(extra_records or [])])
    docs = render_docs(matrix, shown, [load_frame(db)])
    write_docs(docs_out, docs)
    if durations:
        update_durations(durations, durations_from_records([merged], matrix_dir))
    errors = sorted({r["cell_id"] for f in files for r in _records(f)
                     if r.get("category") == "harness-error"})
    return MergeResult(len(current), regressions, text, len(docs), errors)


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# --- the simulation -------------------------------------------------------------------------

def simulate(splits: int, selection: list[str], workdir: str | Path,
             previous: str | Path | None = None, matrix_dir: str | Path | None = None,
             durations: str | Path | None = None, log=print) -> int:
    """The nightly on this machine: plan + check the shards, run them, merge. Exit code:
    0 fine, 1 a regression against `previous`, 2 shards not a partition or a shard crashed."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    # The shards read a copy of the durations; the merge writes the refreshed one next to it.
    durations_in = workdir / ".test_durations"
    source = Path(durations) if durations else DEFAULT_DURATIONS
    durations_in.write_text(source.read_text() if source.is_file() else "{}\n")

    partition = plan_shards(splits, selection, durations_in, matrix_dir)
    (workdir / "partition.json").write_text(json.dumps(
        {"total": partition.total, "groups": partition.groups, "missing": partition.missing,
         "duplicated": partition.duplicated, "foreign": partition.foreign}, indent=1))
    log(f"shards: {partition.summary()}")
    if not partition.ok:
        return 2

    run_id = f"nightly-sim-{new_run_id()}"
    codes = run_shards(splits, selection, durations_in, workdir / "shards", run_id, matrix_dir)
    log(f"shard exit codes: {codes} (run id {run_id}; logs in {workdir / 'shards'})")
    if any(code not in SHARD_OK for code in codes):
        log("a shard crashed (pytest exit code outside 0, 1, 5): no merge")
        return 2

    shard_files = sorted((workdir / "shards").glob("shard-*.jsonl"))
    result = merge(shard_files, workdir / "merged.jsonl", workdir / "history.sqlite", previous,
                   workdir / "docs", durations=workdir / "durations.updated",
                   matrix_dir=matrix_dir)
    log(f"merge: {result.records} records from {len(shard_files)} shard files; "
        f"{result.docs} documents rendered to {workdir / 'docs'}")
    log(result.diff_text)
    if result.regressions:
        log(f"REGRESSIONS ({len(result.regressions)}): {', '.join(result.regressions)}")
    if result.harness_errors:
        log(f"HARNESS ERRORS ({len(result.harness_errors)}): {', '.join(result.harness_errors)}")
    return result.exit_code


# --- CLI (registered in harness/cli.py) -----------------------------------------------------

def add_nightly_sim(subparsers) -> None:
    p = subparsers.add_parser(
        "nightly-sim", help="run the nightly pipeline locally: N pytest-split shards, merge, diff, render",
        description="Everything after `--` is the pytest selection, e.g. "
                    "`-- -m cpu --tier tiny --arch LlamaForCausalLM`. Exits 1 on a regression "
                    "against --previous, 2 when the shards are not a partition or one crashed.")
    p.add_argument("--shards", type=int, default=2)
    p.add_argument("--workdir", required=True, help="shard records, merged.jsonl, history, docs")
    p.add_argument("--previous", default=None, help="record file of the previous nightly")
    p.add_argument("--matrix-dir", default=None)
    p.add_argument("--durations", default=None, help=f"default {DEFAULT_DURATIONS}")
    p.add_argument("selection", nargs="*", help="pytest selection arguments (after --)")
    p.set_defaults(func=lambda a: simulate(a.shards, a.selection, a.workdir, a.previous,
                                           a.matrix_dir, a.durations))


def add_nightly_merge(subparsers) -> None:
    p = subparsers.add_parser(
        "nightly-merge", help="merge shard record files: ingest, diff with the previous nightly, render",
        description="Exits 1 when a cell that passed in --previous fails now.")
    p.add_argument("shards", nargs="+", help="shard record files")
    p.add_argument("--merged", required=True, help="where the merged records are written")
    p.add_argument("--previous", default=None, help="record file of the previous nightly")
    p.add_argument("--db", default=str(REPO_ROOT / "reports" / "history.sqlite"))
    p.add_argument("--out", default=str(REPO_ROOT / "reports"), help="docs output directory")
    p.add_argument("--durations", default=str(DEFAULT_DURATIONS))
    p.add_argument("--also", nargs="*", default=[], help="other record files shown in the docs")
    p.add_argument("--matrix-dir", default=None)

    def run(a) -> int:
        result = merge(a.shards, a.merged, a.db, a.previous, a.out, a.durations, a.matrix_dir,
                       a.also)
        print(result.diff_text)
        print(f"{result.records} records merged; {result.docs} documents in {a.out}; "
              f"{len(result.regressions)} regression(s)")
        if result.harness_errors:
            print(f"HARNESS ERRORS ({len(result.harness_errors)}), bugs of the harness, not verdicts: "
                  f"{', '.join(result.harness_errors)}")
        return result.exit_code

    p.set_defaults(func=run)


def add_durations(subparsers) -> None:
    p = subparsers.add_parser("durations", help="write pytest-split durations from records")
    p.add_argument("records", nargs="+")
    p.add_argument("--out", default=str(DEFAULT_DURATIONS))
    p.add_argument("--matrix-dir", default=None)

    def run(a) -> int:
        written = update_durations(a.out, durations_from_records(a.records, a.matrix_dir))
        print(f"{a.out}: {len(written)} cell durations")
        return 0

    p.set_defaults(func=run)
