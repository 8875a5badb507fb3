"""The stacks a cell can run on, by name (matrix `stacks`; harness/stacks/<name>/).

A stack's module is imported only when one of its cells runs: the reference stack needs nothing
beyond the harness's own dependencies, another stack's packages may be absent (its cells then
skip as `stack-absent` before anything is imported: `missing_packages`).
"""

from __future__ import annotations

import importlib
import importlib.util

from harness.spec.matrix import StackSpec
from harness.stacks.base import Stack

# name -> "module:class" of its implementation of the seam (harness/stacks/base.py).
IMPLEMENTATIONS = {
    "native": "harness.stacks.native.stack:NativeStack",
    "trl": "harness.stacks.trl.stack:TrlStack",
    "automodel": "harness.stacks.automodel.stack:AutoModelStack",
}
_STACKS: dict[str, Stack] = {}


def missing_packages(spec: StackSpec) -> list[str]:
    """The stack's packages that this environment cannot import (found without importing them)."""
    return [name for name in spec.packages if importlib.util.find_spec(name) is None]


def stack_for(name: str = "native") -> Stack:
    """The one instance of the named stack in this process."""
    if name not in _STACKS:
        module, cls = IMPLEMENTATIONS[name].split(":")
        _STACKS[name] = getattr(importlib.import_module(module), cls)()
    return _STACKS[name]
