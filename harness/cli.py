"""`compat-harness`: one argparse subcommand per job, each a small function over the library.

To add a subcommand, write `add_NAME(subparsers)` that registers its arguments and sets
`func` to a `run_NAME(args) -> int`, then list it in SUBCOMMANDS. The behaviour lives in the
library modules (history, diff, render); this file only parses arguments and prints.

A subcommand that reads the matrix says which option names its directory
(`set_defaults(matrix_option=...)`): `main` loads it first, through the one loader
(harness.spec.load.load_matrix), so a mistake in it is the same single line as in pytest,
`ERROR: FILE: KEY = VALUE: PROBLEM`, on stderr with exit code 2 (argparse's usage code), before
the subcommand does anything.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shlex
import subprocess
import sys
import warnings
from pathlib import Path

from harness.report.results import DEFAULT_RECORDS_GLOB, CorruptRecordWarning
from harness.spec.cells import SELECTION_OPTIONS, SelectionError
from harness.spec.matrix import DEFAULT_MATRIX_DIR, REPO_ROOT, MatrixError

# The exit code of a usage mistake, argparse's own: a wrong argument or a wrong matrix.
USAGE_ERROR = 2

# Local runs (reports/records/local*.jsonl) are gitignored, hence not evidence: the committed
# docs must be reproducible from committed records alone, so render leaves them out unless
# they are named with --records.
LOCAL_RECORDS = "local"


def default_committed_records() -> list[str]:
    """reports/records/*.jsonl (without the local ones) and every sweep's reports/sweeps/**/*.jsonl."""
    from harness.report.limits import evidence_files

    return [str(p) for p in evidence_files()]


# --- ingest ---------------------------------------------------------------------------------

def add_ingest(subparsers) -> None:
    from harness.report.history import DEFAULT_DB

    p = subparsers.add_parser("ingest", help="add record files to the SQLite history (idempotent)")
    p.add_argument("files", nargs="+", help="record files or globs (JSONL)")
    p.add_argument("--db", default=str(DEFAULT_DB), help="history database (default: %(default)s)")
    p.set_defaults(func=run_ingest)


def run_ingest(args) -> int:
    from harness.report.history import count, ingest

    report = ingest(args.files, args.db)
    print(f"{args.db}: read {report.read} records from {report.files} file(s), added "
          f"{report.added} new, {report.read - report.added} already present; "
          f"{count(args.db)} records in total")
    return 0


# --- diff -----------------------------------------------------------------------------------

def add_diff(subparsers) -> None:
    from harness.report.history import DEFAULT_DB

    p = subparsers.add_parser(
        "diff", help="compare two runs: regressions, fixes, new and vanished cells",
        description="RUN_A and RUN_B are run ids in the history or record files. Without them, "
                    "the newest run is compared with the previous run on the same device class. "
                    "Exits 1 when a cell went from pass to fail.")
    p.add_argument("run_a", nargs="?", metavar="RUN_A")
    p.add_argument("run_b", nargs="?", metavar="RUN_B")
    p.add_argument("--db", default=str(DEFAULT_DB),
                   help="history database; when missing, runs are read from --records")
    p.add_argument("--records", nargs="+", default=[DEFAULT_RECORDS_GLOB],
                   help="record files or globs used when the database does not exist")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run_diff)


def run_diff(args) -> int:
    from harness.report.diff import DiffError, compare, format_table, load_sides, to_json_text

    if (args.run_a is None) != (args.run_b is None):
        print("compat-harness diff: give both RUN_A and RUN_B, or neither", file=sys.stderr)
        return 2
    try:
        a, b = load_sides(args.run_a, args.run_b, args.db, args.records)
    except (DiffError, FileNotFoundError) as exc:
        print(f"compat-harness diff: {exc}", file=sys.stderr)
        return 2
    result = compare(a, b)
    print(to_json_text(result) if args.json else format_table(result))
    return 1 if result.regressions else 0


# --- render ---------------------------------------------------------------------------------

def add_render(subparsers) -> None:
    from harness.report.render import DEFAULT_OUT

    p = subparsers.add_parser("render", help="render reports/ (llm.md, models/, index.html) from records")
    p.add_argument("--records", nargs="+", default=None, metavar="GLOB",
                   help="record files or globs (default: reports/records/*.jsonl without the "
                        "gitignored local*.jsonl)")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="output directory (default: %(default)s)")
    p.add_argument("--matrix", "--matrix-dir", dest="matrix", default=str(DEFAULT_MATRIX_DIR),
                   help="matrix directory (default: %(default)s)")
    p.add_argument("--db", default=None,
                   help="also show the history of this SQLite database in index.html")
    p.add_argument("--check", action="store_true",
                   help="write nothing; exit 1 when the files in --out differ from the records")
    p.set_defaults(func=run_render, matrix_option="matrix")


def run_render(args) -> int:
    from harness.report.bisects import load_findings
    from harness.report.history import load_frame
    from harness.report.render import render_docs, stale_files, write_docs
    from harness.report.results import load_results
    from harness.report.sweeps import load_sweeps
    from harness.spec.load import load_matrix

    patterns = args.records if args.records is not None else default_committed_records()
    records = load_results(patterns)
    history = [load_frame(args.db)] if args.db and Path(args.db).exists() else []
    # the committed bisects go with the committed records
    findings = load_findings() if args.records is None else []
    # and the committed sweeps' grids (their records are among the committed ones)
    sweeps = load_sweeps() if args.records is None else []
    docs = render_docs(load_matrix(args.matrix), records, history, findings, sweeps)
    if args.check:
        stale = stale_files(args.out, docs)
        for rel in stale:
            print(f"stale: {Path(args.out) / rel}")
        if stale:
            print(f"{len(stale)} document(s) differ from the records; run `compat-harness render`",
                  file=sys.stderr)
            return 1
        print(f"{len(docs)} documents are up to date with {len(records)} records")
        return 0
    write_docs(args.out, docs)
    print(f"wrote {len(docs)} documents to {args.out} from {len(records)} records")
    return 0


# --- limits ---------------------------------------------------------------------------------

def add_limits(subparsers) -> None:
    p = subparsers.add_parser(
        "limits", help="known limits against the records: where their cells failed and passed")
    p.add_argument("--check", action="store_true",
                   help="exit 1 when a limit covers a measured pass, or a failure of a limit's cells lies "
                        "outside every limit; print the narrowest specifiers to write")
    p.add_argument("--records", nargs="+", default=None, metavar="GLOB",
                   help="record files or globs (default: reports/records/*.jsonl, reports/sweeps/**/*.jsonl)")
    p.add_argument("--bisects", default=None, help="bisect findings directory (default: reports/bisects)")
    p.add_argument("--matrix", "--matrix-dir", dest="matrix", default=str(DEFAULT_MATRIX_DIR),
                   help="matrix directory (default: %(default)s)")
    p.set_defaults(func=run_limits, matrix_option="matrix")


def _evidence(args):
    from harness.report.bisects import DEFAULT_BISECTS
    from harness.report.limits import load_evidence

    patterns = args.records if args.records is not None else default_committed_records()
    return load_evidence(patterns, args.bisects or DEFAULT_BISECTS)


def run_limits(args) -> int:
    from harness.report.limits import check_limits, report_text
    from harness.spec.load import load_matrix

    report = check_limits(load_matrix(args.matrix), _evidence(args))
    print(report_text(report, verbose=not args.check))
    return 1 if args.check and not report.ok else 0


# --- which ----------------------------------------------------------------------------------

def add_which(subparsers) -> None:
    p = subparsers.add_parser(
        "which", help="what the committed records say of a row on a set of releases (installed, or --with)")
    p.add_argument("--arch", required=True, help="the row (architecture class name)")
    p.add_argument("--method", default=None)
    p.add_argument("--layout", default=None)
    p.add_argument("--stack", default="native")
    p.add_argument("--with", dest="releases", nargs="+", action="extend", default=[], metavar="PKG==VERSION",
                   help="the releases to ask about (default: the installed transformers and peft); "
                        "torch==... narrows to one torch build; repeatable")
    p.add_argument("--records", nargs="+", default=None, metavar="GLOB")
    p.add_argument("--bisects", default=None)
    p.add_argument("--matrix", "--matrix-dir", dest="matrix", default=str(DEFAULT_MATRIX_DIR))
    p.set_defaults(func=run_which, matrix_option="matrix")


def run_which(args) -> int:
    from harness.report.bisects import DEFAULT_BISECTS, load_findings
    from harness.report.which import Question, answer
    from harness.spec.load import load_matrix
    from harness.spec.matrix import installed_version

    matrix = load_matrix(args.matrix)
    if args.arch not in matrix.architectures:
        print(f"ERROR: --arch {args.arch}: no such row in {args.matrix}", file=sys.stderr)
        return USAGE_ERROR
    releases = {"transformers": installed_version("transformers"), "peft": installed_version("peft")}
    for item in args.releases:
        name, sep, version = item.partition("==")
        if not sep or name not in ("transformers", "peft", "torch") or not version:
            print(f"ERROR: --with {item}: write transformers==X, peft==X or torch==X", file=sys.stderr)
            return USAGE_ERROR
        releases[name] = version
    if not releases.get("transformers"):
        print("ERROR: transformers is not installed here: name it with --with transformers==X",
              file=sys.stderr)
        return USAGE_ERROR
    asked = {k: v for k, v in releases.items() if v}
    question = Question(args.arch, asked, args.method, args.layout, args.stack)
    print(answer(question, _evidence(args), load_findings(args.bisects or DEFAULT_BISECTS)))
    return 0


# --- cells ----------------------------------------------------------------------------------

def add_cells(subparsers) -> None:
    p = subparsers.add_parser(
        "cells", help="list the cell ids of a selection, and the pruned combinations with their reasons",
        description="Lists the cell ids of a selection, then every pruned combination inside it (one "
                    "that cannot run, such as EP on a dense model) with its reason; --no-pruned leaves "
                    "those out, --json gives each cell's axes. The same selection options as pytest "
                    "(repeatable, comma lists). A pytest item is a cell id plus its device: ID[cpu], "
                    "ID[cuda].")
    for option, axis in SELECTION_OPTIONS.items():
        p.add_argument(f"--{option}", action="append", default=[], metavar="NAME[,NAME]",
                       help=f"only these {axis} values")
    p.add_argument("--matrix-dir", "--matrix", dest="matrix_dir", default=str(DEFAULT_MATRIX_DIR),
                   help="matrix directory (default: %(default)s)")
    p.add_argument("--json", action="store_true",
                   help="print JSON (each cell's id and axes; each pruned one's reason) instead of text")
    p.add_argument("--no-pruned", action="store_true",
                   help="leave out the pruned combinations and their reasons (listed by default)")
    p.set_defaults(func=run_cells, matrix_option="matrix_dir")


def run_cells(args) -> int:
    from harness.spec.cells import (
        AXES,
        expand,
        select,
        select_pruned,
        split_values,
        validate_selection,
        with_stacks,
    )
    from harness.spec.load import load_matrix

    matrix = load_matrix(args.matrix_dir)
    selection = {axis: split_values(getattr(args, option)) for option, axis in SELECTION_OPTIONS.items()}
    validate_selection(matrix, selection)
    selection = with_stacks(matrix, selection)
    cells, pruned = expand(matrix)
    cells = select(cells, selection)
    pruned = [] if args.no_pruned else select_pruned(pruned, selection)
    if args.json:
        axes = lambda cell: {axis: cell.axis(axis) for axis in AXES} | {"shape": cell.shape}  # noqa: E731
        print(json.dumps({"matrix_dir": str(args.matrix_dir),
                          "selection": {k: v for k, v in selection.items() if v},
                          "cells": [{"id": c.id, **axes(c)} for c in cells],
                          "pruned": [{"id": p.id, **axes(p.cell), "reason": p.reason} for p in pruned]},
                         indent=1))
        return 0
    for cell in cells:
        print(cell.id)
    print(f"{len(cells)} cell(s)")
    if pruned:
        width = max(len(p.id) for p in pruned)
        print()
        print(f"{'PRUNED':<{width}}  REASON")
        for item in pruned:
            print(f"{item.id:<{width}}  {item.reason}")
        print(f"{len(pruned)} pruned combination(s)")
    return 0


# --- prefetch ---------------------------------------------------------------------------------

def add_prefetch(subparsers) -> None:
    p = subparsers.add_parser(
        "prefetch", help="fetch remote-code rows' code (or weights) into the HF cache (needs hub access)",
        description="Downloads, with huggingface_hub's snapshot_download and allow_patterns, the config, "
                    "*.py and tokenizer files of every remote-code row (trust_remote_code = true), or of the "
                    "rows named with --arch: a few hundred kB a row, after which the rows' tiny cells run "
                    "offline under --trust-remote-code. --weights adds each row's real checkpoint. Copy the "
                    "cache (HF_HUB_CACHE) to the machine that runs the matrix.")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--code-only", action="store_true", help="config, code and tokenizer files (default)")
    what.add_argument("--weights", action="store_true", help="also the real checkpoint's safetensors")
    p.add_argument("--arch", action="append", default=[], metavar="NAME[,NAME]",
                   help="only these rows (repeatable, comma lists; default: every remote-code row)")
    p.add_argument("--dry-run", action="store_true", help="print the repos and file patterns; fetch nothing")
    p.add_argument("--matrix-dir", "--matrix", dest="matrix_dir", default=str(DEFAULT_MATRIX_DIR),
                   help="matrix directory (default: %(default)s)")
    p.set_defaults(func=run_prefetch, matrix_option="matrix_dir")


def run_prefetch(args) -> int:
    from harness.ckpt.prefetch import fetch, not_remote, plan, summary
    from harness.spec.cells import split_values, validate_selection
    from harness.spec.load import load_matrix

    matrix = load_matrix(args.matrix_dir)
    rows = split_values(args.arch)
    validate_selection(matrix, {"architecture": rows})
    for arch in not_remote(matrix, rows):
        print(f"{arch.name}: runs transformers' own code (no trust_remote_code in {arch.source_file}); "
              "nothing to prefetch", file=sys.stderr)
    fetches = plan(matrix, rows, weights=args.weights)
    if not fetches:
        print("no remote-code rows in the selection")
        return 0 if not rows else USAGE_ERROR
    if args.dry_run:
        width = max(len(f.row) for f in fetches)
        for item in fetches:
            print(f"{item.row:<{width}}  {item.repo}  {' '.join(item.patterns)}")
        repos = len({f.repo for f in fetches})
        print(f"{len(fetches)} download(s) of {repos} repo(s) for {len({f.row for f in fetches})} row(s); "
              "dry run, nothing fetched")
        return 0
    outcomes = fetch(fetches)
    print(summary(outcomes))
    return 1 if any(o.status == "failed" for o in outcomes) else 0


# --- bisect -----------------------------------------------------------------------------------

def add_bisect(subparsers) -> None:
    p = subparsers.add_parser(
        "bisect", help="the first release of a package that breaks a cell (runs each probed release)",
        description="Binary search over a package's releases between a known-good and a known-bad one: "
                    "each probed release runs the selection in its own environment (uv, kept under the "
                    "harness cache), the other packages held at fixed releases. Every probe's records are "
                    "kept, so a second bisect over the same range runs nothing again. The selection is one "
                    "cell (--cell) or pytest's matrix options after `--` (default device: -m cpu).")
    p.add_argument("--cell", metavar="ID", help="one cell id, e.g. LlamaForCausalLM-lora-single-tiny-train")
    p.add_argument("--package", default="transformers", help="the package to bisect (default: %(default)s)")
    p.add_argument("--good", required=True, metavar="RELEASE", help="a release where the selection passes")
    p.add_argument("--bad", required=True, metavar="RELEASE", help="a later release where it fails")
    p.add_argument("--with", dest="pins", action="append", default=[], metavar="PACKAGE==RELEASE",
                   help="hold another package at a release (repeatable; default: transformers or peft as "
                        "installed here, whichever is not bisected)")
    p.add_argument("--pair", metavar="PACKAGE", help="also run the last good and first bad release against "
                                                    "each --pair-versions release of PACKAGE")
    p.add_argument("--pair-versions", default="", metavar="R1,R2", help="the releases of --pair to try")
    p.add_argument("--wheels", type=Path, help="a wheel directory to use as the only index (offline hosts)")
    p.add_argument("-n", "--jobs", type=int, default=1, help="pytest-xdist workers per probe")
    p.add_argument("--report", type=Path, help="also write the answer (Markdown) to this file")
    p.add_argument("--save", type=Path, metavar="FILE.json",
                   help="also write the finding for the docs (committed ones: reports/bisects/; llm.md's "
                        "transformers column names the first bad release of the cells it covers)")
    p.add_argument("--matrix-dir", "--matrix", dest="matrix_dir", default=str(DEFAULT_MATRIX_DIR),
                   help="matrix directory (default: %(default)s)")
    p.add_argument("selection", nargs="*", help="pytest's matrix options, after `--`")
    p.set_defaults(func=run_bisect, matrix_option="matrix_dir")


def cell_selection(matrix, cell_id: str) -> list[str]:
    """The pytest options that select exactly one cell of the matrix."""
    from harness.spec.cells import SELECTION_OPTIONS, expand

    cell = next((c for c in expand(matrix)[0] if c.id == cell_id), None)
    if cell is None:
        raise SelectionError(f"no runnable cell {cell_id!r} (`compat-harness cells` lists them)")
    return [arg for option, axis in SELECTION_OPTIONS.items() for arg in (f"--{option}", cell.axis(axis))]


def run_bisect(args) -> int:
    from harness.run.bisect import BisectError, bisect, pair, report, with_device
    from harness.run.envs import EnvError
    from harness.spec.load import load_matrix
    from harness.spec.matrix import installed_version

    if bool(args.cell) == bool(args.selection):
        print("ERROR: give one --cell ID or pytest's matrix options after `--`", file=sys.stderr)
        return USAGE_ERROR
    matrix = load_matrix(args.matrix_dir)
    selection = with_device(cell_selection(matrix, args.cell) if args.cell else list(args.selection))
    others = {name: installed_version(name) for name in ("transformers", "peft") if name != args.package}
    for pin in args.pins:
        name, sep, version = pin.partition("==")
        if not sep:
            print(f"ERROR: --with {pin!r}: write PACKAGE==RELEASE", file=sys.stderr)
            return USAGE_ERROR
        others[name] = version
    print(f"bisect {args.package} {args.good} (good) .. {args.bad} (bad), holding "
          f"{', '.join(f'{k} {v}' for k, v in others.items())}; selection: {' '.join(selection)}")
    try:
        result = bisect(args.package, args.good, args.bad, selection, others=others, jobs=args.jobs,
                        wheels=args.wheels)
        text = report(result)
        follows_text = ""
        if args.pair:
            versions = [v for v in args.pair_versions.split(",") if v]
            if not versions:
                print("ERROR: --pair needs --pair-versions R1,R2", file=sys.stderr)
                return USAGE_ERROR
            follows_text = pair(result, args.pair, versions, selection, others=others, jobs=args.jobs,
                                wheels=args.wheels)
            text += "\n\n" + follows_text
    except (BisectError, EnvError) as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 1
    print(text)
    if args.report:
        args.report.write_text(text + "\n")
    if args.save:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        args.save.write_text(json.dumps(result.finding(others, selection, follows_text), indent=1) + "\n")
    return 0


# --- release-bump (and release-watch, its report-only mode) -------------------------------------

def _bump_arguments(p, report_only: bool) -> None:
    p.add_argument("--packages", default="", metavar="P[==R],...",
                   help="the packages to bump, in order (default: transformers, peft, torch and the default "
                        "set's `also`); P==R tries release R instead of the newest")
    p.add_argument("--selection", action="append", default=[], metavar="OPTIONS",
                   help="a selection to measure, pytest's matrix options in one string (repeatable; default: "
                        "`make -s selections`, what make test and make matrix run)")
    p.add_argument("--wheels", type=Path, help="a wheel directory: releases come from it (and it is the only "
                                               "index with COMPAT_HARNESS_OFFLINE=1)")
    p.add_argument("-n", "--jobs", type=int, default=1, help="pytest-xdist workers per run")
    p.add_argument("--no-bisect", action="store_true",
                   help="take the two releases as each regression's range")
    p.add_argument("--report", type=Path, help="also write the report here (report-only: default "
                                               "reports/local/release-bump.md)")
    p.add_argument("--issue-body", type=Path,
                   help="also write the PR's (or issue's) title on the first line, "
                                                   "then the report (nothing new: no file)")
    if not report_only:
        p.add_argument("--dry-run", action="store_true", help="measure and write the report only")
        p.add_argument("--no-branch", action="store_true",
                       help="write the proposal into the working tree instead of a new branch")
        p.add_argument("--branch", help="the branch's name (default: release-bump/<pkg>-<release>[-...])")
    p.add_argument("--matrix-dir", "--matrix", dest="matrix_dir", default=str(DEFAULT_MATRIX_DIR),
                   help="matrix directory (default: %(default)s)")


def add_release_bump(subparsers) -> None:
    p = subparsers.add_parser(
        "release-bump", help="measure newer releases against the default release set's lock and propose the "
                             "bump (lock, releases.toml, limits, records, docs) on a branch",
        description="For each watched package with a newer release, makes the candidate lock of the default "
                    "release set, runs the selections under both locks (kept by their digests), compares "
                    "them "
                    "cell by cell, bisects each pass -> fail, and writes the proposal on a new branch from "
                    "HEAD: the new lock, matrix/releases.toml, a known limit per regression, the limits it "
                    "retires narrowed, both runs' records, the re-rendered docs and a Markdown report.")
    _bump_arguments(p, report_only=False)
    p.set_defaults(func=run_release_bump, matrix_option="matrix_dir", report_only=False)
    w = subparsers.add_parser("release-watch", help="release-bump's report-only mode (nothing proposed)")
    _bump_arguments(w, report_only=True)
    w.set_defaults(func=run_release_bump, matrix_option="matrix_dir", report_only=True)


def run_release_bump(args) -> int:
    from harness.run import bump_report, proposal, release_bump, selections
    from harness.run.bisect import BisectError
    from harness.run.envs import EnvError
    from harness.run.limit_edits import EditError
    from harness.run.lock_runs import RunError
    from harness.run.locks import LockError, default_set
    from harness.spec.load import load_matrix

    matrix = load_matrix(args.matrix_dir)
    release_set = default_set(matrix)
    report_only = args.report_only or args.dry_run
    try:
        packages = (release_bump.parse_packages(args.packages, release_set) if args.packages else
                    [(p, None) for p in release_bump.watched_packages(release_set)])
        chosen = ([selections.normalize(shlex.split(s)) for s in args.selection] if args.selection
                  else selections.from_makefile())
    except (ValueError, selections.SelectionsError) as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return USAGE_ERROR
    print(f"release set `{release_set.name}`: {len(chosen)} selection(s); packages: "
          f"{', '.join(p + ('==' + v if v else '') for p, v in packages)}")
    try:
        result = release_bump.bump(matrix, packages, chosen, wheels=args.wheels, jobs=args.jobs,
                                   cell_selection=functools.partial(cell_selection, matrix),
                                   bisect_enabled=not args.no_bisect)
    except (BisectError, EnvError, RunError, LockError) as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 1
    result.command = "compat-harness release-bump " + shlex.join(
        ["--packages", ",".join(f"{s.package}=={s.candidate.newest}" for s in result.proposed)
         or args.packages or "", *(a for s in args.selection for a in ("--selection", s)),
         *(["--wheels", str(args.wheels)] if args.wheels else []), "-n", str(args.jobs)])
    text = bump_report.report(result)
    print("--- summary (one line per watched package)")
    for line in bump_report.summary(result):
        print(f"  {line}")
    if args.issue_body and result.proposed:
        args.issue_body.parent.mkdir(parents=True, exist_ok=True)
        args.issue_body.write_text(f"{bump_report.title(result)}\n{text}")
    written = args.report or (Path("reports/local/release-bump.md") if report_only or not result.proposed
                              else None)
    if written:
        written.parent.mkdir(parents=True, exist_ok=True)
        written.write_text(text)
        print(f"report: {written}")
    if report_only or not result.proposed:
        return 0
    try:
        if args.no_branch:
            proposal.write(REPO_ROOT, result, text, proposal.head_sha())
            print(f"proposal written into the working tree; report: {proposal.report_path(result)}")
        else:
            branch = args.branch or result.branch
            commit = proposal.on_branch(result, text, branch)
            print(f"proposal: branch {branch} (commit {commit}); report: {proposal.report_path(result)}")
    except (proposal.ProposalError, EditError, OSError, ValueError) as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 1
    print(bump_report.title(result))
    return 0


# --- sweep ---------------------------------------------------------------------------------------

def add_sweep(subparsers) -> None:
    from harness.run.sweep_slice import DEFAULT_SLICE, SLICES_FILE

    p = subparsers.add_parser(
        "sweep", help="run a slice of cells under every final release of one package in a range",
        description="One pytest session per release of PACKAGE (the others held at named releases), each in "
                    "an environment of its own: the default release set's lock with the releases "
                    "overridden (made once, kept by the lock's digest), or with --on-host the host's "
                    "interpreter with the release's verified tree first on PYTHONPATH. Records go to "
                    "OUT/PACKAGE-VERSION.jsonl once a session ended with a verdict, so a killed sweep "
                    "resumes; the end is a table of cells x releases (OUT/grid.md) and OUT/sweep.json.")
    p.add_argument("package", help="the package swept, e.g. transformers")
    p.add_argument("--from", dest="start", metavar="RELEASE", help="the first release (inclusive)")
    p.add_argument("--to", dest="end", metavar="RELEASE", help="the last release (inclusive)")
    p.add_argument("--minors-only", action="store_true",
                   help="only the first final release of each minor (N.M.0)")
    p.add_argument("--releases", default="", metavar="R1,R2",
                   help="exactly these releases (instead of a range)")
    p.add_argument("--hold", action="append", default=[], metavar="PACKAGE==RELEASE",
                   help="hold another package at a release (repeatable, comma lists)")
    p.add_argument("--slice", default=DEFAULT_SLICE,
                   help=f"the slice of {SLICES_FILE.relative_to(REPO_ROOT)} (default: %(default)s)")
    p.add_argument("--slices-file", type=Path, default=SLICES_FILE, help=argparse.SUPPRESS)
    for option in SELECTION_OPTIONS:
        p.add_argument(f"--{option}", action="append", default=[], metavar="NAME[,NAME]",
                       help=f"narrow the slice: these {SELECTION_OPTIONS[option]} values instead of its own")
    p.add_argument("--wheels", type=Path,
                   help="a wheel directory: releases come from it, and environments install from it "
                        "(the only index with COMPAT_HARNESS_OFFLINE=1)")
    p.add_argument("--on-host", type=Path, metavar="OVERLAY_ROOT",
                   help="no environments: this interpreter with OVERLAY_ROOT/PACKAGE-VERSION (and each held "
                        "package's tree) first on PYTHONPATH (`compat-harness sweep-trees` makes them)")
    p.add_argument("-n", "--jobs", type=int, default=1, help="pytest-xdist workers per release's session")
    p.add_argument("--parallel", type=int, default=1, help="releases run at once (default: %(default)s)")
    p.add_argument("--rerun", action="store_true", help="run releases an earlier sweep finished again")
    p.add_argument("--dry-run", action="store_true",
                   help="say what each release would run with (its environment's lock, or with --on-host its "
                        "trees and any requirement that no tree meets); run nothing")
    p.add_argument("--out", type=Path, help="output directory (default: reports/local/sweeps/PACKAGE)")
    p.set_defaults(func=run_sweep)


def run_sweep(args) -> int:
    from harness.run import envs, overlays, sweep
    from harness.run.bisect import BisectError, index_versions
    from harness.run.sweep_slice import SliceError, load_slice
    from harness.spec.cells import split_values
    from harness.spec.load import load_matrix

    package = args.package.lower()
    try:
        chosen = load_slice(args.slice, args.slices_file, load_matrix()).narrowed(
            {option: split_values(getattr(args, option)) for option in SELECTION_OPTIONS})
        held = sweep.parse_holds(args.hold)
        if package in held:
            raise sweep.SweepError(f"--hold {package}==...: {package} is the package swept")
        explicit = split_values([args.releases])
        if not explicit and not args.start:
            raise sweep.SweepError("give the range (--from RELEASE [--to RELEASE]) or --releases R1,R2")
        if package == "torch" and not args.on_host:
            raise sweep.SweepError("torch is the host's in every environment (its CPU or CUDA build): "
                                   "sweep it with --on-host trees of its builds")
        if args.on_host:
            available, source = overlays.overlay_versions(args.on_host, package), str(args.on_host)
        elif explicit and args.wheels is None:
            # named releases: the environment says if one is missing; the index, where it answers,
            # says which releases of the range the sweep leaves out (unknown without it; an offline
            # host, COMPAT_HARNESS_OFFLINE=1, does not ask it)
            source = "the index"
            try:
                available = [] if envs.offline() else index_versions(package)
            except BisectError:
                available = []
        else:
            available = index_versions(package, args.wheels)
            source = str(args.wheels) if args.wheels else "the index"
        releases = sweep.select_releases(available, start=args.start, end=args.end,
                                         minors_only=args.minors_only, explicit=explicit, source=source)
        sessions = (sweep.HostTrees(args.on_host, package, held) if args.on_host
                    else sweep.LocalEnvs(package, held, wheels=args.wheels))
    except (SliceError, sweep.SweepError, BisectError, overlays.TreeError) as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return USAGE_ERROR
    if args.dry_run:
        return _sweep_plan(sessions, package, releases)
    out = args.out or Path("reports/local/sweeps") / package
    mode = f"on-host {args.on_host}" if args.on_host else "local"
    print(f"sweep {package}: {len(releases)} release(s) {', '.join(releases)}; holding "
          f"{', '.join(f'{k} {v}' for k, v in held.items()) or 'nothing'}; {mode}; slice `{chosen.name}`: "
          f"{' '.join(chosen.selection)}; {args.parallel} at once x {args.jobs} worker(s); out {out}",
          flush=True)
    result = sweep.sweep(package, releases, held=held, selection=chosen.selection, out=out, sessions=sessions,
                         jobs=args.jobs, parallel=args.parallel, rerun=args.rerun, slice_name=chosen.name,
                         mode=mode, skipped=sweep.unswept(available, releases))
    for line in result.lines:
        print(line)
    if result.stopped:
        print(f"stopped (exit {result.stopped}): the same command resumes", file=sys.stderr)
        return result.stopped
    if result.harness_failures:
        print(f"ERROR: no verdict for {', '.join(result.harness_failures)} (a harness problem, see "
              f"{result.summary_path})", file=sys.stderr)
        return 1
    return 0


def _sweep_plan(sessions, package: str, releases: list[str]) -> int:
    """`sweep --dry-run`: each release's trees (on a host) or lock (local), or why it has none."""
    from harness.run import overlays
    from harness.run.locks import LockError

    missing = 0
    for version in releases:
        try:
            if hasattr(sessions, "overlay"):
                plan = ", ".join(tree.name for tree in sessions.overlay(version))
            else:
                plan = str(sessions.lock(version))
        except (overlays.TreeError, LockError) as exc:
            plan, missing = f"NONE: {exc}", missing + 1
        print(f"{package} {version}: {plan}")
    return 1 if missing else 0


def add_sweep_trees(subparsers) -> None:
    p = subparsers.add_parser(
        "sweep-trees", help="make the release trees `compat-harness sweep --on-host` runs from wheel files",
        description="pip install --no-deps --target OUT/NAME-VERSION of each wheel in DIR (no index, no "
                    "bytecode), then each tree is checked against its RECORD's sha256 lines. A tree already "
                    "there is kept when it verifies. --verify checks the trees under OUT only; --pack and "
                    "--unpack carry trees to an offline host in one small archive, verified there.")
    p.add_argument("--wheels", type=Path, help="the wheel directory")
    p.add_argument("--out", type=Path, required=True, metavar="OVERLAY_ROOT")
    p.add_argument("--packages", default="", metavar="P1,P2", help="only these packages' wheels (or trees)")
    p.add_argument("--releases", default="", metavar="R1,R2", help="--pack: only the trees of these releases")
    p.add_argument("--verify", action="store_true", help="check every tree under OUT against its RECORD")
    p.add_argument("--pack", type=Path, metavar="FILE.tar.xz",
                   help="write OUT's trees into one archive, each file's versions side by side (consecutive "
                        "releases cost little more than one: carry it to an offline host)")
    p.add_argument("--unpack", type=Path, metavar="FILE.tar.xz",
                   help="extract an archive of --pack under OUT and verify each of its trees")
    p.set_defaults(func=run_sweep_trees)


def run_sweep_trees(args) -> int:
    from harness.run import overlays
    from harness.spec.cells import split_values

    try:
        if args.verify:
            found = [overlays.verify_tree(path) for path in overlays.tree_dirs(args.out)]
        elif args.pack:
            trees = overlays.tree_dirs(args.out, split_values([args.packages]), split_values([args.releases]))
            overlays.pack_trees(trees, args.pack)
            print(f"{args.pack}: {len(trees)} tree(s), {args.pack.stat().st_size / 2**20:.1f} MiB: "
                  f"{', '.join(t.name for t in trees)}")
            return 0
        elif args.unpack:
            found = overlays.unpack_trees(args.unpack, args.out)
        elif args.wheels is None:
            print("ERROR: give --wheels DIR, --pack FILE, --unpack FILE or --verify", file=sys.stderr)
            return USAGE_ERROR
        else:
            found = overlays.make_trees(args.wheels, args.out, split_values([args.packages]))
    except overlays.TreeError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 1
    for tree in found:
        print(f"{tree.path}: {tree.name} {tree.version}, {tree.files} files as its RECORD lists them")
    return 0


# --- lock ----------------------------------------------------------------------------------------

def add_lock(subparsers) -> None:
    p = subparsers.add_parser(
        "lock", help="make, check or verify the lock files of the release sets (locks/NAME.txt)",
        description="Without options: (re)make the lock file of each named release set of "
                    "matrix/releases.toml "
                    "(default: every set) and of the checkpoint packages, with uv pip compile (needs the "
                    "package index). --check: each set's lock pins the releases the set holds (offline). "
                    "--verify SET: this environment holds exactly the lock's releases; the stamp that "
                    "records name (env.lock) is written then.")
    p.add_argument("sets", nargs="*", help="release set names (default: every set)")
    p.add_argument("--check", action="store_true", help="check the lock files against releases.toml only")
    p.add_argument("--verify", metavar="SET", help="compare this environment with SET's lock and stamp it")
    p.add_argument("--matrix-dir", "--matrix", dest="matrix_dir", default=str(DEFAULT_MATRIX_DIR),
                   help="matrix directory (default: %(default)s)")
    p.set_defaults(func=run_lock, matrix_option="matrix_dir")


def run_lock(args) -> int:
    from harness.lockfile import lock_path, write_stamp
    from harness.run import locks
    from harness.spec.load import load_matrix

    matrix = load_matrix(args.matrix_dir)
    named = args.sets + ([args.verify] if args.verify else [])
    unknown = [name for name in named if name not in matrix.release_sets]
    if unknown:
        print(f"ERROR: matrix/releases.toml has no release set {', '.join(unknown)} "
              f"(sets: {', '.join(matrix.release_sets)})", file=sys.stderr)
        return 2
    try:
        if args.verify:
            path = locks.check_set(matrix.release_sets[args.verify])
            found = locks.verify_installed(path)
            if found.mismatched:
                print(f"ERROR: this environment is not {path.name}: " + "; ".join(found.mismatched),
                      file=sys.stderr)
                return 1
            stamp = write_stamp(Path(sys.prefix), args.verify, path)
            print(f"{sys.prefix}: exactly the {found.packages} releases of {path.name} "
                  f"(sha256 {stamp['sha256']}); "
                  f"torch {found.torch} from the host, {locks.python_label()}")
            return 0
        chosen = [matrix.release_sets[n] for n in args.sets] or list(matrix.release_sets.values())
        for release_set in chosen:
            if args.check:
                print(f"{locks.check_set(release_set).name}: pins {', '.join(release_set.pins)}")
            else:
                path = locks.compile_set(release_set, lock_path(release_set.name))
                print(f"{path.relative_to(REPO_ROOT)}: {len(locks.pinned_versions(path))} packages")
        if not args.check and not args.sets:
            path = locks.compile_checkpoints(lock_path(locks.CHECKPOINTS))
            print(f"{path.relative_to(REPO_ROOT)}: {len(locks.pinned_versions(path))} packages")
    except locks.LockError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 1
    return 0


def add_release_history(subparsers) -> None:
    p = subparsers.add_parser(
        "release-history", help="record what a transformers release offers in matrix/release_history.json",
        description="Read the installed transformers' model types, experts kernels and DistributedConfig "
                    "fields (harness/spec/release_facts.py) and record them as that release's line of "
                    "matrix/release_history.json, which says for every measured release what it offered. "
                    "--trees ROOT: do it for every transformers tree under ROOT (unpacked releases, "
                    "harness/run/overlays.py), each in a process of its own.")
    p.add_argument("--trees", metavar="ROOT", help="record every transformers-<version> tree under ROOT")
    p.add_argument("--matrix-dir", "--matrix", dest="matrix_dir", default=str(DEFAULT_MATRIX_DIR),
                   help="matrix directory (default: %(default)s)")
    p.set_defaults(func=run_release_history)


def run_release_history(args) -> int:
    from harness.spec.release_facts import as_history_facts, release_facts
    from harness.spec.release_history import dump_history, load_history

    if args.trees:
        from harness.run import overlays
        from harness.run.sweep import HostTrees

        failed = 0
        for version in overlays.overlay_versions(Path(args.trees), "transformers"):
            try:
                session = HostTrees(Path(args.trees), "transformers", {}).session(version)
            except overlays.TreeError as exc:
                print(f"transformers {version}: {exc}", file=sys.stderr)
                failed += 1
                continue
            done = subprocess.run([session.python, "-m", "harness.cli", "release-history", "--matrix-dir",
                                   args.matrix_dir], env={**os.environ, **session.env}, capture_output=True,
                                  text=True, cwd=REPO_ROOT)
            print(done.stdout.strip() or done.stderr.strip()[-600:])
            failed += done.returncode != 0
        return 1 if failed else 0
    facts = release_facts(())
    history = load_history(args.matrix_dir)
    history.record(facts.transformers, as_history_facts(facts))
    path = dump_history(history, args.matrix_dir)
    print(f"transformers {facts.transformers}: {len(facts.model_types)} model types, experts kernels "
          f"{', '.join(sorted(facts.experts_kernels))}; DistributedConfig fields "
          f"{', '.join(sorted(facts.distributed_config_fields)) or '(no DistributedConfig)'} -> {path.name}")
    return 0


def _nightly(name: str, command: str):
    """The nightly pipeline's subcommands live in harness/report/nightly.py; each reads --matrix-dir."""
    def add(subparsers) -> None:
        from harness.report import nightly

        getattr(nightly, name)(subparsers)
        subparsers.choices[command].set_defaults(matrix_option="matrix_dir")
    return add


def pytest_selection(argv: list[str]) -> dict[str, list[str]]:
    """The matrix selection inside pytest arguments (nightly-sim's `-- ...`), read as pytest does."""
    from harness.spec.cells import split_values

    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for option in SELECTION_OPTIONS:
        parser.add_argument(f"--{option}", action="append", default=[])
    known, _ = parser.parse_known_args(argv)
    return {axis: split_values(getattr(known, option)) for option, axis in SELECTION_OPTIONS.items()}


def add_pool_worker(subparsers) -> None:
    """A node of a rank pool that spans hosts lives in harness/run/poolnode.py."""
    from harness.run.poolnode import add_pool_worker as add

    add(subparsers)


SUBCOMMANDS = (add_ingest, add_diff, add_render, add_limits, add_which, add_cells, add_prefetch, add_bisect,
               add_release_bump, add_sweep, add_sweep_trees, add_lock, add_release_history,
               _nightly("add_nightly_sim", "nightly-sim"), _nightly("add_nightly_merge", "nightly-merge"),
               _nightly("add_durations", "durations"), add_pool_worker)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="compat-harness", description="Compatibility-matrix harness for fine-tuning HF LLMs.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(subparsers)
    return parser


def matrix_dir_of(args) -> str | None:
    """The matrix directory a subcommand reads (None: it reads no matrix)."""
    option = getattr(args, "matrix_option", None)
    if option is None:
        return None
    return getattr(args, option) or str(DEFAULT_MATRIX_DIR)


def main(argv: list[str] | None = None) -> int:
    from harness.spec.load import load_matrix

    args = build_parser().parse_args(argv)
    try:
        directory = matrix_dir_of(args)
        if directory is not None:
            matrix = load_matrix(directory)  # a matrix mistake stops every subcommand here, before it acts
            if args.command == "nightly-sim":  # its shards' pytest would stop on a wrong name, later
                from harness.spec.cells import validate_selection

                validate_selection(matrix, pytest_selection(args.selection))
        with warnings.catch_warnings():
            # Each corrupt line is its own warning; show all of them, not one per call site.
            warnings.simplefilter("always", CorruptRecordWarning)
            return args.func(args)
    except (MatrixError, SelectionError) as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return USAGE_ERROR


if __name__ == "__main__":
    raise SystemExit(main())
