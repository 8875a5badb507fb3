"""GPU leases: processes on one host (pytest-xdist workers, parallel CI jobs) share its GPUs safely.

A lease is one file lock per GPU, held for as long as the GPUs are in use. Locks live in a
directory under the system temp dir that every process on the host agrees on (override with
COMPAT_HARNESS_GPU_LOCK_DIR), keyed by the GPU's physical id, so two processes never hand the
same GPU to a rank. A request for N GPUs is all-or-nothing: take what is free without waiting,
and if that is fewer than N give it all back and retry later. Nobody holds some GPUs while
waiting for more, so two xdist workers that each want two GPUs cannot deadlock.

Nothing here initialises CUDA: the GPUs are counted from CUDA_VISIBLE_DEVICES or through
`torch.cuda.device_count()`, which asks NVML and creates no context.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from filelock import FileLock, Timeout


def cuda_device_count() -> int:
    """The GPUs torch sees here (0 on a CPU build)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def lock_dir() -> Path:
    env = os.environ.get("COMPAT_HARNESS_GPU_LOCK_DIR")
    directory = Path(env) if env else Path(tempfile.gettempdir()) / f"compat-harness-gpus-{os.getuid()}"
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def physical_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES spells them (index or UUID)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def _xdist_index() -> int:
    """gw3 -> 3; 0 outside xdist. Workers start looking at different GPUs to contend less."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    digits = worker.removeprefix("gw")
    return int(digits) if digits.isdigit() else 0


class GpuLease:
    """GPUs held by this process; `devices` is the CUDA_VISIBLE_DEVICES value for its ranks."""

    def __init__(self, devices: list[str], locks: list[FileLock]):
        self.devices = devices
        self._locks = locks

    @property
    def visible_devices(self) -> str:
        return ",".join(self.devices)

    def release(self) -> None:
        for lock in self._locks:
            lock.release(force=True)
        self._locks = []

    def __enter__(self) -> GpuLease:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def lease_gpus(count: int, timeout_s: float | None = None, poll_s: float = 0.5) -> GpuLease:
    """Hold `count` GPUs of this host, waiting (up to `timeout_s`, None: forever) until they are free."""
    gpus = physical_gpus()
    if count > len(gpus):
        raise RuntimeError(f"asked for {count} GPUs, this process sees {len(gpus)}: {gpus}")
    start = (_xdist_index() * count) % len(gpus)
    order = gpus[start:] + gpus[:start]
    directory = lock_dir()
    holder = f"pid {os.getpid()} xdist {os.environ.get('PYTEST_XDIST_WORKER', '-')}"
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        held: list[tuple[str, FileLock]] = []
        for gpu in order:
            lock = FileLock(str(directory / f"gpu-{gpu}.lock"))
            try:
                lock.acquire(timeout=0)
            except Timeout:
                continue
            held.append((gpu, lock))
            if len(held) == count:
                for g, _ in held:
                    (directory / f"gpu-{g}.holder").write_text(holder)
                return GpuLease([g for g, _ in held], [lk for _, lk in held])
        for _, lock in held:
            lock.release(force=True)
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"could not lease {count} of the GPUs {gpus} within {timeout_s} s "
                               f"(locks in {directory})")
        time.sleep(poll_s)
