"""`compat-harness sweep`: one slice of cells under every final release of one package in a range.

Each release runs the slice (harness/run/sweep_slice.py) in ONE pytest session of its own, in an
environment that holds that release and the other packages at named releases, so the plugin's
rank pools live per environment and every record names what ran (its `env`, as the plugin writes
it). Two kinds of environment:

- local (default): the default release set's lock with the swept and held releases overridden
  (harness/run/locks.py `candidate_lock`, as the release bump makes its candidate), installed once
  per lock digest (harness/run/envs.py `ensure_locked_env`);
- on a host with its own interpreter and packages (`--on-host ROOT`, the offline GPU host): no
  environment is made; the release's tree ROOT/NAME-VERSION (and each held package's) is checked
  against its RECORD (harness/run/overlays.py) and put first on the session's PYTHONPATH.

A release's records go to OUT/NAME-VERSION.jsonl.gz (gzipped: a sweep's tracebacks are most of
the repository's size otherwise) only when its session ended with a verdict (pytest exit 0 or 1),
under a temporary name until then, so a killed sweep resumes where it stopped. Any
other exit is a harness problem of that release, never a verdict: it is reported and kept in
OUT/sweep.json, the sweep goes on, and exits non-zero at the end. The end is the table of cells x
releases (harness/run/sweep_grid.py): OUT/grid.md in full, the changing rows on the terminal.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from harness.run import overlays
from harness.run.bisect import final_release, read_records
from harness.run.sweep_grid import build_grid, compact, counts, markdown
from harness.spec.matrix import REPO_ROOT

# pytest's exit codes that carry a verdict: 0 every cell as declared, 1 cells failed.
VERDICT_EXITS = (0, 1)
TAIL_CHARS = 3000
# The pytest sessions running now: a sweep that is stopped (SIGTERM, Ctrl-C) ends them too, so that
# none goes on writing records of a release the next sweep will run again.
RUNNING: set[subprocess.Popen] = set()
STOPPING = threading.Event()


class SweepError(RuntimeError):
    """The sweep cannot start (no such release, a missing tree): the message says the fix."""


# --- which releases ------------------------------------------------------------------------------

def select_releases(available: list[str], *, start: str | None = None, end: str | None = None,
                    minors_only: bool = False, explicit: list[str] | None = None,
                    source: str = "the index") -> list[str]:
    """The final releases to sweep, oldest first: `explicit` (each one must be available), else those
    from `start` to `end` inclusive; `minors_only` keeps the first final release of each minor."""
    finals = sorted({v for v in map(final_release, available) if v is not None})
    if explicit:
        chosen = []
        for text in explicit:
            version = final_release(text)
            if version is None:
                raise SweepError(f"--releases {text!r}: not a final release (write N.M.P)")
            if finals and version not in finals:
                raise SweepError(f"--releases {text}: not a release on {source} "
                                 f"(nearest: {', '.join(str(v) for v in _nearest(finals, version))})")
            chosen.append(version)
        return [str(v) for v in sorted(set(chosen))]
    try:
        low = Version(start) if start else None
        high = Version(end) if end else None
    except InvalidVersion as exc:
        raise SweepError(f"--from/--to: {exc}") from None
    chosen = [v for v in finals if (low is None or v >= low) and (high is None or v <= high)]
    if minors_only:
        firsts: dict[tuple[int, int], Version] = {}
        for version in chosen:
            firsts.setdefault((version.major, version.minor), version)
        chosen = sorted(firsts.values())
    if not chosen:
        raise SweepError(f"no final release from {start or 'the first'} to {end or 'the last'} on {source}")
    return [str(v) for v in chosen]


def unswept(available: list[str], releases: list[str]) -> list[str] | None:
    """The final releases of `available` between the first and the last of `releases` that the sweep
    does not run (a sampled sweep claims only what ran); None where `available` is unknown."""
    if not available or not releases:
        return None
    low, high, ran = Version(releases[0]), Version(releases[-1]), {Version(v) for v in releases}
    finals = {v for v in map(final_release, available) if v is not None}
    return [str(v) for v in sorted(finals) if low <= v <= high and v not in ran]


def _nearest(finals: list[Version], version: Version) -> list[Version]:
    return sorted(finals, key=lambda v: abs(v.release[-1] - version.release[-1])
                  if v.release[:2] == version.release[:2] else 10**6)[:3]


def parse_holds(values: list[str]) -> dict[str, str]:
    """`peft==0.21.2` (repeatable, comma lists) -> {"peft": "0.21.2"}."""
    out = {}
    for item in (part.strip() for value in values for part in value.split(",")):
        if not item:
            continue
        name, sep, version = item.partition("==")
        if not sep or not name or final_release(version) is None:
            raise SweepError(f"--hold {item!r}: write PACKAGE==RELEASE, e.g. peft==0.21.2")
        out[canonicalize_name(name)] = version
    return out


# --- where each release runs ---------------------------------------------------------------------

@dataclass
class Session:
    """How to start one release's pytest: the interpreter and what its environment adds."""

    python: str
    env: dict[str, str] = field(default_factory=dict)
    where: str = ""  # said on the progress line


class LocalEnvs:
    """One locked environment per release: the default release set's lock with the swept and held
    releases overridden (the release bump's candidate lock), made once per lock digest."""

    def __init__(self, package: str, held: dict[str, str], *, wheels: Path | None = None,
                 log: Callable[[str], None] = print):
        from harness.run.locks import default_set
        from harness.spec.load import load_matrix

        self.package, self.held, self.wheels, self.log = package, held, wheels, log
        self.release_set = default_set(load_matrix())

    def overrides(self, version: str) -> dict[str, str]:
        return {**self.held, self.package: version}

    def lock(self, version: str) -> Path:
        from harness.lockfile import lock_path
        from harness.run.candidates import local_dirs
        from harness.run.locks import candidate_lock

        overrides = self.overrides(version)
        if all(self.release_set.releases.get(k) == v for k, v in overrides.items()):
            return lock_path(self.release_set.name)  # the set itself: its committed lock
        return candidate_lock(self.release_set, overrides, find_links=local_dirs(self.wheels))

    def session(self, version: str) -> Session:
        from harness.run.envs import ensure_locked_env

        lock = self.lock(version)
        env = ensure_locked_env(lock, set_name=self.release_set.name, wheels=self.wheels, log=self.log)
        return Session(str(env.python), {}, f"env {env.path.name}{' (made now)' if env.created else ''}")


class HostTrees:
    """The host's interpreter with each release's verified tree first on PYTHONPATH, and the trees of
    what that release requires where the host's own release does not fit (transformers 5.0.0 wants
    tokenizers<=0.23.0, 5.25.0 huggingface-hub>=2.4: one host cannot have both), read from the
    release's own METADATA, so each release runs with dependencies it accepts."""

    def __init__(self, root: Path, package: str, held: dict[str, str], *, python: str = sys.executable):
        self.root, self.package, self.held, self.python = Path(root), package, held, python
        self.held_trees = [self._verified(name, version) for name, version in held.items()]

    def _verified(self, name: str, version: str) -> Path:
        path = overlays.tree_path(self.root, name, version)
        overlays.verify_tree(path, name, version)
        return path

    def overlay(self, version: str) -> list[Path]:
        """The release's tree, the held trees, and a tree for each requirement the host does not meet
        (the newest under ROOT that fits; its own requirements likewise)."""
        from packaging.specifiers import SpecifierSet

        from harness.spec.matrix import installed_version

        chosen = [self._verified(self.package, version), *self.held_trees]
        seen = {canonicalize_name(self.package), *self.held}
        queue, unmet = list(chosen), []
        while queue:
            for requirement in overlays.requirements(queue.pop(0)):
                name = canonicalize_name(requirement.name)
                if name in seen:
                    continue
                seen.add(name)
                wanted: SpecifierSet = requirement.specifier
                host = installed_version(name)
                if host is not None and wanted.contains(host, prereleases=True):
                    continue
                fitting = [v for v in overlays.overlay_versions(self.root, name)
                           if wanted.contains(v, prereleases=True)]
                if not fitting:
                    unmet.append(f"{name}{wanted} (the host has {host or 'none'})")
                    continue
                tree = self._verified(name, fitting[-1])
                chosen.append(tree)
                queue.append(tree)
        if unmet:
            raise overlays.TreeError(
                f"{self.package} {version} requires {'; '.join(unmet)}, and {self.root} has no tree that "
                "fits: add its wheel there (`compat-harness sweep-trees --wheels DIR --out ROOT`)")
        return chosen

    def session(self, version: str) -> Session:
        trees = self.overlay(version)
        paths = [*map(str, trees), str(REPO_ROOT)]
        if os.environ.get("PYTHONPATH"):
            paths.append(os.environ["PYTHONPATH"])
        return Session(self.python, {"PYTHONPATH": os.pathsep.join(paths)},
                       "trees " + ", ".join(t.name for t in trees))


# --- one release ---------------------------------------------------------------------------------

@dataclass
class ReleaseRun:
    """One release's outcome, as OUT/sweep.json keeps it."""

    version: str
    state: str  # "ran", "kept" (finished by an earlier sweep), "harness-failure"
    exit: int | None = None
    seconds: float | None = None  # the pytest session's
    env_s: float | None = None  # making (or finding) the environment or tree
    counts: dict[str, int] = field(default_factory=dict)
    versions: dict[str, list[str]] = field(default_factory=dict)
    where: str = ""
    error: str = ""
    changed: bool = False

    @property
    def verdict(self) -> bool:
        return self.state != "harness-failure"


@dataclass(frozen=True)
class Paths:
    out: Path
    package: str
    version: str

    @property
    def stem(self) -> str:
        return overlays.tree_name(self.package, self.version)

    @property
    def records(self) -> Path:
        """The finished release's records; a sweep of an earlier format left them as plain .jsonl."""
        plain = self.out / f"{self.stem}.jsonl"
        return plain if plain.is_file() else self.gzipped

    @property
    def gzipped(self) -> Path:
        return self.out / f"{self.stem}.jsonl.gz"

    @property
    def partial(self) -> Path:
        return self.out / f"{self.stem}.jsonl.partial"

    @property
    def meta(self) -> Path:
        return self.out / f"{self.stem}.json"

    @property
    def log(self) -> Path:
        return self.out / f"{self.stem}.log"

    @property
    def rejected(self) -> Path:
        return self.out / f"{self.stem}.no-verdict.jsonl"


def finished(paths: Paths) -> bool:
    """Whether an earlier sweep ended this release's session with a verdict (its file is there)."""
    return paths.records.is_file()


def env_versions(records: list[dict], names: list[str]) -> dict[str, list[str]]:
    """The releases the records' environments held (from the plugin's `env` of each record)."""
    out = {}
    for name in names:
        found = sorted({str(r.get("env", {}).get(name)) for r in records})
        out[name] = found
    return out


def mismatch(records: list[dict], wanted: dict[str, str]) -> str:
    """Why the records are not of the wanted releases ('' when they are): a session whose
    environment held another release is a harness problem, never that release's verdict."""
    for name, version in wanted.items():
        if not any(name in r.get("env", {}) for r in records):
            continue  # a package the records do not name (the plugin names the libraries and stacks)
        found = {str(r.get("env", {}).get(name)) for r in records}
        if found != {version}:
            return f"the records ran {name} {', '.join(sorted(found))}, not {version}"
    return ""


def pytest_command(python: str, selection: list[str], results: Path, jobs: int) -> list[str]:
    return [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", *selection,
            *(["-n", str(jobs), "--dist", "worksteal"] if jobs > 1 else []),
            "--tb=line", "-rN", "--results", str(results)]


def run_release(version: str, *, package: str, wanted: dict[str, str], selection: list[str], out: Path,
                sessions, jobs: int, say: Callable[[str], None]) -> ReleaseRun:
    """One release's session: records to a temporary name, renamed once it ended with a verdict."""
    paths = Paths(out, package, version)
    start = time.perf_counter()
    label = f"{package} {version}"
    try:
        session = sessions.session(version)
    except Exception as exc:  # an environment or a tree that cannot be had: no verdict of the release
        say(f"{label}: no environment: {exc}")
        return ReleaseRun(version, "harness-failure", env_s=round(time.perf_counter() - start, 1),
                          error=f"no environment: {exc}")
    env_s = round(time.perf_counter() - start, 1)
    start = time.perf_counter()
    if STOPPING.is_set():
        return ReleaseRun(version, "harness-failure", env_s=env_s, error="the sweep was stopped")
    paths.partial.unlink(missing_ok=True)
    say(f"{label}: start ({session.where}, {jobs} worker(s))")
    command = pytest_command(session.python, selection, paths.partial, jobs)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), **session.env}
    with paths.log.open("w") as log:
        log.write(" ".join(command) + "\n")
        log.flush()
        done = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        RUNNING.add(done)
        try:
            done.wait()
        finally:
            RUNNING.discard(done)
    seconds = round(time.perf_counter() - start, 1)
    records = read_records(paths.partial) if paths.partial.is_file() else []
    names = [package, *wanted.keys() - {package}, "torch", "python"]
    run = ReleaseRun(version, "ran", done.returncode, seconds, env_s, counts(records),
                     env_versions(records, names), session.where)
    problem = ""
    if done.returncode < 0:
        stopped = " (the sweep was stopped)" if STOPPING.is_set() else ""
        problem = f"pytest was ended by signal {-done.returncode}{stopped}: no verdict"
    elif done.returncode not in VERDICT_EXITS:
        problem = (f"pytest exited {done.returncode} (2 usage, 3 a harness error, 4 the matrix did not "
                   "load, 5 nothing collected): no verdict")
    elif not records:
        problem = "pytest wrote no record"
    else:
        problem = mismatch(records, wanted)
    if problem:
        tail = paths.log.read_text(errors="replace")[-TAIL_CHARS:]
        if paths.partial.is_file():
            paths.partial.replace(paths.rejected)
        say(f"{label}: HARNESS FAILURE after {seconds:.0f} s: {problem}; "
            f"pytest's tail ({paths.log}):\n{tail}")
        run.state, run.error = "harness-failure", f"{problem}; log: {paths.log}"
        return run
    paths.meta.write_text(json.dumps(asdict(run), indent=1) + "\n")
    staged = paths.gzipped.with_suffix(".tmp")
    staged.write_bytes(gzip.compress(paths.partial.read_bytes(), mtime=0))
    staged.replace(paths.gzipped)  # the release is finished only now
    paths.partial.unlink()
    say(f"{label}: done in {seconds:.0f} s (exit {done.returncode}; environment {env_s:.0f} s): "
        f"{_counts_text(run.counts)}")
    return run


def _counts_text(found: dict[str, int]) -> str:
    return ", ".join(f"{n} {status}" for status, n in found.items()) or "no cells"


def kept_run(paths: Paths) -> ReleaseRun:
    """A release an earlier sweep finished: its records, and its meta when it is there."""
    records = read_records(paths.records)
    meta = json.loads(paths.meta.read_text()) if paths.meta.is_file() else {}
    known = {k: v for k, v in meta.items() if k in ReleaseRun.__dataclass_fields__}
    return ReleaseRun(**{**known, "version": paths.version, "state": "kept", "counts": counts(records)})


# --- the sweep -----------------------------------------------------------------------------------

class stopping_sessions:  # noqa: N801 (a context manager, used as `with stopping_sessions():`)
    """While the sweep runs, SIGTERM ends the running pytest sessions before the sweep exits (143)."""

    def __enter__(self):
        self.main = threading.current_thread() is threading.main_thread()
        if self.main:
            self.previous = signal.signal(signal.SIGTERM, self._stop)
        return self

    def _stop(self, signum, frame):
        first = not STOPPING.is_set()
        STOPPING.set()
        for process in list(RUNNING):
            process.terminate()
        if first:  # `timeout` signals the sweep and then its process group: the second finds it stopping
            raise SystemExit(128 + signum)

    def __exit__(self, *exc):
        if self.main:
            signal.signal(signal.SIGTERM, self.previous)
        if exc[0] is not None:  # Ctrl-C or the SIGTERM above: no session outlives the sweep
            STOPPING.set()
            for process in list(RUNNING):
                process.terminate()
        return False


@dataclass
class SweepResult:
    package: str
    releases: list[str]
    runs: dict[str, ReleaseRun]
    grid_path: Path
    summary_path: Path
    wall_s: float
    lines: list[str]
    stopped: int = 0  # the exit status of a sweep stopped by a signal (143: SIGTERM), else 0

    @property
    def harness_failures(self) -> list[str]:
        return [v for v in self.releases if not self.runs[v].verdict]


def sweep(package: str, releases: list[str], *, held: dict[str, str], selection: list[str], out: Path,
          sessions, jobs: int = 1, parallel: int = 1, rerun: bool = False, slice_name: str = "",
          mode: str = "local", say: Callable[[str], None] | None = None,
          skipped: list[str] | None = None) -> SweepResult:
    """Run the selection under each release (`parallel` at once), then write the grid and summary.
    `skipped`: the final releases in the range that the sweep leaves out (`unswept`), for the summary."""
    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    STOPPING.clear()
    lock = threading.Lock()

    def tell(text: str) -> None:
        with lock:
            (say or print)(f"[sweep] {text}")
            sys.stdout.flush()

    wanted_of = lambda version: {**held, package: version}  # noqa: E731
    runs: dict[str, ReleaseRun] = {}
    todo = []
    for version in releases:
        paths = Paths(out, package, version)
        if finished(paths) and not rerun:
            runs[version] = kept_run(paths)
            tell(f"{package} {version}: finished by an earlier sweep ({paths.records}): skipped "
                 "(--rerun runs it again)")
        else:
            todo.append(version)

    def one(version: str) -> ReleaseRun:
        if STOPPING.is_set():
            return ReleaseRun(version, "harness-failure", error="the sweep was stopped")
        return run_release(version, package=package, wanted=wanted_of(version), selection=selection,
                           out=out, sessions=sessions, jobs=jobs, say=tell)

    stopped = 0
    try:
        with stopping_sessions(), ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
            for version, run in zip(todo, pool.map(one, todo), strict=True):
                runs[version] = run
    except (SystemExit, KeyboardInterrupt) as exc:  # a time limit: the grid of what finished, then stop
        stopped = exc.code if isinstance(exc, SystemExit) and isinstance(exc.code, int) else 130
        for version in releases:
            if version not in runs or runs[version].error == "the sweep was stopped":
                paths = Paths(out, package, version)
                runs[version] = kept_run(paths) if finished(paths) else ReleaseRun(
                    version, "harness-failure", error="the sweep was stopped before this release's verdict")
        left = [v for v in releases if not runs[v].verdict]
        tell(f"stopped: {len(left)} release(s) without a verdict, for the next sweep: {', '.join(left)}")
    wall = round(time.perf_counter() - start, 1)
    result = finish(package, releases, runs, out=out, held=held, selection=selection, slice_name=slice_name,
                    mode=mode, wall=wall, skipped=skipped)
    result.stopped = stopped
    return result


def finish(package: str, releases: list[str], runs: dict[str, ReleaseRun], *, out: Path,
           held: dict[str, str], selection: list[str], slice_name: str, mode: str,
           wall: float, skipped: list[str] | None = None) -> SweepResult:
    """The grid (OUT/grid.md) and the summary (OUT/sweep.json) of every release's outcome. The
    summary's `unswept` lists the range's final releases that did not run (null: not known, as for
    --releases without the index), so that no page claims every release where some were left out."""
    records = {v: read_records(Paths(out, package, v).records) for v in releases if runs[v].verdict}
    failed = {v for v in releases if not runs[v].verdict}
    grid = build_grid(records, releases, failed)
    changed = grid.changed_releases()
    for version, run in runs.items():
        run.changed = version in changed
    title = f"{package} sweep: {releases[0]} .. {releases[-1]} ({len(releases)} releases)"
    grid_path = out / "grid.md"
    grid_path.write_text(markdown(grid, title))
    summary = {
        "package": package, "held": held, "slice": slice_name, "selection": selection, "mode": mode,
        "releases": releases, "unswept": skipped, "wall_s": wall,
        "session_s_total": round(sum(r.seconds or 0 for r in runs.values()), 1),
        "env_s_total": round(sum(r.env_s or 0 for r in runs.values()), 1),
        "runs": [asdict(runs[v]) for v in releases],
        "changed": {v: c for v, c in changed.items()},
        "harness_failures": sorted(failed, key=Version),
        "cells": len(grid.cells),
    }
    summary_path = out / "sweep.json"
    summary_path.write_text(json.dumps(summary, indent=1) + "\n")
    lines = [f"--- {title}: {len(grid.cells)} cells; {wall:.0f} s wall", *compact(grid), "--- per release"]
    for version in releases:
        run = runs[version]
        state = ("NO VERDICT: " + run.error) if not run.verdict else _counts_text(run.counts)
        seconds = f"{run.seconds:.0f} s" if run.seconds is not None else "no session"
        seconds += f", environment {run.env_s:.0f} s" if run.env_s else ""
        lines.append(f"  {package} {version}: {state} ({seconds}{', kept' if run.state == 'kept' else ''}"
                     f"{', changed vs previous' if run.changed else ''})")
    lines.append(f"grid: {grid_path}; summary: {summary_path}")
    return SweepResult(package, releases, runs, grid_path, summary_path, wall, lines)
