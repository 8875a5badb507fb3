"""Column heads say what the records ran (harness/report/headings.py)."""

from __future__ import annotations

from harness.report.headings import ran_on
from harness.report.releases import Release
from harness.report.views import Evidence


def evidence(status: str, world_size: int, where: str, layout_kind: str | None = None,
             category: str | None = None) -> Evidence:
    return Evidence(cell_id="X-sft-fsdp2-tiny-train", method="sft", layout="fsdp2", tier="tiny",
                    check="train", shape="", variant="", where=where, where_short=where, status=status,
                    category=category, message="", run_id="r", timestamp="2026-12-07T00:00:00",
                    release=Release("5.25.0", "0.21.2"),
                    torch="2.13", device_name=where, device_count=world_size, backend=None, git_sha="0" * 40,
                    metrics={"layout_kind": layout_kind} if layout_kind else {}, world_size=world_size)


def test_world_size_place_and_whether_the_layout_was_applied():
    assert ran_on([], "FSDP2", "fsdp2") == "no record yet"
    assert ran_on([evidence("skip", 2, "cpu")], "FSDP2", "fsdp2") == "no record yet"
    assert ran_on([evidence("pass", 1, "NVIDIA H200", "single")], "FSDP2", "fsdp2") == \
        "1 GPU, FSDP2 not applied at world size 1"
    assert ran_on([evidence("pass", 2, "cpu", "fsdp2"), evidence("fail", 8, "NVIDIA H100", "fsdp2")],
                  "FSDP2", "fsdp2") == "2 CPU ranks; 8 GPUs"
    assert ran_on([evidence("fail", 2, "cpu", category="layout-not-applied")], "FSDP2", "fsdp2") == \
        "2 CPU ranks, FSDP2 not applied"
    assert ran_on([evidence("fail", 2, "cpu", category="error")], "FSDP2", "fsdp2") == \
        "2 CPU ranks, FSDP2 not shown by any record"
