"""What this machine can run: a cell whose devices are not here skips, it does not fail."""

from __future__ import annotations

from harness.run.devices import cuda_device_count
from harness.run.rendezvous import RendezvousError, capacity, placement


def missing_devices(device: str, world_size: int) -> str | None:
    """Why a cell needing `world_size` ranks on `device` cannot run here, or None.

    CPU ranks are always available (gloo runs any number of them on one host).
    """
    if device == "cpu":
        return None
    have = cuda_device_count()
    if have == 0:
        return "no CUDA device on this machine: run on a GPU host, or select cpu cells (-m cpu)"
    if have < world_size:
        # A rendezvous over several hosts (COMPAT_HARNESS_RDZV) gives a pool more GPUs than this one.
        try:
            total = capacity("cuda")
            if total is not None and world_size <= total:
                placement(world_size, "cuda")  # the ranks must also split evenly over the nodes
                return None
        except RendezvousError as exc:
            return f"needs {world_size} GPUs, this machine has {have}: {exc}"
        return f"needs {world_size} GPUs, this machine has {have}" + (
            f" and the rendezvous {total}" if total is not None else "")
    return None
