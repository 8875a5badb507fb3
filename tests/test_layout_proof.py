"""The layout proof (harness/stacks/proof.py): a stack's word that it applied a layout is not enough.

Real tiny models on gloo ranks: a planted stack that reports FSDP2 while DistributedDataParallel
trains fails its cell as `layout-not-applied`, naming what ran; the native stack's own placement
of the same cell carries the evidence of FSDP2 in its record.
"""

from __future__ import annotations

import pytest

from harness.spec.load import load_matrix
from harness.stacks.proof import LayoutEvidence, missing_parts
from tests.test_parallel import _run

MATRIX = load_matrix()


def test_a_stack_that_claims_fsdp2_but_runs_ddp_is_layout_not_applied():
    out = _run(
        2, "planted_ddp_claims_fsdp2", {"arch": "LlamaForCausalLM", "method": "lora", "layout": "fsdp2"}
    )
    for rank in out:
        assert rank["category"] == "layout-not-applied"
        assert "DistributedDataParallel around the model" in rank["message"]
        assert "asks for FSDP2 over 2 ranks" in rank["message"]
        proof = rank["native_proof"]["layout_proof"]
        assert proof["fsdp_modules"] > 0 and proof["dtensor_sharded"] == {"2": proof["parameters"]}


@pytest.mark.parametrize(
    ("layout", "evidence", "missing"),
    [
        ("single", LayoutEvidence(parameters=3, sharded_on_size={}), []),
        (
            "single",
            LayoutEvidence(parameters=3, fsdp_modules=1, sharded_on_size={2: 3}),
            ["an unsharded model"],
        ),
        (
            "fsdp2",
            LayoutEvidence(parameters=3, sharded_on_size={}, wrapper="DistributedDataParallel"),
            ["FSDP2"],
        ),
        ("fsdp2", LayoutEvidence(parameters=3, fsdp_modules=2, sharded_on_size={2: 3}), []),
        # FSDP2 alone on a 2x2 mesh shards every parameter once: TP did not happen
        (
            "fsdp2_tp",
            LayoutEvidence(parameters=3, fsdp_modules=2, sharded_on_size={2: 3}),
            ["tensor-parallel"],
        ),
        (
            "fsdp2_tp",
            LayoutEvidence(parameters=3, fsdp_modules=2, sharded_on_size={2: 3}, sharded_twice=2),
            [],
        ),
        ("tp", LayoutEvidence(parameters=3, sharded_on_size={}, plain_splits=2), []),
        ("tp", LayoutEvidence(parameters=3, sharded_on_size={}), ["tensor-parallel"]),
        ("ep", LayoutEvidence(parameters=3, fsdp_modules=2, sharded_on_size={2: 3}), ["experts split"]),
        ("ep", LayoutEvidence(parameters=3, sharded_on_size={2: 1}, expert_splits=1), []),
    ],
)
def test_what_each_layout_asks_of_the_model(layout, evidence, missing):
    found = missing_parts(MATRIX.layouts[layout], evidence)
    assert len(found) == len(missing) and all(want in got for want, got in zip(missing, found, strict=True))
