"""The stacks a cell can run on, by name (matrix cells name `native` today)."""

from __future__ import annotations

from harness.stacks.base import Stack
from harness.stacks.native.stack import NativeStack

STACKS: dict[str, Stack] = {"native": NativeStack()}


def stack_for(name: str = "native") -> Stack:
    return STACKS[name]
