"""The native stack as the seam sees it (harness/stacks/base.py): plain torch + transformers + peft.

Each operation is one call into this package: placement.py applies the layout by its documented
call, the shared loop (harness/stacks/loop.py) trains, saving.py writes and reads checkpoints.
What the script chooses where a user's might differ is read from the matrix's `choices`
(defaults below), never decided here.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from harness.ckpt.implementations import load_config
from harness.data.batches import fixed_batch
from harness.stacks import loop
from harness.stacks.base import PlaceRequest
from harness.stacks.harness_loop import HarnessLoop
from harness.stacks.loop import disable_dropout
from harness.stacks.native import placement, realshape, saving
from harness.stacks.placed import Placed
from harness.stacks.reload import PlainReload
from harness.stacks.result import TrainResult


class NativeStack(HarnessLoop, PlainReload):
    """torch's FSDP2 and DCP, transformers' from_pretrained (TP, EP at load), peft's LoRA."""

    name = "native"
    own_trainer = False
    exact_reload = True
    choice_defaults: Mapping[str, str] = {
        "optimizer_groups": "by_tensor_kind",
        "replicas_outside_fsdp": "average_gradients",
        "parity_dropout": "off",
        "parity_adapter_start": "same_values",
    }

    def place(self, request: PlaceRequest) -> Placed:
        req = placement.Request(request.arch, request.method, request.layout, request.checkpoint,
                                request.dtype, request.ctx, device=request.device, experts=request.experts,
                                replicas=self._choice(request.choices, "replicas_outside_fsdp"))
        return placement.place(req, request.api)

    def save_sharded(self, model, target: Path) -> None:
        saving.save_dcp(model, target)

    def load_sharded(self, model, source: Path, collective: bool = True) -> None:
        saving.load_dcp(model, source, collective)

    def set_full_state(self, model, state: dict) -> None:
        saving.set_full_state(model, state)

    def save_pretrained(self, model, target: Path, max_shard_size: str) -> None:
        saving.export_hf(model, target, max_shard_size)

    def save_adapter(self, model, target: Path) -> None:
        saving.save_adapter(model, target)

    def align_for_parity(self, placed: Placed, request: PlaceRequest) -> dict:
        """Both sides of a parity comparison alike, as the matrix's choices say: dropout, adapter start."""
        notes = {"dropout_disabled": 0}
        if self._choice(request.choices, "parity_dropout") == "off":
            notes["dropout_disabled"] = disable_dropout(placed.model)
        if request.method.is_lora and self._choice(request.choices, "parity_adapter_start") == "same_values":
            notes["adapter_start_skipped"] = placement.same_adapter_start(placed, seed=0)
        return notes

    def measure_real_shape(self, cr) -> tuple[dict, TrainResult]:
        return realshape.measure(cr)



# --- the pool task of the benchmark: one tiny training run under a layout ----------------------

def fixed_batch_fit_task(payload: dict, ctx=None) -> dict:
    """Place by the layout's first offered call and train a few steps on the fixed global batch.

    payload: arch, method, layout, apis (the matrix's), path, dtype, steps, batch_size, seq_len,
    optionally device. Used by benchmarks/pool_vs_torchrun.py; every rank returns the global curve.
    """
    layout = payload["layout"]
    req = placement.Request(payload["arch"], payload["method"], layout, payload["path"], payload["dtype"],
                            ctx, device=payload.get("device", "cpu"))
    placed = placement.place(req, placement.choose_api(payload["apis"], layout))
    vocab = load_config(payload["arch"], payload["path"]).get_text_config().vocab_size
    batch = fixed_batch(vocab, payload["batch_size"], payload["seq_len"])
    optimizer = loop.make_optimizer(placed.model, req.method.lr)
    result = loop.fit(placed.model, batch, optimizer, payload["steps"], placed.dp)
    return {"losses": result.losses, "step_times_s": result.step_times_s, **placed.record}
