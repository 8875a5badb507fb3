"""What the persistent rank pool saves: the same tiny FSDP2 cells, warm pool vs one torchrun each.

    python benchmarks/pool_vs_torchrun.py [--device cpu|cuda] [--world-size 2] [--steps 5]

Each cell (architecture x method, tiny tier, fsdp2 layout) runs
`harness.stacks.native.stack.fixed_batch_fit_task`
once through the warm pool and once as its own `torchrun --standalone` job, which pays the
interpreter start, the torch imports and the process-group rendezvous every time. Printed per
cell: wall time both ways, the task's own time measured inside the ranks (load + train; in a
torchrun job it also pays the first import of transformers and peft), the overhead (wall minus
task) and the ratio of the walls. The pool's one-off start (spawn, imports, rendezvous) is
printed separately: it is paid once per pytest process, not once per cell.
"""

from __future__ import annotations

import argparse
import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def timed_task(payload: dict, ctx) -> dict:
    """fixed_batch_fit_task, plus the time it took inside the rank."""
    from harness.stacks.native.stack import fixed_batch_fit_task

    start = time.perf_counter()
    out = fixed_batch_fit_task(payload, ctx)
    return {"task_s": time.perf_counter() - start, "losses": out["losses"]}


def cells(world_size: int, steps: int, device: str) -> list[tuple[str, dict]]:
    from harness.ckpt.tiny import tiny_checkpoint
    from harness.spec.load import load_matrix
    from harness.spec.matrix import Layout

    matrix = load_matrix()
    layout = Layout("fsdp2", "FSDP2", world_size, {"dp_shard": world_size}, apis=("fully_shard",))
    out = []
    for name in ("LlamaForCausalLM", "Qwen3ForCausalLM"):
        arch = matrix.architectures[name]
        for method in ("sft", "lora"):
            out.append((f"{name}-{method}-fsdp2", {
                "arch": arch, "method": matrix.methods[method], "layout": layout, "apis": matrix.apis,
                "path": str(tiny_checkpoint(arch, matrix)), "dtype": "float32", "steps": steps,
                "batch_size": world_size, "seq_len": 32, "device": device,
            }))
    return out


def torchrun_worker(payload_file: str, result_file: str) -> None:
    """One rank of a torchrun job: init the process group, run the cell, rank 0 writes the result."""
    import torch
    import torch.distributed as dist

    from harness.run.ranks import RankContext

    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    payload = pickle.loads(Path(payload_file).read_bytes())
    if payload["device"] == "cuda":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        device, backend = torch.device("cuda", int(os.environ["LOCAL_RANK"])), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    dist.init_process_group(backend)
    result = timed_task(payload, RankContext(rank, world_size, device, backend))
    if rank == 0:
        Path(result_file).write_bytes(pickle.dumps(result))
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--world-size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()

    from harness.run.pool import PRELOAD, RankPool

    work = Path(tempfile.mkdtemp(prefix="pool-bench-"))
    os.environ.setdefault("COMPAT_HARNESS_CACHE", str(work / "cache"))
    todo = cells(args.world_size, args.steps, args.device)

    pool = RankPool(args.world_size, args.device, preload=PRELOAD)
    start = time.perf_counter()
    pool.start()
    pool_start_s = time.perf_counter() - start
    rows = []
    for name, payload in todo:
        start = time.perf_counter()
        pooled = pool.run(f"{Path(__file__).stem}:timed_task", payload, timeout_s=300)[0]
        pool_wall = time.perf_counter() - start

        payload_file, result_file = work / f"{name}.in", work / f"{name}.out"
        payload_file.write_bytes(pickle.dumps(payload))
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{Path(__file__).parent}:{ROOT}"}
        start = time.perf_counter()
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc_per_node={args.world_size}", __file__, "--worker", str(payload_file),
                   str(result_file)]
        subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        run_wall = time.perf_counter() - start
        fresh = pickle.loads(result_file.read_bytes())
        assert fresh["losses"] == pooled["losses"], f"{name}: pool and torchrun disagree"
        rows.append((name, pool_wall, pooled["task_s"], run_wall, fresh["task_s"]))
    pool.close()

    print(f"device {args.device}, {args.world_size} ranks, {args.steps} steps; "
          f"pool start (once): {pool_start_s:.2f} s")
    print(f"{'cell':34} {'pool wall':>9} {'overhead':>9} {'torchrun':>9} {'overhead':>9} {'ratio':>6}")
    for name, pool_wall, pool_task, run_wall, run_task in rows:
        print(f"{name:34} {pool_wall:9.2f} {pool_wall - pool_task:9.2f} {run_wall:9.2f} "
              f"{run_wall - run_task:9.2f} {run_wall / pool_wall:6.1f}x")
    pool_total = sum(r[1] for r in rows)
    run_total = sum(r[3] for r in rows)
    print(f"{'total':34} {pool_total:9.2f} {'':9} {run_total:9.2f} {'':9} {run_total / pool_total:6.1f}x"
          f"  (with the pool's start: {run_total / (pool_total + pool_start_s):.1f}x)")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        torchrun_worker(sys.argv[2], sys.argv[3])
    else:
        main()
