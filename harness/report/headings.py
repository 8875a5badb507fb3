"""Column heads that say what ran: the world size, the devices and the layout the records show.

A page's column named after a promise ("FSDP2 with SFT / PEFT") says what the records behind it ran,
read from the records (their world size, place and the `layout_kind` the stack proved), never
from the matrix's intent: AutoModel's FSDP2 strategy at world size 1 applies no FSDP2, and its
page must say so until records at a larger world size exist.
"""

from __future__ import annotations

from collections.abc import Iterable

from harness.report.releases import RAN
from harness.report.views import ArchView, Evidence

# The failure category of a stack whose layout silently fell back (harness/failures.py).
NOT_APPLIED = "layout-not-applied"


def _units(world_size: int, gpu: bool) -> str:
    if gpu:
        return f"{world_size} GPU" + ("s" if world_size > 1 else "")
    return "1 CPU process" if world_size == 1 else f"{world_size} CPU ranks"


def ran_on(evidence: Iterable[Evidence], promise: str, layout_kind: str) -> str:
    """'2 CPU ranks; 2 GPUs' (the layout applied), '1 GPU, FSDP2 not applied at world size 1', or
    'no record yet': per (world size, GPU or not) among the cells that ran, whether the stack proved
    `layout_kind` (the record's `layout_kind`)."""
    ran = [e for e in evidence if e.status in RAN]
    if not ran:
        return "no record yet"
    parts = []
    for world_size, gpu in sorted({(e.world_size, e.where != "cpu") for e in ran}):
        these = [e for e in ran if (e.world_size, e.where != "cpu") == (world_size, gpu)]
        kinds = {e.metrics.get("layout_kind") for e in these} - {None}
        if layout_kind in kinds:
            parts.append(_units(world_size, gpu))
        elif kinds or any(e.category == NOT_APPLIED for e in these):
            at = " at world size 1" if world_size == 1 else ""
            parts.append(f"{_units(world_size, gpu)}, {promise} not applied{at}")
        else:  # records that failed before the stack proved any layout
            parts.append(f"{_units(world_size, gpu)}, {promise} not shown by any record")
    return "; ".join(parts)


def layout_evidence(views: Iterable[ArchView], layout: str) -> list[Evidence]:
    """The records of every view's cells of one layout."""
    return [e for v in views for c in v.cells if c.cell.layout == layout for e in c.evidence]


def promise_head(title: str, views: Iterable[ArchView], layout: str, promise: str) -> str:
    """A column head: its title and what the records of that layout ran, e.g.
    'FSDP2 with SFT / PEFT (2 CPU ranks, FSDP2 applied)'."""
    return f"{title} ({ran_on(layout_evidence(views, layout), promise, layout)})"


def llm_header(views: list[ArchView]) -> tuple[str, ...]:
    """llm.md's (and a stack page's) table head, its verdict column naming what its records ran."""
    from harness.report.llm_table import HEADER, VERDICT_LAYOUT

    title = HEADER[3]
    return (*HEADER[:3], promise_head(title, views, VERDICT_LAYOUT, "FSDP2"), *HEADER[4:])
