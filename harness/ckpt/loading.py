"""Every load of a checkpoint goes through here: the same code state and the same scan each time.

- **A fresh code namespace for remote code.** transformers keeps a remote-code checkpoint's modules
  in `sys.modules` under `transformers_modules.` and reuses them on the next load when the files
  are unchanged, so state the code keeps at module or class level (a counter, a class attribute
  set at load, a mixin patched in) survives from one load to the next. A verdict would then
  depend on which cells ran before in that process. Before each remote-code load those modules
  are dropped, so transformers imports the code afresh: the second load behaves as the first.
- **Unfilled memory reads NaN.** Loads (and builds) run with torch's `fill_uninitialized_memory`
  under deterministic algorithms, so a tensor nothing wrote, e.g. a buffer the code computes in
  `__init__` that transformers' loader does not compute again, is NaN instead of whatever the
  allocator left there (often zeros, which would hide it).
- **The init scan** looks at parameters and buffers after the build and after every load and names
  each tensor that is non-finite or was never computed (`init`), instead of leaving a NaN loss
  without a cause to the checks.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator

from harness.failures import CellFailure

# A freshly initialised weight of a tiny model is of order 1 (normal inits use std 0.02, norms 1);
# one beyond this is memory that nothing initialised.
ABSURD_INIT = 1e4
REMOTE_MODULES = "transformers_modules"
SHOWN = 12


def fresh_remote_modules() -> list[str]:
    """Drop every remote-code module transformers imported in this process; returns their names.

    Models already built keep their classes; the next `from_pretrained(..., trust_remote_code=True)`
    imports the checkpoint's code again, as a fresh process would."""
    dropped = sorted(name for name in sys.modules if name.startswith(REMOTE_MODULES + "."))
    for name in dropped:
        del sys.modules[name]
    if dropped:
        import importlib
        importlib.invalidate_caches()
    return dropped


@contextlib.contextmanager
def unfilled_memory_reads_nan() -> Iterator[None]:
    """torch's `fill_uninitialized_memory` under deterministic algorithms (warn only), restored after."""
    import torch
    import torch.utils.deterministic

    was_deterministic, was_warn_only = (torch.are_deterministic_algorithms_enabled(),
                                        torch.is_deterministic_algorithms_warn_only_enabled())
    was_filling = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        yield
    finally:
        torch.utils.deterministic.fill_uninitialized_memory = was_filling
        torch.use_deterministic_algorithms(was_deterministic, warn_only=was_warn_only)


def _local(tensor):
    """The values this process holds (a DTensor's local shard)."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def uninitialised_tensors(model) -> list[str]:
    """Names ("parameter X" / "buffer Y") of the tensors nothing initialised or computed.

    A parameter is flagged when NaN, infinite or beyond ABSURD_INIT (a weight of order 1 is what any
    init gives). A buffer is flagged only when it holds NaN, which is what memory nothing wrote
    reads as under `unfilled_memory_reads_nan`: buffers legitimately hold -inf masks or position
    indices in the tens of thousands. Integer buffers cannot read NaN and are not judged."""
    import torch

    bad = []
    with torch.no_grad():
        for name, param in model.named_parameters():
            values = _local(param.detach())
            if values.is_meta or not values.numel():
                continue
            values = values.float()
            if not torch.isfinite(values).all() or values.abs().max() > ABSURD_INIT:
                bad.append(f"parameter {name}")
        for name, buffer in model.named_buffers():
            values = _local(buffer.detach())
            if values.is_meta or not values.numel() or not values.is_floating_point():
                continue
            if torch.isnan(values).any():
                bad.append(f"buffer {name}")
    return bad


def require_initialised(model, what: str, when: str):
    """`model` if the scan finds nothing, else the `init` failure naming every tensor it found."""
    bad = uninitialised_tensors(model)
    if bad:
        more = f" ... ({len(bad) - SHOWN} more)" if len(bad) > SHOWN else ""
        raise CellFailure("init", f"{what}: {len(bad)} tensor(s) are NaN, infinite or beyond {ABSURD_INIT:g} "
                                  f"{when}, i.e. never initialised or computed by the model code: "
                                  f"{', '.join(bad[:SHOWN])}{more}")
    return model


def checked_load(load: Callable[[], object], what: str, source, remote_code: bool):
    """Run `load` (a from_pretrained call) as described above and scan what it gave.

    `remote_code`: the call trusts remote code, so it gets a fresh code namespace first."""
    if remote_code:
        fresh_remote_modules()
    with unfilled_memory_reads_nan():
        model = load()
    return require_initialised(model, what, f"after loading {source}")
