"""Failure categories: turn what went wrong in a cell into (category, real message).

Categories are decided by *where* a failure happened (loading config, applying LoRA, the
check's own assertions) or by the exception type, never by matching model names.
"""

from __future__ import annotations

import traceback

MESSAGE_LIMIT = 2000


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


def classify(exc: BaseException) -> tuple[str, str]:
    """Category and message for any exception raised while a cell ran."""
    if isinstance(exc, CellFailure):
        return exc.category, trimmed(exc.message)
    message = trimmed(f"{type(exc).__name__}: {exc}")
    if is_oom(exc):
        return "oom", message
    return "error", message


def format_traceback(exc: BaseException) -> str:
    return trimmed("".join(traceback.format_exception(exc)), 8000)
