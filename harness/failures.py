"""Failure categories: turn what went wrong in a cell into (category, real message).

Categories are decided by *where* a failure happened (loading config, applying LoRA, the
check's own assertions) or by the exception type, never by matching model names.
"""

from __future__ import annotations

import traceback

MESSAGE_LIMIT = 2000


class CellFailure(Exception):
    """A failure whose category is already known at the point it is raised."""

    def __init__(self, category: str, message: str):
        super().__init__(message)
        self.category = category
        self.message = message


def trimmed(text: str, limit: int = MESSAGE_LIMIT) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[: limit - 20] + " ... [truncated]"


def classify(exc: BaseException) -> tuple[str, str]:
    """Category and message for any exception raised while a cell ran."""
    if isinstance(exc, CellFailure):
        return exc.category, trimmed(exc.message)
    message = trimmed(f"{type(exc).__name__}: {exc}")
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return "oom", message
    return "error", message


def format_traceback(exc: BaseException) -> str:
    return trimmed("".join(traceback.format_exception(exc)), 8000)
