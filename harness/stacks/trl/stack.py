"""The TRL stack as the seam sees it (harness/stacks/base.py): TRL's SFTTrainer, as users run it.

`place` builds the SFTTrainer for the cell: the model from its path (SFTTrainer loads it, with
the layout's `model_init_kwargs`), LoRA through `peft_config=LoraConfig(...)` with the matrix's
settings, the cell's global batches as a pre-tokenised dataset, the tokenizer saved beside the
checkpoint as its processing class. The trainer owns its data, so the request carries the
schedule (`PlaceRequest.schedule`). `fit` calls `trainer.train()`; the losses and gradient
norms come from `trainer.state.log_history`.

Once the trainer has prepared the model (the first step begins), a callback proves the layout
(harness/stacks/proof.py): the model that trains must be laid out as the cell asked, whatever
the trainer says. Otherwise the cell fails as `layout-not-applied` with what ran instead.

Saving is the trainer's own `save_model` (the adapter for LoRA, the whole model for SFT);
loading back is plain transformers and peft on one device, as a user loads what TRL wrote.
"""

from __future__ import annotations

import tempfile
import time
from collections import OrderedDict
from collections.abc import Generator, Mapping
from pathlib import Path

import torch
from transformers import AutoTokenizer, TrainerCallback

from harness.ckpt.atomic import atomic_directory, collective_atomic_directory, verify
from harness.ckpt.implementations import trust_remote_code
from harness.ckpt.loading import fresh_remote_modules, require_initialised, unfilled_memory_reads_nan
from harness.failures import CellFailure
from harness.stacks.base import PlaceRequest, Schedule
from harness.stacks.method_settings import lora_settings, sft_frozen
from harness.stacks.placed import DataParallel, Placed, Trainable, base_model
from harness.stacks.proof import layout_kind, prove_layout
from harness.stacks.reload import PlainReload
from harness.stacks.result import TrainResult
from harness.stacks.trl import config, data


class TrlStack(PlainReload):
    """TRL's SFTTrainer: Accelerate prepares the layout, peft's LoRA through peft_config."""

    name = "trl"
    own_trainer = True
    exact_reload = True
    # TRL makes its own choices (its optimizer, its grad clipping): none of the matrix's apply.
    choice_defaults: Mapping[str, str] = {}

    # A cell places at most three models (parity: the layout's and one device's; a round trip:
    # the trained one and a fresh one); older trainers are let go, so that a pytest worker or a
    # pool rank that runs hundreds of cells does not keep their models and optimizers.
    KEPT_TRAINERS = 4

    def __init__(self) -> None:
        # id(model) -> its trainer, newest last: the seam passes models, TRL saves through the trainer.
        self._trainers: OrderedDict[int, object] = OrderedDict()

    # --- placing: build the trainer ------------------------------------------------------------

    def place(self, request: PlaceRequest) -> Placed:
        from peft import LoraConfig
        from trl import SFTConfig, SFTTrainer

        schedule = request.schedule
        if schedule is None:
            raise ValueError(
                "the TRL stack builds its trainer around the cell's data: the request must carry its schedule"
            )
        global_batch = int(schedule.batches[0]["input_ids"].shape[0])
        dataset, completion_only = data.dataset(schedule.batches, schedule.steps)
        output = Path(request.scratch) / "trl-output" if request.scratch else Path(tempfile.mkdtemp())
        kwargs, call = config.sft_config_kwargs(
            request.layout,
            dtype=request.dtype,
            lr=schedule.lr,
            steps=schedule.steps,
            global_batch=global_batch,
            device=request.device.type if hasattr(request.device, "type") else str(request.device),
            output_dir=str(output),
            completion_only=completion_only,
            trust_remote_code=trust_remote_code(request.arch),
        )
        peft_config = (
            LoraConfig(**lora_settings(request.arch, request.method)) if request.method.is_lora else None
        )
        # text-only training: the checkpoint's tokenizer is the processing class (for a VLM row TRL
        # would otherwise load its image processor, which text never needs)
        tokenizer = AutoTokenizer.from_pretrained(request.checkpoint,
                                                  trust_remote_code=trust_remote_code(request.arch))
        torch.manual_seed(config.SEED)

        def build_trainer():
            try:
                return SFTTrainer(
                    model=str(request.checkpoint),
                    args=SFTConfig(**kwargs),
                    train_dataset=dataset,
                    processing_class=tokenizer,
                    peft_config=peft_config,
                )
            except ValueError as exc:
                if peft_config is not None and "target modules" in str(exc).lower():
                    raise CellFailure("peft-unsupported", f"{type(exc).__name__}: {exc}") from exc
                raise

        # SFTTrainer loads the checkpoint itself: the same fresh code namespace, and the same scan
        remote = trust_remote_code(request.arch)
        if remote:
            fresh_remote_modules()
        with unfilled_memory_reads_nan():
            trainer = build_trainer()
        model = require_initialised(trainer.model, request.arch.name,
                                    f"after SFTTrainer loaded {request.checkpoint}")
        if not request.method.is_lora:  # what text cannot reach stays frozen, as a user's script would
            for name, param in model.named_parameters():
                if sft_frozen(name, request.arch):
                    param.requires_grad_(False)
        trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
        lora = sorted(
            {n.split(".lora_")[0].removeprefix("base_model.model.") for n in trainable if ".lora_" in n}
        )
        if request.method.is_lora and not lora:
            raise CellFailure(
                "peft-unsupported", f"TRL's peft_config wrapped no module of {type(model).__name__}"
            )
        dp_size = config.data_parallel_size(request.layout)
        dp = DataParallel(rank=(request.ctx.rank if request.ctx is not None else 0) % dp_size, size=dp_size)
        placed = Placed(
            model,
            Trainable(model, trainable, frozen, lora),
            layout_kind(request.layout),
            api="sft_trainer",
            call=call,
            dp=dp,
            moe=request.arch.moe,
            shard_group=None,
            notes=[f"trl {_version('trl')}, accelerate {_version('accelerate')}"],
        )
        trainer.add_callback(_Watch(trainer, request, placed))
        self._trainers[id(model)] = trainer
        while len(self._trainers) > self.KEPT_TRAINERS:
            self._trainers.popitem(last=False)
        return placed

    # --- training ------------------------------------------------------------------------------

    def fit(self, placed: Placed, schedule: Schedule) -> TrainResult:
        trainer = self._trainers[id(placed.model)]
        watch = next(cb for cb in trainer.callback_handler.callbacks if isinstance(cb, _Watch))
        trainer.train()
        history = [entry for entry in trainer.state.log_history if "loss" in entry and "step" in entry]
        losses = [float(entry["loss"]) for entry in history]
        norms = [float(entry.get("grad_norm", float("nan"))) for entry in history]
        if len(losses) != schedule.steps:
            raise CellFailure(
                "check-failed",
                f"SFTTrainer logged {len(losses)} losses for {schedule.steps} "
                f"steps: {trainer.state.log_history}",
            )
        tokens = int(schedule.batches[0]["input_ids"].numel())
        return TrainResult(
            losses, norms, watch.step_times, tokens, extra={"step_grads": watch.grads} if watch.grads else {}
        )

    def steps(self, placed: Placed, schedule: Schedule) -> Generator[int, None, TrainResult]:
        """The trainer runs its own loop: the whole run happens first, then one yield per step."""
        result = self.fit(placed, schedule)
        yield from range(len(result.losses))
        return result

    def eval_loss(self, placed: Placed, batch: dict, per_sequence: bool = False) -> float:
        trainer = self._trainers[id(placed.model)]
        return float(trainer.evaluate(eval_dataset=data.dataset([batch], 1)[0])["eval_loss"])

    # --- saving and loading: the trainer's save, plain libraries to load -----------------------

    def _save(self, model, target: Path) -> None:
        """The trainer's save_model (every rank calls it under a layout: it gathers the shards), into
        a directory that appears whole or not at all; a model without a trainer saves itself."""
        import torch.distributed as dist

        trainer = self._trainers.get(id(model))
        distributed = dist.is_available() and dist.is_initialized() and trainer is not None
        with (collective_atomic_directory if distributed else atomic_directory)(target) as staging:
            if trainer is not None:
                trainer.save_model(str(staging))
            else:
                model.save_pretrained(staging)

    def save_pretrained(self, model, target: Path, max_shard_size: str) -> None:
        self._save(model, target)

    def save_adapter(self, model, target: Path) -> None:
        self._save(model, target)

    def save_sharded(self, model, target: Path) -> None:
        """TRL has one save for a trained model, sharded or not: the trainer's save_model."""
        self._save(model, target)

    def load_sharded(self, model, source: Path, collective: bool = True) -> None:
        """What save_model wrote, read with plain from_pretrained of the model's own class (which
        applies the release's checkpoint key conversions), then set into `model` with torch's
        full-state-dict loader, which reshards into the model's own layout."""
        verify(source)
        base = base_model(model)
        own = next(cls for cls in type(base).__mro__ if "FSDP" not in cls.__name__)
        try:
            saved = own.from_pretrained(source, dtype=next(base.parameters()).dtype)
        except Exception as exc:  # noqa: BLE001 - the verdict is the loader's own message
            raise CellFailure("check-failed", f"from_pretrained of what SFTTrainer saved failed: "
                                              f"{type(exc).__name__}: {exc}") from exc
        self.set_full_state(model, saved.state_dict())

    def set_full_state(self, model, state: dict) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        result = set_model_state_dict(
            model, state, options=StateDictOptions(full_state_dict=True, strict=False)
        )
        missing = [k for k in result.missing_keys if k not in tied_names(model)]
        if missing or result.unexpected_keys:
            raise CellFailure(
                "check-failed",
                f"what SFTTrainer saved does not fit the model: missing "
                f"{missing[:5]}, unexpected {list(result.unexpected_keys)[:5]}",
            )

    def align_for_parity(self, placed: Placed, request: PlaceRequest) -> dict:
        """TRL's own defaults on both sides: nothing is aligned by hand."""
        return {}

    def measure_real_shape(self, cr) -> tuple[dict, TrainResult]:
        raise CellFailure("layout-unsupported", "the TRL stack has no real-shape measurement")


def tied_names(model) -> set[str]:
    """Parameter names that share storage with an earlier one (a tied output embedding)."""
    seen, tied = {}, set()
    for name, param in model.named_parameters(remove_duplicate=False):
        key = id(param)
        if key in seen:
            tied.add(name)
        seen.setdefault(key, name)
    return tied


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


class _Watch(TrainerCallback):
    """Proves the layout at the first step, times steps, and (for parity) keeps every step's whole
    gradients before the optimizer steps (after TRL's clipping, as the optimizer sees them)."""

    def __init__(self, trainer, request: PlaceRequest, placed: Placed):
        self.trainer, self.request, self.placed = trainer, request, placed
        self.step_times: list[float] = []
        self.grads: list[dict] = []
        self._start = 0.0
        self.keep_grads = request.keep_grads

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == 0 and not self.placed.proof:
            trainer = self.trainer
            ran = f"Accelerate {trainer.accelerator.distributed_type.value}"
            self.placed.model = trainer.model
            self.placed.proof = prove_layout(
                self.request.layout,
                trainer.model,
                wrapper=trainer.model_wrapped,
                global_shapes=self.placed.global_shapes,
                ran=ran,
            )
            self.placed.proof["accelerate_distributed_type"] = trainer.accelerator.distributed_type.value
        self._start = time.perf_counter()

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if self.keep_grads:
            self.grads.append(self.placed.global_grads())

    def on_step_end(self, args, state, control, **kwargs):
        self.step_times.append(time.perf_counter() - self._start)
