"""Result records: one JSON object per cell, appended to a JSONL file.

A record must say everything a reader of the docs needs to trust a claim: what ran, on which
device, with which library versions, from which commit, and what came out. Appends take an
exclusive lock and write the whole line at once, so pytest-xdist workers never interleave or
lose lines.

Schema (version 4), every key always present:
    schema, cell_id, architecture, method, layout, tier, check, shape, variant, stack,
    implementation, status, category, message, traceback, metrics, code, env, git_sha, run_id,
    timestamp
status is one of pass, fail, skip, xfail, n/a. category is null on pass. env holds python,
torch, transformers, peft, trl, accelerate, datasets, device_type, device_name, device_count,
world_size, backend, platform. The cell's fields (architecture ... stack) are all written, "" for
an unset shape or variant, so that a reader never has to take cell_id apart: the id is for people
and for matching, the fields are for grouping. `implementation` is the cell's axis ("" the row's
own, "custom" the custom registry's class of a remote-code row); `code` says whose model code ran:
{"kind": "transformers", "transformers": version}, {"kind": "remote-code", "repo", "revision",
"files": {name: sha256}} or {"kind": "custom", "module", "model_class", "config_class", "files"}.

Version 1 (the committed records of 2026-11 and 2026-12) lacks shape and variant, and versions 1
and 2 lack stack (they all ran on the reference stack, `native`); versions 1 to 3 lack
implementation and code (they ran transformers' classes, or skipped a remote-code row);
`harness.report.results` derives them when it reads such a record, in that one place.
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import platform
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

from harness.lockfile import installed_lock
from harness.spec.matrix import installed_version

SCHEMA_VERSION = 4
STATUSES = ("pass", "fail", "skip", "xfail", "n/a")
REPO_ROOT = Path(__file__).resolve().parents[2]
# A run given no --results writes its own file here (gitignored), named by its run id: plain
# `pytest` runs never append to a file that a job renders a report from (`make matrix` writes
# and renders reports/local/matrix.jsonl, removed before each run), nor to each other's.
LOCAL_RECORDS = REPO_ROOT / "reports" / "local" / "records"
# Recorded in every env beside torch, transformers and peft: what the TRL stack runs on.
STACK_PACKAGES = ("trl", "accelerate", "datasets", "nemo_automodel", "torchao")


def new_run_id() -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{uuid.uuid4().hex[:8]}"


def default_results(run_id: str) -> Path:
    """Where a run given no --results writes its records: a file of its own, named by its run id."""
    return LOCAL_RECORDS / f"{run_id}.jsonl"


@functools.cache
def git_sha() -> str:
    """The commit of the harness code that ran; "unknown" unless REPO_ROOT is itself a checkout.

    A copy of the tree exported into another repository (e.g. `git archive` into a folder of a
    checkout) would otherwise report the enclosing repository's HEAD: a commit whose code did
    not run. COMPAT_HARNESS_GIT_SHA names the commit of such a copy explicitly.
    """
    if os.environ.get("COMPAT_HARNESS_GIT_SHA"):
        return os.environ["COMPAT_HARNESS_GIT_SHA"]
    try:
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=REPO_ROOT, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        if not top or Path(top).resolve() != Path(REPO_ROOT).resolve():
            return "unknown"
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _version(module: str) -> str | None:
    """The installed release (its distribution's metadata: a library that is installed but fails to
    import, peft 0.17 under transformers 5.25, is still the release that ran); None: not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(module.replace("_", "-"))
    except PackageNotFoundError:
        pass
    try:
        return __import__(module).__version__
    except Exception:  # noqa: BLE001 - a missing library is recorded as None, not raised
        return None


def device_name(device_type: str) -> str:
    if device_type == "cuda":
        import torch

        return torch.cuda.get_device_name(0)
    return f"cpu ({platform.machine()}, {os.cpu_count()} cores)"


def environment(device_type: str, world_size: int = 1, backend: str | None = None) -> dict:
    """Versions and hardware this process runs on; stored in every record."""
    device_count = 1
    if device_type == "cuda":
        import torch

        device_count = torch.cuda.device_count()
    return {
        "python": platform.python_version(),
        "torch": _version("torch"),
        "transformers": _version("transformers"),
        "peft": _version("peft"),
        # the packages of stacks other than the reference (None where not installed), read from
        # their metadata: importing one (torchao, nemo_automodel) would cost every record seconds
        **{package: installed_version(package) for package in STACK_PACKAGES},
        "device_type": device_type,
        "device_name": device_name(device_type),
        "device_count": device_count,
        "world_size": world_size,
        "backend": backend,
        "platform": f"{sys.platform}-{platform.machine()}",
        # the lock file this environment was installed from (set, file, sha256; None: not from one),
        # so two runs of the same releases whose other packages differ can be told apart
        "lock": installed_lock(),
    }


def make_record(
    cell,
    status: str,
    *,
    category: str | None = None,
    message: str = "",
    traceback: str = "",
    metrics: dict | None = None,
    code: dict | None = None,
    env: dict,
    run_id: str,
) -> dict:
    if status not in STATUSES:
        raise ValueError(f"status {status!r} is not one of {STATUSES}")
    return {
        "schema": SCHEMA_VERSION,
        "cell_id": cell.id,
        "architecture": cell.architecture,
        "method": cell.method,
        "layout": cell.layout,
        "tier": cell.tier,
        "check": cell.check,
        "shape": cell.shape,
        "variant": cell.variant,
        "stack": cell.stack,
        "implementation": cell.implementation,
        "status": status,
        "category": category,
        "message": message,
        "traceback": traceback,
        "metrics": metrics or {},
        "code": code or {},
        "env": env,
        "git_sha": git_sha(),
        "run_id": run_id,
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def append_record(path: Path | str, record: dict) -> None:
    """Append one line under an exclusive lock: concurrent writers never interleave."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(record, sort_keys=True, default=str) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            written = 0
            while written < len(line):
                written += os.write(fd, line[written:])
            os.fsync(fd)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
