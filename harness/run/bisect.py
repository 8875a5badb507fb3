"""`compat-harness bisect`: the first release of a package that breaks a selection of cells.

Given a known-good and a known-bad release of one package (transformers, peft, ...), the releases
between them come from the package index (or a wheel directory), and a binary search runs the
selection under each probed release, each in its own environment (harness/run/envs.py) with the
other packages held at fixed releases. A probe is **bad** when a selected cell fails (or
xfails), **good** when cells passed and none failed, and **untestable** when every cell skipped
(e.g. a release that does not have the model yet): the search steps around it as `git bisect skip`
does.

Every probe's records are kept under the harness cache (`bisect/<selection>/<pins>.jsonl`), so
a second bisect over the same range, or a longer one that meets the same releases, runs nothing
twice. `--pair` asks whether the failure follows another package: the last good and the first
bad release against each named release of the other package.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from packaging.version import InvalidVersion, Version

from harness.cache import cache_root
from harness.run.envs import Pins, ensure_env, run_cells, torch_spec

GOOD, BAD, UNTESTABLE = "good", "bad", "untestable"
FAILED_STATUSES = ("fail", "xfail")


class BisectError(RuntimeError):
    """The bisect cannot answer (an end that does not behave as given, no releases between)."""


def final_release(text: str) -> Version | None:
    try:
        version = Version(text)
    except InvalidVersion:
        return None
    return None if version.is_prerelease or version.is_devrelease else version


def index_versions(package: str, wheels: Path | None = None) -> list[str]:
    """The package's final releases, oldest first: from a wheel directory's file names, or from
    the package index (`pip index versions`)."""
    if wheels is not None:  # a wheel's name is DISTRIBUTION-VERSION-...: the name with _ for - . _
        stem = re.sub(r"[-_.]+", "_", package).lower()
        found = {p.name.split("-")[1] for p in Path(wheels).glob("*.whl")
                 if re.sub(r"[-_.]+", "_", p.name.split("-")[0]).lower() == stem}
    else:
        done = subprocess.run([sys.executable, "-m", "pip", "index", "versions", package],
                              capture_output=True, text=True)
        line = next((x for x in done.stdout.splitlines() if x.startswith("Available versions:")), None)
        if done.returncode != 0 or line is None:
            output = (done.stderr or done.stdout).strip()
            raise BisectError(f"cannot list the releases of {package}: {output}")
        found = {v.strip() for v in line.split(":", 1)[1].split(",")}
    return [str(v) for v in sorted(v for v in map(final_release, found) if v is not None)]


def releases_between(package: str, good: str, bad: str, wheels: Path | None = None) -> list[str]:
    """good, every final release between, bad (in release order)."""
    low, high = Version(good), Version(bad)
    if not low < high:
        raise BisectError(f"the good release {good} must come before the bad one {bad}")
    inside = [v for v in index_versions(package, wheels) if low < Version(v) < high]
    return [good, *inside, bad]


@dataclass
class Probe:
    pins: dict[str, str]
    verdict: str
    records: list[dict]
    reused: bool
    seconds: float
    path: Path

    def narrowed(self, cell_id: str) -> Probe:
        """This probe's records of one cell, as a probe of that cell alone (kept: nothing reruns)."""
        records = [r for r in self.records if r["cell_id"] == cell_id]
        return Probe(self.pins, verdict_of(records), records, True, 0.0, self.path)

    @property
    def example(self) -> dict | None:
        """The first failing record (a bad probe), else the first record."""
        failed = [r for r in self.records if r["status"] in FAILED_STATUSES]
        return (failed or self.records or [None])[0]


def verdict_of(records: list[dict]) -> str:
    if any(r["status"] in FAILED_STATUSES for r in records):
        return BAD
    if any(r["status"] == "pass" for r in records):
        return GOOD
    return UNTESTABLE


def with_device(selection: list[str]) -> list[str]:
    """pytest's options with a device marker: the CPU unless the selection names one (-m)."""
    return selection if any(arg.startswith("-m") for arg in selection) else ["-m", "cpu", *selection]


def selection_key(selection: list[str]) -> str:
    return hashlib.sha256(json.dumps(selection).encode()).hexdigest()[:12]


def store_dir(selection: list[str]) -> Path:
    return cache_root() / "bisect" / selection_key(selection)


def read_records(path: Path) -> list[dict]:
    """A probe's or a sweep's records (written by the harness in its environment; a sweep keeps
    them gzipped, PACKAGE-VERSION.jsonl.gz)."""
    text = gzip.decompress(path.read_bytes()).decode() if path.name.endswith(".gz") else path.read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def probe(pins: dict[str, str], selection: list[str], *, jobs: int = 1, wheels: Path | None = None,
          log: Callable[[str], None] = print) -> Probe:
    """The selection's records under `pins`: kept from an earlier probe, or run now in its environment."""
    start = time.perf_counter()
    store = store_dir(selection)
    store.mkdir(parents=True, exist_ok=True)
    wanted = Pins.of(pins)
    path = store / f"{wanted.key(torch_spec())}.jsonl"
    if path.is_file():
        records = read_records(path)
        return Probe(pins, verdict_of(records), records, True, time.perf_counter() - start, path)
    env = ensure_env(wanted, wheels=wheels, log=log)
    partial = path.with_suffix(".partial")
    partial.unlink(missing_ok=True)
    done = run_cells(env, selection, partial, jobs=jobs)
    if done.returncode not in (0, 1) or not partial.is_file():
        output = (done.stdout + done.stderr).strip()[-1500:]
        raise BisectError(f"pytest under {wanted.label} exited {done.returncode} without a verdict (2: "
                          f"usage, 3: a harness error, 5: nothing selected); selection "
                          f"{' '.join(selection)}: {output}")
    partial.rename(path)  # only a complete run is kept
    records = read_records(path)
    return Probe(pins, verdict_of(records), records, False, time.perf_counter() - start, path)


@dataclass
class BisectResult:
    package: str
    releases: list[str]
    first_bad: str | None
    last_good: str | None
    probes: dict[str, Probe] = field(default_factory=dict)
    seconds: float = 0.0
    pairs: dict[tuple[str, str], Probe] = field(default_factory=dict)

    @property
    def runs(self) -> int:
        return sum(not p.reused for p in [*self.probes.values(), *self.pairs.values()])

    @property
    def reused(self) -> int:
        return sum(p.reused for p in [*self.probes.values(), *self.pairs.values()])

    def finding(self, held: dict[str, str], selection: list[str], follows_text: str = "") -> dict:
        """The answer as the docs read it (harness/report/bisects.py; `bisect --save`)."""
        bad = self.probes[self.first_bad]
        return {"package": self.package, "first_bad": self.first_bad, "last_good": self.last_good,
                "cells": sorted({r["cell_id"] for r in bad.records if r["status"] in FAILED_STATUSES}),
                "message": (bad.example or {}).get("message", "")[:500], "held": held, "selection": selection,
                "runs": self.runs, "kept": self.reused, "seconds": round(self.seconds, 1),
                "probed": {v: p.verdict for v, p in self.probes.items()}, "follows": follows_text}


def bisect(package: str, good: str, bad: str, selection: list[str], *, others: dict[str, str] | None = None,
           jobs: int = 1, wheels: Path | None = None, known: dict[str, Probe] | None = None,
           log: Callable[[str], None] = print) -> BisectResult:
    """Binary search for the first bad release of `package` between `good` and `bad`; `known` holds
    probes already made of some releases (the release watch's, of the two ends)."""
    start = time.perf_counter()
    others = {k: v for k, v in (others or {}).items() if k != package}
    releases = releases_between(package, good, bad, wheels)
    result = BisectResult(package, releases, None, None)
    log(f"{len(releases) - 2} release(s) of {package} between {good} and {bad}: "
        f"{', '.join(releases[1:-1]) or 'none'}")

    def run(index: int) -> Probe:
        version = releases[index]
        found = (known or {}).get(version) or probe({package: version, **others}, selection, jobs=jobs,
                                                    wheels=wheels, log=log)
        result.probes[version] = found
        example = found.example or {}
        kept = " (kept records)" if found.reused else ""
        why = f": {example.get('message', '')[:120]}" if found.verdict == BAD else ""
        log(f"  {package} {version}: {found.verdict}{kept} in {found.seconds:.0f} s{why}")
        return found

    for index, expected in ((0, GOOD), (len(releases) - 1, BAD)):
        end = run(index)
        if end.verdict != expected:
            raise BisectError(f"{package} {releases[index]} is {end.verdict}, not {expected} as given: "
                              f"nothing to bisect (records: {end.path})")
    low, high = 0, len(releases) - 1
    skipped: set[int] = set()
    while high - low > 1:
        middle = next((i for i in _middle_out(low, high) if i not in skipped), None)
        if middle is None:  # everything between is untestable: the answer is a range
            break
        verdict = run(middle).verdict
        if verdict == UNTESTABLE:
            skipped.add(middle)
        elif verdict == GOOD:
            low = middle
        else:
            high = middle
    result.last_good, result.first_bad = releases[low], releases[high]
    result.seconds = time.perf_counter() - start
    return result


def _middle_out(low: int, high: int) -> list[int]:
    """The indexes strictly between, the middle first, then outward (git bisect's skip order)."""
    middle = (low + high) // 2
    inside = range(low + 1, high)
    return sorted(inside, key=lambda i: (abs(i - middle), i))


def pair(result: BisectResult, other: str, versions: list[str], selection: list[str], *,
         others: dict[str, str], jobs: int = 1, wheels: Path | None = None,
         log: Callable[[str], None] = print) -> str:
    """The last good and first bad release against each release of `other`: what the failure follows."""
    grid: dict[tuple[str, str], str] = {}
    for version in (result.last_good, result.first_bad):
        for other_version in versions:
            pins = {**others, result.package: version, other: other_version}
            found = probe(pins, selection, jobs=jobs, wheels=wheels, log=log)
            result.pairs[(version, other_version)] = found
            grid[(version, other_version)] = found.verdict
            log(f"  {result.package} {version} x {other} {other_version}: {found.verdict}")
    return follows(result.package, other, result.last_good, result.first_bad, versions, grid)


def follows(package: str, other: str, good: str, bad: str, versions: list[str],
            grid: dict[tuple[str, str], str]) -> str:
    """One sentence: does the outcome change with `package`, with `other`, or with both?"""
    by_package = all(grid[(good, v)] != grid[(bad, v)] for v in versions)
    failing_other = [v for v in versions if grid[(good, v)] == BAD and grid[(bad, v)] == BAD]
    if by_package and not failing_other:
        return (f"the failure follows {package}: {package} {bad} fails and {good} passes with every {other} "
                f"tried ({', '.join(versions)})")
    if failing_other and all(grid[(good, v)] == grid[(bad, v)] for v in versions):
        return (f"the failure follows {other}: it fails with {other} {', '.join(failing_other)} whatever "
                f"{package}")
    cells = ", ".join(f"{package} {p} x {other} {o}: {grid[(p, o)]}" for p in (good, bad) for o in versions)
    return f"the failure depends on both: {cells}"


def report(result: BisectResult) -> str:
    """The bisect's answer, as the command prints it (Markdown)."""
    bad = result.probes.get(result.first_bad)
    good = result.probes.get(result.last_good)
    example = (bad.example if bad else None) or {}
    lines = [f"**first bad release: {result.package} {result.first_bad}** (last good: {result.last_good})",
             "",
             f"- first bad: `{example.get('cell_id', '?')}` {example.get('status', '?')} "
             f"[{example.get('category', '')}]: `{(example.get('message') or '')[:300]}`",
             f"- records: {bad.path if bad else '—'} (bad), {good.path if good else '—'} (good)",
             f"- runs: {result.runs} new, {result.reused} kept from earlier probes; wall time "
             f"{result.seconds:.0f} s",
             "", "| release | verdict | cells | how |", "| --- | --- | --- | --- |"]
    for version in result.releases:
        found = result.probes.get(version)
        if found is None:
            lines.append(f"| {version} | not probed | | |")
            continue
        counts = {s: sum(r["status"] == s for r in found.records) for s in ("pass", "fail", "xfail",
                                                                            "skip")}
        text = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
        how = "kept" if found.reused else f"ran {found.seconds:.0f} s"
        lines.append(f"| {version} | {found.verdict} | {text} | {how} |")
    return "\n".join(lines)
