"""Published resource claims (matrix `claims`, e.g. seed 003's "LoRA: 1x 80GB GPU") against
real-shape measurements.

A claim is only as good as the measurement that can speak for it, so the verdict is one of:
- "holds": the cell ran to completion on as many GPUs as the claim names, and its peak memory
  (what the allocator reserved) is within the claimed per-GPU memory;
- "does not hold": it ran but needed more than the claimed memory per GPU, or it ran out of
  memory on a GPU that has no more than the claimed memory;
- "unverified": anything else, with the reason: the claim needs more GPUs (and so TP/EP/PP)
  than the measurement had, no real config in the matrix measures its model, no record, or the
  cell failed for another reason (or ran out of memory on a smaller GPU).
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.spec.matrix import Claim, Matrix

GIB = 1 << 30
HOLDS, FAILS, UNVERIFIED = "holds", "does not hold", "unverified"


@dataclass(frozen=True)
class ClaimVerdict:
    claim: str
    model: str
    method: str
    claimed: str  # e.g. "1x 79.6 GiB, TP 1, PP 1"
    verdict: str
    reason: str
    measured_peak_gib: float | None = None
    device: str | None = None


def claimed_text(claim: Claim) -> str:
    dims = [(k.upper(), getattr(claim, k)) for k in ("tp", "pp", "ep")]
    parallel = ", ".join(f"{name} {size}" for name, size in dims if size > 1)
    return f"{claim.gpus}x {claim.gpu_memory_gib:g} GiB" + (f", {parallel}" if parallel else "")


def claims_for(matrix: Matrix, shape: str, method: str) -> list[Claim]:
    return [c for _, c in sorted(matrix.claims.items()) if c.shape == shape and c.method == method]


def evaluate(claim: Claim, *, status: str | None, category: str | None, peak_bytes: int | None,
             device_name: str | None, device_count: int, device_total_bytes: int | None) -> ClaimVerdict:
    """The verdict on one claim from one real-shape measurement (status None: no record)."""
    def verdict(kind: str, reason: str, peak: int | None = None) -> ClaimVerdict:
        return ClaimVerdict(claim.name, claim.model, claim.method, claimed_text(claim), kind, reason,
                            None if peak is None else round(peak / GIB, 2), device_name)

    if claim.shape is None:
        return verdict(UNVERIFIED, "no real config for this model in the matrix (real_shapes)")
    if claim.gpus > device_count:
        return verdict(UNVERIFIED, f"needs {claim.gpus} GPUs ({claimed_text(claim)}); the measurement "
                                   f"ran on {device_count}")
    if status is None:
        return verdict(UNVERIFIED, f"no real-shape record of {claim.shape} with {claim.method}")
    budget = claim.gpu_memory_gib * GIB
    if status == "pass" and peak_bytes is not None:
        gib = peak_bytes / GIB
        if peak_bytes <= budget:
            return verdict(HOLDS, f"peak {gib:.1f} GiB <= {claim.gpu_memory_gib:g} GiB on {device_name}",
                           peak_bytes)
        return verdict(FAILS, f"peak {gib:.1f} GiB > {claim.gpu_memory_gib:g} GiB per GPU", peak_bytes)
    if status == "fail" and category == "oom" and device_total_bytes is not None:
        total = device_total_bytes / GIB
        if device_total_bytes <= budget * 1.01:
            return verdict(FAILS, f"out of memory on {device_name} ({total:.1f} GiB), no larger than the "
                                  f"claimed {claim.gpu_memory_gib:g} GiB")
        return verdict(FAILS, f"out of memory on {device_name} ({total:.1f} GiB), more than the claimed "
                              f"{claim.gpu_memory_gib:g} GiB")
    if status == "pass":
        return verdict(UNVERIFIED, f"no GPU memory measurement (ran on {device_name})")
    return verdict(UNVERIFIED, f"the measurement did not finish ({status}: {category})")
