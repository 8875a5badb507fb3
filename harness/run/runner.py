"""Run one cell and turn whatever happens into an Outcome: status, category, message, metrics.

This is the only place that maps failures to statuses:
- a check that passes is `pass`;
- a cell that cannot run in this environment (remote code, a newer transformers, a checkpoint
  not in the cache) is `skip`, with its category and the real message;
- a failure that a row declares in `known_limits` is `xfail`;
- anything else is `fail`, with its category and the real message and traceback.

A deliberate verdict (a CellFailure, raised by a check or a stack on any rank) is `deliberate`:
pytest shows its one-line message, since the traceback through harness code only says where the
check decided; the record keeps the traceback all the same. An unexpected exception is shown
with its full traceback.

A cell whose layout has more than one rank runs on the persistent rank pool (harness/run/pool.py):
every rank runs the same check module through `rank_task`, with a CellRun for that rank, and
rank 0's metrics come back. A rank that raises, dies or hangs fails the cell with its category
(`crash`, `timeout`, or the check's own) and that rank's traceback; the pool carries on.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import resource
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness.cellrun import CellRun
from harness.ckpt.implementations import provenance
from harness.ckpt.models import checkpoint_for
from harness.failures import HARNESS_ERROR, SKIP_CATEGORIES, CellFailure, classify, format_traceback, trimmed
from harness.run.pool import get_pool
from harness.run.ranks import PoolTaskError
from harness.spec.cells import Cell, cell_architecture
from harness.spec.load import load_matrix, matrix_files
from harness.spec.matrix import REFERENCE_STACK, TRANSFORMERS, Matrix
from harness.stacks.native.placement import choose_api
from harness.stacks.registry import missing_packages

DEFAULT_CELL_TIMEOUT_S = 300.0
# The record's `code.kind` of a class the stack brought itself (the report's views name it so too).
STACK_OWN = "stack-own"
RANK_TASK = "harness.run.runner:rank_task"


def cell_timeout_s(tier=None) -> float:
    """How long a multi-rank cell may run before its pool is torn down.

    COMPAT_HARNESS_CELL_TIMEOUT overrides; else the tier's own `cell_timeout_s` (matrix data);
    else DEFAULT_CELL_TIMEOUT_S.
    """
    if os.environ.get("COMPAT_HARNESS_CELL_TIMEOUT"):
        return float(os.environ["COMPAT_HARNESS_CELL_TIMEOUT"])
    if tier is not None and tier.cell_timeout_s:
        return float(tier.cell_timeout_s)
    return DEFAULT_CELL_TIMEOUT_S


@dataclass
class Outcome:
    status: str
    category: str | None = None
    message: str = ""
    traceback: str = ""
    metrics: dict = field(default_factory=dict)
    known_limit_stale: str | None = None
    stale_limit: int | None = None  # the index in its row's known_limits of the limit that passed
    # Whose model code ran (implementations.provenance): the record's `code`.
    code: dict = field(default_factory=dict)
    # A verdict a check or stack decided (CellFailure): its message is the whole story.
    deliberate: bool = False


def _peak_memory(device: str) -> dict:
    import torch

    if device == "cuda":
        return {"peak_memory_bytes": int(torch.cuda.max_memory_allocated())}
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is KiB on Linux
    return {"peak_memory_bytes": None,
            "process_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale}


def require_stack(matrix: Matrix, cell: Cell, device: str) -> None:
    """A skip (`stack-absent`) when the cell's stack cannot run here: it runs on other devices
    (AutoModel needs CUDA), or needs packages this environment lacks."""
    spec = matrix.stacks[cell.stack]
    if device not in spec.devices:
        raise CellFailure("stack-absent", f"stack {spec.name} runs on {', '.join(spec.devices)} only, not "
                                          f"{device}: run its cells with -m gpu on a GPU host")
    missing = missing_packages(spec)
    if missing:
        raise CellFailure("stack-absent", f"stack {spec.name} needs {', '.join(missing)}, not installed "
                                          f"here: {spec.install}")


def run_check(matrix: Matrix, cell: Cell, device: str) -> dict:
    """Run the cell's check (harness/checks/<name>.py) on this device; return its metrics."""
    import torch

    require_stack(matrix, cell, device)
    if matrix.layouts[cell.layout].world_size > 1:
        return run_on_pool(matrix, cell, device)
    check = importlib.import_module(f"harness.checks.{cell.check}")
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory(prefix=f"{cell.id}-") as scratch:
        metrics = check.run(CellRun(matrix, cell, device, scratch_root=Path(scratch)))
    # A check that measured its own peak (real-shape: the training steps alone) keeps it.
    return {**_peak_memory(device), **metrics}


# --- multi-rank cells --------------------------------------------------------------------------

def matrix_dir(matrix: Matrix) -> str:
    dirs = {str(Path(f).resolve().parent) for f in matrix.files}
    if len(dirs) != 1:
        raise CellFailure("error", f"matrix files span several directories: {sorted(dirs)}")
    return dirs.pop()


def run_on_pool(matrix: Matrix, cell: Cell, device: str) -> dict:
    """Run the cell on every rank of this process's pool for its world size; rank 0's metrics."""
    layout = matrix.layouts[cell.layout]
    # Resolved here, once: a missing checkpoint is a skip before any rank starts, and the ranks
    # do not race to write the same tiny checkpoint.
    checkpoint = checkpoint_for(cell_architecture(matrix, cell), matrix.tiers[cell.tier], matrix)
    with tempfile.TemporaryDirectory(prefix=f"{cell.id}-") as scratch:
        first = getattr(importlib.import_module(f"harness.checks.{cell.check}"), "on_one_device_first", None)
        if first is not None:  # a check's one-device part that must run outside the ranks
            (Path(scratch) / "one-device").mkdir()
            first(CellRun(matrix, cell, device, scratch_root=Path(scratch) / "one-device",
                          shared_root=Path(scratch), checkpoint_path=checkpoint))
        payload = {"matrix_dir": matrix_dir(matrix), "cell": dataclasses.asdict(cell),
                   "checkpoint": str(checkpoint), "scratch": scratch}
        per_rank = get_pool(layout.world_size, device).run(RANK_TASK, payload,
                                                            cell_timeout_s(matrix.tiers[cell.tier]))
    metrics = per_rank[0]
    losses = [r.get("losses") for r in per_rank]
    if losses[0] is not None and any(x != losses[0] for x in losses):
        raise CellFailure("numerics", "ranks disagree on the global loss curve: "
                                      + "; ".join(f"rank {i}: {x}" for i, x in enumerate(losses)))
    return {**metrics, "world_size": layout.world_size, "mesh": dict(layout.mesh)}


_MATRICES: dict[tuple, Matrix] = {}


def _rank_matrix(directory: str) -> Matrix:
    """load_matrix once per process and matrix contents (the files' sizes and mtimes)."""
    key = (directory, *((str(f), f.stat().st_mtime_ns, f.stat().st_size) for f in matrix_files(directory)))
    if key not in _MATRICES:
        _MATRICES[key] = load_matrix(directory)
    return _MATRICES[key]


def rank_task(payload: dict, ctx) -> dict:
    """On every pool rank: run the cell's check module with this rank's CellRun; its metrics."""
    import torch

    matrix = _rank_matrix(payload["matrix_dir"])
    cell = Cell(**payload["cell"])
    check = importlib.import_module(f"harness.checks.{cell.check}")
    if ctx.device_type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    scratch = Path(payload["scratch"]) / f"rank{ctx.rank}"
    scratch.mkdir(parents=True, exist_ok=True)
    cr = CellRun(matrix, cell, ctx.device_type, scratch_root=scratch, shared_root=Path(payload["scratch"]),
                 rank=ctx.rank, world_size=ctx.world_size, ctx=ctx,
                 checkpoint_path=Path(payload["checkpoint"]))
    metrics = check.run(cr)  # a failure is classified on this rank by the pool (failures.classify)
    return {**metrics, **_peak_memory(ctx.device_type)}


def code_of(matrix: Matrix, cell: Cell) -> dict:
    """The record's `code`: which implementation the cell's model came from, with its hashes."""
    arch = cell_architecture(matrix, cell)
    try:
        return provenance(arch)
    except Exception as exc:  # noqa: BLE001 - the verdict stands; the record says what is unknown
        return {"kind": arch.implementation_kind, "unknown": f"{type(exc).__name__}: {exc}"}


def asked_call(matrix: Matrix, cell: Cell) -> dict:
    """What the cell asks for, named by its record whatever the outcome: the documented call that
    applies its layout (reference stack) and, on an MoE row, the experts kernel ("default":
    transformers' own choice; a record that ran says which that was)."""
    out: dict = {}
    layout = matrix.layouts[cell.layout]
    if cell.stack == REFERENCE_STACK and layout.world_size > 1:
        try:
            api = choose_api(matrix.apis, layout, cell.variant)
        except CellFailure:  # not offered here: the skip names the call it would have run
            api = matrix.apis.get(cell.variant)
        if api is not None:
            out.update(api=api.name, api_call=api.call)
    if cell_architecture(matrix, cell).moe:
        kernel = matrix.experts.get(cell.variant)
        out["experts_implementation"] = kernel.value if kernel else "default"
    return out


def call_verdict(matrix: Matrix, asked: dict, category: str, message: str) -> tuple[str, str]:
    """A failure of a documented call, said precisely: on a release at or after a removal transformers
    announced it is `api-removed`; where the release lacks a field the call passes, the message says
    so (the library's own message stays first)."""
    api = matrix.apis.get(asked.get("api", ""))
    if api is None or category in SKIP_CATEGORIES or category in (HARNESS_ERROR, "matrix-error"):
        return category, message
    import transformers
    from packaging.version import Version

    from harness.spec.release_facts import release_facts

    release = transformers.__version__
    missing = [f for f in api.needs if f not in release_facts(()).distributed_config_fields]
    if missing:
        message += f" [DistributedConfig of transformers {release} has no {', '.join(missing)}]"
    if api.removed and Version(release) >= Version(api.removed["release"]):
        return "api-removed", (f"removed in {api.removed['release']} (announced: {api.removed['url']}): "
                               f"{message}")
    return category, message


def run_cell(matrix: Matrix, cell: Cell, device: str) -> Outcome:
    outcome = _run_cell(matrix, cell, device)
    outcome.code = with_class_that_ran(code_of(matrix, cell), outcome.metrics.get("model_code"))
    return outcome


def with_class_that_ran(code: dict, ran: dict | None) -> dict:
    """The record's `code` with the class that ran (Placed.record's `model_code`: class, package,
    release). A transformers row whose stack ran a class of another package (NeMo AutoModel's
    own) is that package's code, not transformers': its kind says `stack-own`."""
    if not ran:
        return code
    kind = code.get("kind")
    if kind == TRANSFORMERS and ran.get("package") != "transformers":
        kind = STACK_OWN
    return {**code, "kind": kind, "class": ran.get("class"), "package": ran.get("package"),
            "release": ran.get("release")}


def _run_cell(matrix: Matrix, cell: Cell, device: str) -> Outcome:
    arch = matrix.architectures[cell.architecture]
    limit = next(
        (lim for lim in arch.known_limits
         if lim.covers(cell.method, cell.layout, cell.tier, cell.check, cell.variant, cell.stack,
                       cell.implementation)),
        None,
    )
    start = time.perf_counter()
    asked = asked_call(matrix, cell)
    try:
        metrics = run_check(matrix, cell, device)
    except Exception as exc:  # noqa: BLE001 - every failure becomes a categorised record
        category, message = classify(exc)
        category, message = call_verdict(matrix, asked, category, message)
        duration = {**asked, **getattr(exc, "metrics", {}), "duration_s": time.perf_counter() - start}
        if category in SKIP_CATEGORIES:
            return Outcome("skip", category, message, metrics=duration)
        status = "xfail" if limit and limit.category == category != HARNESS_ERROR else "fail"
        if status == "xfail":
            message = f"known limit ({limit.reason}): {message}"
        if isinstance(exc, PoolTaskError) and exc.rank_traceback:
            text = trimmed(f"rank {exc.rank}:\n{exc.rank_traceback}", 8000)
        else:
            text = format_traceback(exc)
        deliberate = exc.deliberate if isinstance(exc, PoolTaskError) else isinstance(exc, CellFailure)
        return Outcome(status, category, message, text, metrics=duration, deliberate=deliberate)
    metrics = {**asked, **metrics, "duration_s": time.perf_counter() - start}
    stale = index = None
    if limit:
        index = arch.known_limits.index(limit)
        # Other releases may still fail: the advice is to narrow the entry's specifiers so they leave
        # these releases out (the plugin adds the narrowest ones the committed records support).
        stale = (f"{cell.id} passed, but {arch.source_file} [architectures.{arch.name}] "
                 f"known_limits[{index}] covers these releases ({limit.category}: {limit.reason}): narrow "
                 "its specifiers to leave them out (`compat-harness limits --check` prints the narrowest "
                 "the records support), or remove it if no release fails")
    return Outcome("pass", metrics=metrics, known_limit_stale=stale, stale_limit=index)

