"""What the TRL stack asks of SFTTrainer: the SFTConfig and model_init_kwargs of a cell, as data.

Everything a layout needs goes through TRL's and Accelerate's own options, the way their docs
show it, so that the cell runs what a user's script would:
- FSDP2: `fsdp` with `fsdp_config` version 2 (transformers' TrainingArguments; Accelerate applies
  fully_shard when the trainer prepares the model);
- TP: the model loaded with its own TP plan at the layout's TP size, through `model_init_kwargs`
  (SFTTrainer loads the model from its path): `distributed_config=DistributedConfig(tp_size=N)`,
  as from_pretrained documents it since DistributedConfig took sizes, else `tp_plan="auto"`;
- EP: the model loaded with `distributed_config=DistributedConfig(enable_expert_parallel=True)`.
The spelling of the FSDP options follows the installed transformers: since 5.2x `fsdp` is a bool
and the version key is `version`; before, `fsdp` took "full_shard auto_wrap" and the key was
`fsdp_version`. The record names the options that ran (`api_call`).

The training itself is the tier's: constant learning rate, `max_steps`, a log line every step
(the losses are read from `trainer.state.log_history`), no saving, no reporting, a fixed seed,
sequential sampling where the release offers it (so that the layout and one device see the same
batches in the same order), and the tier's dtype as the training precision (TRL's default is bf16
mixed precision, which would train a float32 tier in bf16). Everything else is TRL's default
(AdamW, max_grad_norm 1.0, gradient checkpointing).
"""

from __future__ import annotations

import dataclasses

from harness.spec.matrix import Layout
from harness.stacks.proof import mesh_of

SEED = 0


def _has_field(cls, name: str) -> bool:
    """Whether the installed release's dataclass (TrainingArguments, DistributedConfig) takes `name`."""
    return name in {f.name for f in dataclasses.fields(cls)}


def data_parallel_size(layout: Layout) -> int:
    """How many ranks split each global batch: FSDP's ranks (TP and EP ranks see the same data)."""
    return mesh_of(layout).get("dp_shard", 1)


def fsdp_options(training_args_cls) -> dict:
    """FSDP2 as the installed TrainingArguments documents it (its `fsdp` field's help says which)."""
    found = {f.name: f for f in dataclasses.fields(training_args_cls)}["fsdp"]
    if "fsdp=True" in str(found.metadata.get("help", "")):
        return {"fsdp": True, "fsdp_config": {"version": 2}}
    return {"fsdp": "full_shard auto_wrap", "fsdp_config": {"fsdp_version": 2}}


def model_init_kwargs(layout: Layout, dtype: str, trust_remote_code: bool = False) -> tuple[dict, str]:
    """from_pretrained's arguments for the layout, and how the record spells them. A remote-code
    row under the run's opt-in (harness/ckpt/implementations.py) is loaded trusting its code, as
    every other loading call of the cell does."""
    mesh = mesh_of(layout)
    kwargs: dict = {"dtype": dtype}
    spelled = [f'dtype="{dtype}"']
    if trust_remote_code:
        kwargs["trust_remote_code"] = True
        spelled.append("trust_remote_code=True")
    if "tp" in mesh:
        from transformers.distributed import DistributedConfig

        # the model's own TP plan at the layout's TP size: DistributedConfig(tp_size=N) where the
        # release documents it, else the older from_pretrained(tp_plan="auto") over every rank
        if _has_field(DistributedConfig, "tp_size"):
            # its mesh must cover every rank: the FSDP ranks too, where the layout has them
            sizes = {"tp_size": mesh["tp"], **({"fsdp_size": mesh["dp_shard"]} if "dp_shard" in mesh else {})}
            kwargs["distributed_config"] = DistributedConfig(**sizes)
            spelled.append("distributed_config=DistributedConfig("
                           + ", ".join(f"{k}={v}" for k, v in sizes.items()) + ")")
        else:
            kwargs["tp_plan"] = "auto"
            spelled.append('tp_plan="auto"')
    if "ep" in mesh:
        from transformers.distributed import DistributedConfig

        # the release's own EP argument: a size where DistributedConfig takes one, else the flag
        if _has_field(DistributedConfig, "ep_size"):
            # transformers asks ep_size to divide fsdp_size x tp_size: EP over the FSDP ranks
            kwargs["distributed_config"] = DistributedConfig(ep_size=mesh["ep"], fsdp_size=mesh["ep"])
            spelled.append(
                f"distributed_config=DistributedConfig(ep_size={mesh['ep']}, fsdp_size={mesh['ep']})"
            )
        else:
            kwargs["distributed_config"] = DistributedConfig(enable_expert_parallel=True)
            spelled.append("distributed_config=DistributedConfig(enable_expert_parallel=True)")
    return kwargs, ", ".join(spelled)


def sft_config_kwargs(
    layout: Layout,
    *,
    dtype: str,
    lr: float,
    steps: int,
    global_batch: int,
    device: str,
    output_dir: str,
    completion_only: bool,
    trust_remote_code: bool = False,
) -> tuple[dict, str]:
    """SFTConfig's arguments for one cell, and the call as the record quotes it."""
    from transformers import TrainingArguments

    init, init_spelled = model_init_kwargs(layout, dtype, trust_remote_code)
    per_device = global_batch // data_parallel_size(layout)
    kwargs = {
        "output_dir": output_dir,
        "max_steps": steps,
        "learning_rate": lr,
        "lr_scheduler_type": "constant",
        "warmup_steps": 0,
        "per_device_train_batch_size": per_device,
        "gradient_accumulation_steps": 1,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "seed": SEED,
        "data_seed": SEED,
        "use_cpu": device == "cpu",
        "disable_tqdm": True,
        "model_init_kwargs": init,
        "completion_only_loss": completion_only,
        "dataloader_drop_last": False,
        # the tier's dtype is the precision it trains in: TRL's default is bf16 mixed precision,
        # which Accelerate leaves on the model's forward after training
        "bf16": dtype == "bfloat16",
        "fp16": dtype == "float16",
    }
    if _has_field(TrainingArguments, "train_sampling_strategy"):
        kwargs["train_sampling_strategy"] = "sequential"
    spelled = [f"model_init_kwargs=dict({init_spelled})", f"bf16={kwargs['bf16']}"]
    if "dp_shard" in mesh_of(layout):
        options = fsdp_options(TrainingArguments)
        kwargs.update(options)
        spelled += [f"{k}={v!r}" for k, v in options.items()]
    return kwargs, (
        "SFTTrainer(model=path, args=SFTConfig(" + ", ".join(spelled) + "), "
        "processing_class=AutoTokenizer.from_pretrained(path), peft_config=LoraConfig(...) or None)"
    )
