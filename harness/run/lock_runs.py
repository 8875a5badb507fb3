"""A lock's records over a list of selections, run once and kept by the lock's digest.

A release bump measures every environment it meets (the default set's lock, each candidate lock)
over the same selections; the records of a (lock, torch, selections) run are kept under the harness
cache (`bump/runs/`), so a second bump, or the next package's baseline (the previous package's
candidate), reads them instead of running them again.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from harness.cache import cache_root
from harness.lockfile import digest
from harness.run.bisect import read_records
from harness.run.envs import ensure_locked_env, torch_spec
from harness.run.selections import run_session


class RunError(RuntimeError):
    """A run ended without a verdict (pytest's usage or internal error): its output's tail."""


@dataclass
class LockRun:
    """The records of one lock's environment over the selections."""

    lock: Path
    digest: str
    torch: str
    records: list[dict]
    path: Path  # the kept records
    reused: bool
    seconds: float


def runs_dir() -> Path:
    return cache_root() / "bump" / "runs"


def run_key(lock: Path, torch: str, selections: list[list[str]]) -> str:
    chosen = hashlib.sha256(json.dumps(selections).encode()).hexdigest()[:12]
    return f"{digest(lock)}_{hashlib.sha256(torch.encode()).hexdigest()[:8]}_{chosen}"


def run_lock(lock: Path, selections: list[list[str]], *, set_name: str, torch: str | None = None,
             jobs: int = 1, wheels: Path | None = None, log: Callable[[str], None] = print) -> LockRun:
    """The selections' records in the environment of `lock`: kept from an earlier run, or run now."""
    start = time.perf_counter()
    torch = torch_spec() if torch is None else torch
    path = runs_dir() / f"{run_key(lock, torch, selections)}.jsonl"
    if path.is_file():
        return LockRun(lock, digest(lock), torch, read_records(path), path, True, time.perf_counter() - start)
    env = ensure_locked_env(lock, set_name=set_name, torch=torch, wheels=wheels, log=log)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.unlink(missing_ok=True)
    log(f"running {len(selections)} selection(s) in one session under {lock.name} ({digest(lock)})")
    done = run_session(env.python, selections, partial, jobs=jobs)
    if done.returncode not in (0, 1) or not partial.is_file():
        raise RunError(f"pytest under {lock} exited {done.returncode} without a verdict (2: usage, 3: a "
                       f"harness error, 5: nothing selected): {(done.stdout + done.stderr).strip()[-1500:]}")
    partial.rename(path)  # only a complete run is kept
    return LockRun(lock, digest(lock), torch, read_records(path), path, False, time.perf_counter() - start)
