"""Checks that span the matrix's tables: each value is valid on its own (harness/spec/parse.py), but
two of them together say something that cannot run or can never apply.

- every tier's dtype has its `[tolerances.<dtype>]` (parity and peft_roundtrip compare within it);
- every declared `[apis.*]` call is listed by some layout (otherwise nothing ever runs it);
- a row's `tiny` override of a generic `tiny_defaults` key keeps that key's domain (a size);
- a layout that leaves out a size constraint (tp_divides_heads, ep_divides_experts) has no row
  whose sizes would need it;
- parity runs under multi-rank layouts only; a round trip reloads under one rank (peft_roundtrip
  and generate always) or under as many ranks as it saved with;
- a tier's QA set reads as one, and the generate check's `prompt` is one of its fixed items;
- there is a one-rank layout (the reference that parity and the round trips compare with);
- every `known_limits` entry names at least one cell of its row that is generated (not pruned):
  one that covers nothing is dead data, and usually a mistyped or misplaced scope.
"""

from __future__ import annotations

from harness.spec.cells import expand
from harness.spec.constraints import CONSTRAINT_CHECKS, SIZE_CONSTRAINTS, violated_constraint
from harness.spec.matrix import Matrix, MatrixError
from harness.spec.qa import DatasetError, load_qa

# Checks that compare a multi-rank layout with one device (they cannot run on one rank), and checks
# that reload what they saved on one device, as users do (their load layouts have one rank). Data
# about what harness/checks/<name>.py does, kept here with the one rule that reads it: the matrix
# stage cannot import a check module to ask it (a check imports torch), and at run time the check
# itself refuses a wrong layout (harness/checks/common.py, require_one_device_load).
MULTI_RANK_CHECKS = ("parity",)
ONE_DEVICE_RELOAD_CHECKS = ("peft_roundtrip", "generate")


def check_consistency(matrix: Matrix, files: dict[str, dict[str, str]]) -> None:
    """Raise MatrixError for the first contradiction between tables.

    `files` maps a section and an entry's name to the file that defines it (for messages).
    """
    for name, tier in matrix.tiers.items():
        if tier.dtype not in matrix.tolerances:
            raise MatrixError(files["tiers"][name], f"tiers.{name}.dtype", tier.dtype,
                              f"has no [tolerances.{tier.dtype}] table (parity and peft_roundtrip compare "
                              "within it); declare one", sorted(matrix.tolerances))
    if not any(layout.world_size == 1 for layout in matrix.layouts.values()):
        first = next(iter(files["layouts"].values()))
        raise MatrixError(first, "layouts", sorted(matrix.layouts),
                          "needs a one-rank layout (world_size = 1): the one-device reference that parity "
                          "and the round trips compare with")
    used = {api for layout in matrix.layouts.values() for api in layout.apis}
    for name in matrix.apis:
        if name not in used:
            raise MatrixError(files["apis"][name], f"apis.{name}", name,
                              "is listed by no layout's `apis`, so no cell would ever run it")
    _check_layouts(matrix, files)
    _qa_data(matrix, files)
    _tiny_sizes(matrix)
    _sizes_divide(matrix, files)
    _limits_cover_cells(matrix)


def _check_layouts(matrix: Matrix, files: dict[str, dict[str, str]]) -> None:
    """parity needs a multi-rank layout; a round trip reloads under one rank (peft_roundtrip and
    generate: always) or under as many ranks as it saved with."""
    for name, check in matrix.checks.items():
        file = files["checks"][name]
        if name in MULTI_RANK_CHECKS:
            single = [lay for lay in (check.layouts or tuple(matrix.layouts))
                      if matrix.layouts[lay].world_size == 1]
            if single:
                raise MatrixError(file, f"checks.{name}.layouts", list(check.layouts),
                                  f"{name} compares a multi-rank layout with one device; list only "
                                  f"multi-rank layouts (layout {single[0]} has one rank)")
        for saved, loaded in check.load_layouts.items():
            ranks, saved_ranks = matrix.layouts[loaded].world_size, matrix.layouts[saved].world_size
            if name in ONE_DEVICE_RELOAD_CHECKS and ranks != 1:
                raise MatrixError(file, f"checks.{name}.load_layouts.{saved}", loaded,
                                  f"{name} reloads on one device, as users do: name a one-rank layout")
            if ranks not in (1, saved_ranks):
                raise MatrixError(file, f"checks.{name}.load_layouts.{saved}", loaded,
                                  f"has {ranks} ranks; a checkpoint saved under {saved} ({saved_ranks} "
                                  "ranks) loads under one rank or under as many as it was saved with")


def _sizes_divide(matrix: Matrix, files: dict[str, dict[str, str]]) -> None:
    """A layout without a size constraint (tp_divides_heads, ep_divides_experts) must not need it:
    every row it does not prune otherwise has sizes that split over its mesh."""
    for name, layout in matrix.layouts.items():
        absent = [c for c in SIZE_CONSTRAINTS if c not in layout.constraints]
        for arch in matrix.architectures.values():
            if violated_constraint(matrix, arch, layout):
                continue
            for constraint in absent:
                reason = CONSTRAINT_CHECKS[constraint](matrix, arch, layout)
                if reason:
                    raise MatrixError(files["layouts"][name], f"layouts.{name}.constraints",
                                      list(layout.constraints),
                                      f"{reason} ({arch.name}): declare {constraint} to prune such rows")


def _qa_data(matrix: Matrix, files: dict[str, dict[str, str]]) -> None:
    """A tier's QA set must read as one (harness/spec/qa.py), and the generate check's `prompt`
    must be one of its fixed items on every QA tier it runs on."""
    prompt = matrix.checks["generate"].options.get("prompt") if "generate" in matrix.checks else None
    for name, tier in matrix.tiers.items():
        if tier.data != "qa":
            continue
        try:
            items = load_qa(tier.dataset)
        except DatasetError as exc:
            raise MatrixError(files["tiers"][name], f"tiers.{name}.dataset", tier.dataset,
                              f"is not a QA set: {exc}") from None
        fixed = sorted(item.id for item in items if item.fixed)
        if prompt is not None and name in matrix.checks["generate"].tiers and prompt not in fixed:
            raise MatrixError(files["checks"]["generate"], "checks.generate.options.prompt", prompt,
                              f"is not a fixed item of tier {name}'s QA set", fixed)


def _tiny_sizes(matrix: Matrix) -> None:
    generic = {key for group in matrix.tiny_defaults.values() for key in group}
    for arch in matrix.architectures.values():
        tables = [(f"architectures.{arch.name}.tiny", arch.tiny)]
        tables += [(f"architectures.{arch.name}.tiny.{k}", v) for k, v in arch.tiny.items()
                   if isinstance(v, dict)]
        for path, table in tables:
            for key, value in table.items():
                if key in generic and not (isinstance(value, int) and not isinstance(value, bool)
                                           and value >= 1):
                    raise MatrixError(arch.source_file, f"{path}.{key}", value,
                                      "must be an integer of at least 1, like the generic "
                                      f"tiny_defaults.{key}")


def _limits_cover_cells(matrix: Matrix) -> None:
    cells, pruned = expand(matrix)
    by_arch: dict[str, list] = {}
    for cell in cells:
        by_arch.setdefault(cell.architecture, []).append(cell)
    pruned_by_arch: dict[str, list] = {}
    for item in pruned:
        pruned_by_arch.setdefault(item.cell.architecture, []).append(item)
    for arch in matrix.architectures.values():
        for i, limit in enumerate(arch.known_limits):
            axes = lambda c, lim=limit: lim.covers_axes(  # noqa: E731
                c.method, c.layout, c.tier, c.check, c.variant, c.stack, c.implementation)
            if any(axes(c) for c in by_arch.get(arch.name, ())):
                continue
            scope = {k: getattr(limit, k) for k in ("method", "layout", "tier", "check", "variant", "stack",
                                                        "implementation")
                     if getattr(limit, k) is not None}
            why = next((f"; {p.id} is pruned: {p.reason}" for p in pruned_by_arch.get(arch.name, ())
                        if axes(p.cell)), "")
            raise MatrixError(arch.source_file, f"architectures.{arch.name}.known_limits[{i}]", scope,
                              f"covers no cell of this row{why}")
