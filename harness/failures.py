"""Failure categories: turn what went wrong in a cell into (category, real message).

Categories are decided by *where* a failure happened (loading config, applying LoRA, the
check's own assertions) or by the exception type, never by matching model names.

A verdict is about the stack under test, so an exception that our own code raised by mistake
must never become one. `classify` tells them apart by the innermost frame of the traceback:
a `CellFailure` is a deliberate verdict wherever it is raised; any other exception whose
innermost frame lies in the `harness` package is a bug of ours (`harness-error`), and one
raised inside torch, transformers, peft (or any other library) is the stack's (`error`,
or `oom`). A harness-error fails the run (pytest exits 3, see harness/plugin.py) so that it is
fixed, never published.
"""

from __future__ import annotations

import traceback
from pathlib import Path

MESSAGE_LIMIT = 2000
HARNESS_PACKAGE = Path(__file__).resolve().parent
HARNESS_ERROR = "harness-error"

# Every category a cell's record may carry. They are declared here, with the code that decides
# them, and read by the matrix stage (known_limits may name the declarable ones) and the docs.
FAILURE_CATEGORIES = (
    "needs-newer-transformers",
    "remote-code",
    # the installed release does not offer the cell's declared variant (a loading API, an experts
    # kernel) for this model: a skip, with the releases that do
    "not-offered",
    # the cell's stack (matrix `stacks`) needs packages this environment lacks: a skip, with the
    # command that installs them
    "stack-absent",
    "peft-unsupported",
    "oom",
    "numerics",
    "check-failed",
    "checkpoint-absent",
    "no-tp-plan",
    "layout-unsupported",
    # the stack said it applied the cell's layout, but the model that trained is not laid out so
    # (e.g. FSDP2 asked, DistributedDataParallel ran): the message says what ran instead
    "layout-not-applied",
    "crash",
    "timeout",
    "error",
    # a documented call failed on a release at or after the removal transformers announced for it
    # (matrix `apis.NAME.removed`): still a failure, rendered "removed in RELEASE"
    "api-removed",
    # the model built from a config holds parameters nothing initialised (NaN, inf, absurd values):
    # a finding about the model code (harness/ckpt/tiny.py), distinct from a training failure
    "init",
    # our own code raised (classify below): never a verdict, never a known limit
    HARNESS_ERROR,
    # the matrix names something the model does not have (a tp_plan key, a LoRA target, a frozen
    # module that match nothing): found only once the model is built, fixed in the matrix
    "matrix-error",
)
# Categories that make a cell skip (harness/run/runner.py): a known limit can never apply to them.
SKIP_CATEGORIES = ("remote-code", "needs-newer-transformers", "checkpoint-absent", "not-offered",
                   "stack-absent")
# Categories a row may declare as expected in known_limits: a harness bug and a matrix mistake are
# fixed, not declared, and a skip needs no declaration.
DECLARABLE_CATEGORIES = tuple(c for c in FAILURE_CATEGORIES
                              if c not in (HARNESS_ERROR, "matrix-error", *SKIP_CATEGORIES))


class CellFailure(Exception):
    """A failure whose category is already known at the point it is raised."""

    def __init__(self, category: str, message: str, metrics: dict | None = None):
        super().__init__(message)
        self.category = category
        self.message = message
        # Measurements that are still worth recording when the cell fails (e.g. the memory an
        # out-of-memory cell asked for).
        self.metrics = metrics or {}


def trimmed(text: str, limit: int = MESSAGE_LIMIT) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[: limit - 20] + " ... [truncated]"


def is_oom(exc: BaseException) -> bool:
    """Out of memory: torch's OutOfMemoryError (CUDA), Python's MemoryError, or the CPU allocator's
    refusal (a RuntimeError from c10's DefaultCPUAllocator)."""
    return (isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError"
            or (isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)))


def innermost_file(exc: BaseException) -> Path | None:
    """The source file of the frame that raised `exc` (the last frame of its traceback)."""
    tb = exc.__traceback__
    if tb is None:
        return None
    while tb.tb_next is not None:
        tb = tb.tb_next
    return Path(tb.tb_frame.f_code.co_filename).resolve()


def raised_by_harness(exc: BaseException) -> bool:
    """Whether the innermost frame of `exc` is the harness's own code (not a library it calls)."""
    where = innermost_file(exc)
    return where is not None and where.is_relative_to(HARNESS_PACKAGE)


def classify(exc: BaseException) -> tuple[str, str]:
    """Category and message for any exception raised while a cell ran."""
    if isinstance(exc, CellFailure):
        return exc.category, trimmed(exc.message)
    message = trimmed(f"{type(exc).__name__}: {exc}")
    if is_oom(exc):
        return "oom", message
    absent = absent_package(exc)
    if absent:
        return "stack-absent", trimmed(f"{message} (the stack under test imports {absent}, an optional "
                                       f"package not installed here: install it to run this cell)")
    if raised_by_harness(exc):
        where = innermost_file(exc)
        return HARNESS_ERROR, trimmed(f"{message} (raised in harness/{where.relative_to(HARNESS_PACKAGE)}: "
                                      "a bug of the harness, not a verdict on the stack)")
    return "error", message


def absent_package(exc: BaseException) -> str | None:
    """The package a library failed to import because it is not installed at all (e.g. NeMo
    AutoModel's own NemotronH asking for `mamba_ssm`): the environment's gap, not a verdict. A
    missing module of an installed package (a broken release) stays the library's error."""
    import importlib.util

    if not isinstance(exc, ModuleNotFoundError) or not exc.name or raised_by_harness(exc):
        return None
    top = exc.name.split(".")[0]
    return top if importlib.util.find_spec(top) is None else None


def format_traceback(exc: BaseException) -> str:
    return trimmed("".join(traceback.format_exception(exc)), 8000)
