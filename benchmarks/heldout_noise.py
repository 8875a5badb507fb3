"""How far the real tier's held-out loss moves from one step to the next: the basis of `heldout_fall_min`.

    PYTHONPATH=$PWD python benchmarks/heldout_noise.py [--arch LlamaForCausalLM] [--methods sft,lora]

For each method, on one device: the row's real checkpoint is trained for the tier's steps on its
QA text (the `train` check's own loop), and the held-out loss is evaluated before every step and
after the last. Printed: the curve, each step's relative change, their spread, and the fall over
the whole run. The train check requires the whole run's fall to be at least the tier's
`heldout_fall_min`; this shows how large a fall single steps give by chance.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def heldout_curve(arch: str, method: str) -> list[float]:
    from harness.cellrun import CellRun
    from harness.data import text as realtext
    from harness.spec.cells import Cell
    from harness.spec.load import load_matrix

    matrix = load_matrix()
    cr = CellRun(matrix, Cell(arch, method, "single", "real", "train"), "cpu")
    placed = cr.place()
    heldout = realtext.heldout_batch(cr)
    def heldout_loss() -> float:
        return cr.stack.eval_loss(placed, heldout, cr.per_sequence)

    steps = cr.steps(placed, realtext.train_batches(cr))
    curve = [heldout_loss()]
    next(steps)  # the first step's backward: the loop yields before each optimizer step
    while True:
        try:
            next(steps)  # the previous step's update, then this step's backward
        except StopIteration:
            curve.append(heldout_loss())
            return curve
        curve.append(heldout_loss())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="LlamaForCausalLM")
    parser.add_argument("--methods", default="sft,lora")
    args = parser.parse_args()
    for method in args.methods.split(","):
        curve = heldout_curve(args.arch, method)
        steps = [(b - a) / a for a, b in zip(curve, curve[1:], strict=False)]
        fall = (curve[0] - curve[-1]) / curve[0]
        print(f"{args.arch} {method}: held-out loss {' '.join(f'{x:.4f}' for x in curve)}")
        print(f"  per-step relative change: mean {statistics.mean(steps):+.4%}, "
              f"std {statistics.stdev(steps):.4%}, largest rise {max(steps):+.4%}, "
              f"largest fall {min(steps):+.4%}; rises {sum(s > 0 for s in steps)} of {len(steps)}")
        print(f"  whole run: {curve[0]:.4f} -> {curve[-1]:.4f}, a fall of {fall:.2%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
