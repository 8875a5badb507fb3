"""Cells: one (architecture, method, layout, tier, check) each, with a stable readable id.

Expansion is a pure function of the Matrix. Combinations that cannot run are not generated;
instead each is kept as a PrunedCell with its reason, so that the docs can say "n/a: EP needs
a MoE model" instead of leaving a hole.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass, replace

from harness.spec.constraints import violated_constraint
from harness.spec.matrix import CUSTOM, IMPLEMENTATION_NAMES, REFERENCE_STACK, Architecture, Matrix

AXES = ("architecture", "method", "layout", "tier", "check", "variant", "stack", "implementation")
# The command-line options that select cells (pytest's and `compat-harness cells`'), by axis.
SELECTION_OPTIONS = {"arch": "architecture", "method": "method", "layout": "layout", "tier": "tier",
                     "check": "check", "variant": "variant", "stack": "stack",
                     "implementation": "implementation"}


@dataclass(frozen=True, order=True)
class Cell:
    architecture: str
    method: str
    layout: str
    tier: str
    check: str
    # real-shape tier only: which of the row's real configs (matrix `real_shapes`) the cell builds.
    # One row covers several sizes (Llama-3.2-1B and Llama-3.1-8B), so the size is part of the id.
    shape: str = ""
    # A declared variant of the cell (matrix `apis` or `experts`): a second documented call that
    # applies the layout, or an MoE experts kernel. "" is the plain cell.
    variant: str = ""
    # The stack under test that runs it (matrix `stacks`): the reference stack's ids carry no
    # stack, any other's start with "<stack>:" (e.g. "trl:LlamaForCausalLM-lora-single-tiny-train").
    stack: str = REFERENCE_STACK
    # Which implementation of the row runs (Architecture.implementations): "" is the row's own
    # (transformers, or the hub's remote code; on a stack with its own classes, the stack's choice);
    # "custom" is the custom registry's class of a remote-code row, "force_hf" a stack's switch to
    # transformers' class (StackSpec.implementations); ids end in "~custom", "~force_hf", so that
    # the verdicts stand side by side.
    implementation: str = ""

    @property
    def id(self) -> str:
        plain = f"{self.architecture}-{self.method}-{self.layout}-{self.tail}"
        if self.implementation:
            plain += f"~{self.implementation}"
        return plain if self.stack == REFERENCE_STACK else f"{self.stack}:{plain}"

    @property
    def tail(self) -> str:
        """The id after (architecture, method, layout): what tells apart the cells of one such
        group, e.g. 'tiny-train', 'real-shape-train@Llama-3.1-8B', 'tiny-train+fully_shard'."""
        text = f"{self.tier}-{self.check}"
        if self.shape:
            text += f"@{self.shape}"
        return f"{text}+{self.variant}" if self.variant else text

    def axis(self, name: str) -> str:
        if name in ("variant", "implementation"):
            return getattr(self, name) or "default"
        return getattr(self, name)


def cell_architecture(matrix: Matrix, cell: Cell) -> Architecture:
    """The row as this cell's implementation sees it: a custom cell of a remote-code row is the
    custom registry's class and never runs remote code (the row's flag is off for it)."""
    arch = matrix.architectures[cell.architecture]
    return replace(arch, trust_remote_code=False) if cell.implementation == CUSTOM else arch


@dataclass(frozen=True, order=True)
class PrunedCell:
    cell: Cell
    reason: str

    @property
    def id(self) -> str:
        return self.cell.id


def stack_prune_reason(matrix: Matrix, cell: Cell) -> str | None:
    """Why the cell's stack does not run it (the stack's own layouts, methods, checks, tiers), or None."""
    stack = matrix.stacks[cell.stack]
    for axis, allowed in (("layout", stack.layouts), ("method", stack.methods), ("check", stack.checks),
                          ("tier", stack.tiers)):
        if allowed and getattr(cell, axis) not in allowed:
            return f"stack {cell.stack} runs {axis}s {', '.join(allowed)} only"
    if (stack.multi_rank_checks and matrix.layouts[cell.layout].world_size > 1
            and cell.check not in stack.multi_rank_checks):
        return (f"stack {cell.stack} runs {', '.join(stack.multi_rank_checks)} only under a layout of "
                f"more than one rank")
    return None


def implementations_for(matrix: Matrix, stack: str, arch: str) -> tuple[str, ...]:
    """The implementation axis of a row's cells on a stack: the row's own ones, or the stack's
    declared ones ("default" spelled "" as in ids)."""
    declared = matrix.stacks[stack].implementations if stack in matrix.stacks else ()
    if not declared:
        return matrix.architectures[arch].implementations
    return tuple("" if name == "default" else name for name in declared)


def prune_reason(matrix: Matrix, cell: Cell) -> str | None:
    """Why this combination cannot run, or None when it is a real cell."""
    reason = stack_prune_reason(matrix, cell) if cell.stack != REFERENCE_STACK else None
    if reason:
        return reason
    check = matrix.checks[cell.check]
    tier = matrix.tiers[cell.tier]
    if check.not_reference and cell.stack == REFERENCE_STACK and not cell.implementation:
        return (f"check {cell.check} compares another stack or implementation with this cell's, the "
                "reference (the native stack, the row's own implementation)")
    if tier.layouts and cell.layout not in tier.layouts:
        return f"tier {cell.tier} runs under layouts {', '.join(tier.layouts)} only"
    if cell.tier not in check.tiers:
        return f"check {cell.check} does not run on tier {cell.tier}"
    if check.methods and cell.method not in check.methods:
        return f"check {cell.check} does not apply to method {cell.method}"
    if check.layouts and cell.layout not in check.layouts:
        return f"check {cell.check} does not run under layout {cell.layout}"
    auto_class = matrix.architectures[cell.architecture].auto_class
    if check.auto_classes and auto_class not in check.auto_classes:
        return f"check {cell.check} does not apply to {auto_class} models"
    if check.load_layouts and cell.layout not in check.load_layouts:
        return f"check {cell.check} declares no layout to load a {cell.layout} checkpoint under"
    return violated_constraint(matrix, matrix.architectures[cell.architecture], matrix.layouts[cell.layout])


def shapes_for(matrix: Matrix, arch: str, tier: str) -> list[str]:
    """The shapes a tier expands over: the row's real configs on real-shape, else just ""."""
    if matrix.tiers[tier].source != "real-shape":
        return [""]
    return sorted(n for n, s in matrix.real_shapes.items() if s.architecture == arch)


def variants_for(matrix: Matrix, arch: str, layout: str, tier: str, check: str) -> list[str]:
    """The variant cells declared for a plain cell: a layout's later APIs, a MoE row's kernels.

    Only declared combinations are generated (an API's or kernel's own checks, tiers, layouts),
    so variants never add pruned noise; the plain cell's own prune reason still applies to them.
    """
    out = [api for api in matrix.layouts[layout].apis[1:]
           if check in matrix.apis[api].checks and tier in matrix.apis[api].tiers]
    if matrix.architectures[arch].moe:
        out += [name for name, kernel in matrix.experts.items()
                if layout in kernel.layouts and check in kernel.checks and tier in kernel.tiers]
    return out


def all_combinations(matrix: Matrix) -> Iterable[Cell]:
    """Every stack's combinations, the reference stack's first (its cells keep their order)."""
    stacks = sorted(matrix.stacks, key=lambda name: (name != REFERENCE_STACK, name))
    for stack in stacks:
        yield from _combinations(matrix, stack)


def _combinations(matrix: Matrix, stack: str) -> Iterable[Cell]:
    """One stack's combinations. Variants (a layout's later documented calls, experts kernels) are
    the reference stack's: another stack applies a layout through its own configuration."""
    for arch in sorted(matrix.architectures):
        for impl in implementations_for(matrix, stack, arch):
            for method in matrix.methods:
                for layout in matrix.layouts:
                    for tier in matrix.tiers:
                        # A row without a real config in the matrix has no real-shape cells: nothing
                        # to build, so nothing to prune either (the docs list the configs it has).
                        for shape in shapes_for(matrix, arch, tier):
                            for check in matrix.checks:
                                yield Cell(arch, method, layout, tier, check, shape, stack=stack,
                                           implementation=impl)
                                if stack != REFERENCE_STACK:
                                    continue
                                for variant in variants_for(matrix, arch, layout, tier, check):
                                    yield Cell(arch, method, layout, tier, check, shape, variant,
                                               implementation=impl)


def expand(matrix: Matrix) -> tuple[list[Cell], list[PrunedCell]]:
    """All runnable cells, in a deterministic order, and the pruned ones with their reasons."""
    cells, pruned = [], []
    for cell in all_combinations(matrix):
        reason = prune_reason(matrix, cell)
        if reason is None:
            cells.append(cell)
        else:
            pruned.append(PrunedCell(cell, reason))
    return cells, pruned


# `--stack all` selects every declared stack.
ALL_STACKS = "all"


class SelectionError(ValueError):
    """A --arch/--method/--layout/--tier/--check value that names nothing in the matrix."""


def split_values(values: Iterable[str] | None) -> list[str]:
    """Accept repeated options and comma lists alike: ['a,b', 'c'] -> ['a', 'b', 'c']."""
    out: list[str] = []
    for value in values or ():
        out.extend(v.strip() for v in value.split(",") if v.strip())
    return out


def validate_selection(matrix: Matrix, selection: dict[str, list[str]]) -> None:
    known = {
        "architecture": list(matrix.architectures),
        "method": list(matrix.methods),
        "layout": list(matrix.layouts),
        "tier": list(matrix.tiers),
        "check": list(matrix.checks),
        "variant": ["default", *matrix.apis, *matrix.experts],
        "stack": [*matrix.stacks, ALL_STACKS],
        "implementation": list(IMPLEMENTATION_NAMES),
    }
    for axis, wanted in selection.items():
        for value in wanted:
            if value not in known[axis]:
                close = difflib.get_close_matches(value, known[axis], n=3, cutoff=0.5)
                lowered = [k for k in known[axis] if value.lower() in k.lower() and k not in close]
                suggestions = (close + lowered)[:5]
                hint = f"; did you mean {', '.join(suggestions)}?" if suggestions else ""
                raise SelectionError(
                    f"unknown {axis} {value!r}{hint} ({len(known[axis])} known; "
                    f"`compat-harness cells` lists the cells and their axes)"
                )


def with_stacks(matrix: Matrix, selection: dict[str, list[str]]) -> dict[str, list[str]]:
    """The selection with its stacks spelled out: none given is the reference stack only (the
    main job and the gates run it), `all` is every declared stack."""
    wanted = selection.get("stack") or [REFERENCE_STACK]
    stacks = list(matrix.stacks) if ALL_STACKS in wanted else wanted
    return {**selection, "stack": stacks}


def select(cells: Iterable[Cell], selection: dict[str, list[str]]) -> list[Cell]:
    """Keep the cells whose every axis is in the selection (an empty axis keeps everything)."""
    return [
        cell
        for cell in cells
        if all(not wanted or cell.axis(axis) in wanted for axis, wanted in selection.items())
    ]


def select_pruned(pruned: Iterable[PrunedCell], selection: dict[str, list[str]]) -> list[PrunedCell]:
    """The pruned combinations inside a selection (the same filter as `select`)."""
    return [p for p in pruned
            if all(not wanted or p.cell.axis(axis) in wanted for axis, wanted in selection.items())]
