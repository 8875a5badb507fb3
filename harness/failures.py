"""Failure categories: turn what went wrong in a cell into (category, real message).

Categories are decided by *where* a failure happened (loading config, applying LoRA, the
check's own assertions) or by the exception type, never by matching model names.

A verdict is about the stack under test, so an exception that our own code raised by mistake
must never become one. `classify` tells them apart by the frame that raised it: a
`CellFailure` is a deliberate verdict wherever it is raised; any other exception raised in the
`harness` package is a bug of ours (`harness-error`), and one raised inside torch,
transformers, peft (or any other library) is the stack's (`error`, or `oom`).

The frame that raised is the innermost one of the traceback, except for an AttributeError or a
TypeError: asking a torch module for an attribute it lacks raises inside torch's
`nn.Module.__getattr__`, and calling a module with arguments its `forward` does not take raises
inside torch's `_call_impl`, though the mistake is the caller's. For those two, the frames of
attribute and call machinery (`MACHINERY`) are passed over and the first frame outside them
decides: `model.generate` asked by harness code of a class without it is `harness-error`.
A harness-error fails the run (pytest exits 3, see harness/plugin.py) so that it is fixed,
never published.
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
    # the check's own evidence step is impossible for this layout (torch cannot gather a weight
    # or gradient whole: transformers' `_StridedShard` expert shards), with torch's message: no
    # verdict on the stack, which its users never ask for that gather; never a known limit
    "evidence-unavailable",
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
                              if c not in (HARNESS_ERROR, "matrix-error", "evidence-unavailable",
                                           *SKIP_CATEGORIES))


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


# Frames that only look an attribute up or pass a call on: (a path's tail, function names; an
# empty tuple: every function of that file). A `__getattr__` anywhere (peft's, transformers'
# config's) only forwards the lookup, so it counts as machinery for an AttributeError too.
MACHINERY = (
    ("torch/nn/modules/module.py", ("__getattr__", "__setattr__", "__delattr__", "_call_impl",
                                    "_wrapped_call_impl")),
    ("torch/utils/_contextlib.py", ("decorate_context",)),  # torch.no_grad() and friends as decorators
    ("torch/_compile.py", ("inner",)),  # torch._disable_dynamo
    ("torch/_dynamo/eval_frame.py", ("_fn",)),
    ("/functools.py", ()),
    ("/contextlib.py", ("inner",)),
)
ATTRIBUTE_HOOKS = ("__getattr__", "__getattribute__")


def _frames(exc: BaseException) -> list:
    """The traceback's frames, outermost first."""
    frames, tb = [], exc.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    return frames


def is_machinery(frame, exc: BaseException) -> bool:
    """Whether `frame` only forwards an attribute lookup or a call (see MACHINERY)."""
    code = frame.f_code
    if isinstance(exc, AttributeError) and code.co_name in ATTRIBUTE_HOOKS:
        return True
    path = Path(code.co_filename).as_posix()
    return any(path.endswith(tail) and (not names or code.co_name in names) for tail, names in MACHINERY)


def raising_file(exc: BaseException) -> Path | None:
    """The source file of the frame whose code raised `exc`: the innermost frame, or for an
    AttributeError or TypeError the innermost one outside attribute and call machinery."""
    frames = _frames(exc)
    if not frames:
        return None
    if isinstance(exc, AttributeError | TypeError):
        frames = [f for f in frames if not is_machinery(f, exc)] or frames
    return Path(frames[-1].f_code.co_filename).resolve()


def raised_by_harness(exc: BaseException) -> bool:
    """Whether the code that raised `exc` is the harness's own (not a library it calls)."""
    where = raising_file(exc)
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
        where = raising_file(exc)
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
