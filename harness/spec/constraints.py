"""Layout constraints, evaluated from matrix data alone (no model is built to decide them).

A layout lists the constraints it needs in matrix/axes.toml; each name maps to one function
here that returns why the (architecture, layout) pair cannot run, or None. The sizes compared
are the tiny config's: the row's `tiny` overrides on top of the generic tiny_defaults.

CONSTRAINT_CHECKS is the one declaration of the constraint names: the layout validator
(harness/spec/parse.py) allows exactly its keys, so a name can only be declared with its code.
"""

from __future__ import annotations

from collections.abc import Callable

from harness.spec.matrix import Architecture, Layout, Matrix

# Config attributes that name the expert count of a MoE model (the same names tiny_defaults.moe
# shrinks): ep_divides_experts reads them here, and the real-shape stack
# (harness/stacks/native/realshape.py) reads them to find fused expert weights, a 3-D parameter
# whose first dimension is that count.
EXPERT_COUNT_KEYS = ("num_experts", "num_local_experts", "n_routed_experts")


def tiny_value(matrix: Matrix, arch: Architecture, key: str, default=None):
    """The tiny config's value for `key` as declared: row override, else generic default."""
    if key in arch.tiny:
        return arch.tiny[key]
    text = arch.tiny.get("text_config", {})
    if isinstance(text, dict) and key in text:
        return text[key]
    for group in ("base", "moe"):
        if key in matrix.tiny_defaults.get(group, {}):
            return matrix.tiny_defaults[group][key]
    return default


def _moe_only(matrix: Matrix, arch: Architecture, layout: Layout) -> str | None:
    return None if arch.moe else f"layout {layout.name} (expert parallel) needs a MoE model"


def _tp_divides_heads(matrix: Matrix, arch: Architecture, layout: Layout) -> str | None:
    tp = layout.mesh.get("tp", 1)
    heads = tiny_value(matrix, arch, "num_attention_heads")
    kv_heads = tiny_value(matrix, arch, "num_key_value_heads", heads)
    for label, count in (("attention heads", heads), ("KV heads", kv_heads)):
        if count is not None and count % tp:
            return f"TP={tp} does not divide the {count} {label} of the tiny config"
    return None


def _ep_divides_experts(matrix: Matrix, arch: Architecture, layout: Layout) -> str | None:
    ep = layout.mesh.get("ep", 1)
    experts = next(
        (v for k in EXPERT_COUNT_KEYS if (v := tiny_value(matrix, arch, k)) is not None), None
    )
    if experts is not None and experts % ep:
        return f"EP={ep} does not divide the {experts} experts of the tiny config"
    return None


def _ep_excludes_tp(matrix: Matrix, arch: Architecture, layout: Layout) -> str | None:
    if layout.mesh.get("ep", 1) > 1 and layout.mesh.get("tp", 1) > 1:
        return "expert parallel needs tensor parallel size 1"
    return None


CONSTRAINT_CHECKS: dict[str, Callable[[Matrix, Architecture, Layout], str | None]] = {
    "moe_only": _moe_only,
    "tp_divides_heads": _tp_divides_heads,
    "ep_divides_experts": _ep_divides_experts,
    "ep_excludes_tp": _ep_excludes_tp,
}

# The constraints that compare a row's sizes with the mesh. A layout that leaves one out is checked
# against the rows' sizes instead (harness/spec/consistency.py).
SIZE_CONSTRAINTS = ("tp_divides_heads", "ep_divides_experts")
# The constraints a mesh dim needs: without moe_only every dense row would be generated under
# expert parallel and fail at run time instead of being pruned.
CONSTRAINTS_FOR_DIM = {"ep": ("moe_only",)}


def violated_constraint(matrix: Matrix, arch: Architecture, layout: Layout) -> str | None:
    for name in layout.constraints:
        reason = CONSTRAINT_CHECKS[name](matrix, arch, layout)
        if reason:
            return reason
    return None
