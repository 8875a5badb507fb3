"""The matrix's module patterns matched against a built model, and what to say when one matches
nothing.

A row names modules of its model: `sft_frozen`, `lora_targets`, `lora_exclude`, `tp_plan` keys.
Whether a name exists is known only once the model is built (the loader cannot build models), so
the check runs where the pattern is used, before the library is handed it. A pattern that matches
nothing is the matrix's mistake, not the stack's: the cell fails as `matrix-error`, and the
message names the file and key, the model's class, the nearest names and the first layer's
module names, so that the fix can be written without opening the model.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable

from harness.failures import CellFailure

MATRIX_ERROR = "matrix-error"
LAYER_NUMBER = re.compile(r"\.\d+(\.|$)")
# How many module names of the first layer a message shows.
SHOWN_NAMES = 12


def wildcard(name: str) -> str:
    """A module name with its layer numbers as `*`, the way transformers' plans spell them."""
    return LAYER_NUMBER.sub(lambda m: ".*" + m.group(1), name)


def peft_matches(name: str, target: str) -> bool:
    """peft's rule for one entry of a list of module names: the name or a dotted suffix of it."""
    return name == target or name.endswith("." + target)


FIRST_LAYER = re.compile(r"\.(0|\*)(\.|$)")


def first_layer(names: Iterable[str]) -> list[str]:
    """The module names inside the first numbered layer (model.layers.0.* or model.layers.*.*),
    else the first few names."""
    names = list(names)
    layered = next((n for n in names if FIRST_LAYER.search(n)), None)
    if layered is None:
        return names[:SHOWN_NAMES]
    prefix = layered[: FIRST_LAYER.search(layered).end()]
    inside = [n for n in names if n.startswith(prefix) and not n.endswith((".weight", ".bias"))]
    return inside[:SHOWN_NAMES]


def nearest(wanted: str, names: Iterable[str]) -> list[str]:
    """The names closest to `wanted` compared whole, else by their last component."""
    names = sorted(set(names))
    close = difflib.get_close_matches(wanted, names, n=3, cutoff=0.6)
    if close:
        return close
    leaves = sorted({n.rsplit(".", 1)[-1] for n in names})
    return difflib.get_close_matches(wanted.rsplit(".", 1)[-1], leaves, n=3, cutoff=0.6)


def unmatched(file: str, key: str, value, model_class: str, names: list[str], what: str,
              fix: str = "") -> CellFailure:
    """The matrix-error for a pattern (`value` at `key` in `file`) that matches no name of the model."""
    import transformers

    close = nearest(str(value), names)
    parts = [f"{file}: {key} = {value!r} matches no {what} of {model_class} "
             f"(transformers {transformers.__version__})"]
    if close:
        parts.append(f"did you mean {', '.join(map(repr, close))}?")
    if fix:
        parts.append(fix)
    parts.append(f"names in its first layer: {', '.join(first_layer(names))}")
    return CellFailure(MATRIX_ERROR, "; ".join(parts))


def check_tp_plan(arch, path) -> None:
    """Every key of the row's `tp_plan` table must name a module or parameter of the model that
    `path` holds, spelled from the model's root with `*` for layer numbers (transformers 5.17 and
    5.24 both match the keys against the whole model's names; 5.24 refuses a key that matches
    nothing, 5.17 silently leaves that module unsharded)."""
    import torch

    from harness.ckpt.implementations import load_config
    from harness.ckpt.tiny import auto_model_class

    config = load_config(arch, path)
    with torch.device("meta"):
        model = auto_model_class(arch).from_config(config)
    names = [n for n, _ in model.named_modules() if n] + [n for n, _ in model.named_parameters()]
    generic = sorted({wildcard(n) for n in names})
    for key in arch.tp_plan:
        if key in generic:
            continue
        rooted = [g for g in generic if g.endswith("." + key)]
        fix = (f"keys are paths from the model's root: write {rooted[0]!r}" if rooted
               else "keys are paths from the model's root, with * for the layer number")
        raise unmatched(arch.source_file, f'architectures.{arch.name}.tp_plan."{key}"', key,
                        type(model).__name__, generic, "module or parameter", fix)
