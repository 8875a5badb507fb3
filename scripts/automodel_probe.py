"""Probe NeMo AutoModel (nemo-automodel) on a GPU host: load, LoRA, train step, save, reload.

Self-contained (no harness imports). Every step prints OK or the exception and goes on.

    python3 scripts/automodel_probe.py    # one GPU, one process (wheels: scripts/automodel-findings.md)
    torchrun --nproc-per-node 2 scripts/automodel_probe.py  # FSDP2 really shards only when world size > 1

Environment knobs:
    PROBE_DTYPE=bfloat16|float32   model dtype (default bfloat16 on CUDA, float32 on CPU)
    PROBE_VARIANTS=custom,force_hf  which loaders to try (default both)
    PROBE_METHODS=lora,full         LoRA and/or full fine-tuning (default both)
    PROBE_OUT=/tmp/automodel-probe  where checkpoints go
    PROBE_CPU_SHIM=1                CPU-only test: redirect AutoModel's hard-coded cuda device
                                    to CPU (only for trying the probe without a GPU)
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import sys
import time
import traceback

import torch
import torch.distributed as dist

T0 = time.time()
RESULTS: list[tuple[str, str, str]] = []  # (variant, step, "ok"/"FAIL")
RANK = int(os.environ.get("RANK", "0"))
WORLD = int(os.environ.get("WORLD_SIZE", "1"))
LOCAL_RANK = int(os.environ.get("LOCAL_RANK", "0"))
CPU_SHIM = os.environ.get("PROBE_CPU_SHIM") == "1"
OUT = os.environ.get("PROBE_OUT", "/tmp/automodel-probe")
TINY = "/tmp/tiny-llama"


def say(*a):
    if RANK == 0:
        print(*a, flush=True)


def step(variant: str, name: str, fn, *args, **kwargs):
    """Run fn, print its result or its exception; never raise."""
    t = time.time()
    try:
        res = fn(*args, **kwargs)
        say(f"[{variant}] {name}: OK ({time.time() - t:.1f}s) {'' if res is None else _short(res)}")
        RESULTS.append((variant, name, "ok"))
        return res
    except BaseException as e:  # noqa: BLE001 - a probe reports everything
        if isinstance(e, KeyboardInterrupt):
            raise
        tb = traceback.extract_tb(e.__traceback__)
        where = " <- ".join(f"{os.path.basename(f.filename)}:{f.lineno}" for f in tb[-4:][::-1])
        print(f"{'' if RANK == 0 else f'(rank {RANK}) '}[{variant}] {name}: FAIL {type(e).__name__}: "
              f"{str(e)[:800]}\n    at {where}", flush=True)
        if os.environ.get("PROBE_TRACEBACK") == "1":
            traceback.print_exc()
        RESULTS.append((variant, name, "FAIL"))
        return None


def barrier():
    if dist.is_initialized():
        dist.barrier()


def fresh_dir(path):
    """Rank 0 empties path; every rank waits (a checkpoint dir is written by all ranks)."""
    if RANK == 0:
        shutil.rmtree(path, ignore_errors=True)
    barrier()


def on_rank0(fn, *a, **k):
    """Run a check on rank 0 alone (plain transformers/peft reloads); other ranks wait."""
    try:
        return fn(*a, **k) if RANK == 0 else "skipped on this rank"
    finally:
        barrier()


def _short(x):
    if isinstance(x, torch.Tensor):
        return f"tensor{tuple(x.shape)} {x.dtype} absmax={float(x.abs().max()):.4g}"
    if isinstance(x, torch.nn.Module):
        return f"<{type(x).__module__}.{type(x).__name__}>"
    s = repr(x)
    return s if len(s) < 1500 else s[:1500] + "..."


# --- versions ---------------------------------------------------------------------------------
class _pair(tuple):
    def __new__(cls, t):
        return super().__new__(cls, t)

    def __repr__(self):
        return repr(self[1])


def versions():
    import importlib.metadata as md

    out = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda,
           "cuda_available": torch.cuda.is_available(),
           "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    for p in ["nemo-automodel", "transformers", "peft", "accelerate", "torchao", "huggingface-hub",
              "safetensors", "tokenizers", "numpy", "pydantic", "megatron-fsdp", "liger-kernel", "flash-attn",
              "transformer-engine", "triton", "datasets", "torchdata"]:
        try:
            out[p] = md.version(p)
        except md.PackageNotFoundError:
            out[p] = None
    return out


# --- CPU shim (local testing only) ------------------------------------------------------------
class _CudaProxy:
    def __getattr__(self, k):
        return getattr(torch.cuda, k)

    @staticmethod
    def current_device():
        return torch.device("cpu")


class _TorchProxy:
    """AutoModel calls torch.device("cuda", torch.cuda.current_device()) (auto_model.py:498,770)."""

    cuda = _CudaProxy()

    def __getattr__(self, k):
        return getattr(torch, k)

    @staticmethod
    def device(*a, **k):
        if a and isinstance(a[0], str) and a[0].startswith("cuda"):
            return torch.device("cpu")
        return torch.device(*a, **k)


def apply_cpu_shim():
    import nemo_automodel._transformers.auto_model as am

    am.torch = _TorchProxy()
    return "auto_model.torch -> CPU proxy"


# --- setup ------------------------------------------------------------------------------------
def init_dist():
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29533")
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    if dist.is_initialized():
        return "already"
    if torch.cuda.is_available() and not CPU_SHIM:
        torch.cuda.set_device(LOCAL_RANK)
        # "nccl" in the backend string makes AutoModel build a cuda DeviceMesh (mesh_utils.py:127);
        # nemo's own initialize_distributed() swaps in gloo+HashStore at world size 1 (init_utils.py:128).
        backend = "cpu:gloo,cuda:nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=5))
    return f"backend={dist.get_backend()} world={dist.get_world_size()}"


def build_tiny():
    from transformers import LlamaConfig, LlamaForCausalLM

    if RANK == 0:
        torch.manual_seed(0)
        cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                          num_key_value_heads=2, vocab_size=512, max_position_embeddings=128,
                          tie_word_embeddings=False, architectures=["LlamaForCausalLM"])
        m = LlamaForCausalLM(cfg)
        shutil.rmtree(TINY, ignore_errors=True)
        m.save_pretrained(TINY)
    if dist.is_initialized():
        dist.barrier()
    return sorted(os.listdir(TINY))


def fixed_batch(device):
    g = torch.Generator().manual_seed(1234)
    ids = torch.randint(0, 512, (2, 16), generator=g)
    labels = ids.clone()
    labels[:, :4] = -100
    return {"input_ids": ids.to(device), "labels": labels.to(device),
            "attention_mask": torch.ones_like(ids).to(device)}


def model_device():
    if CPU_SHIM or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device())


# --- the sketch -------------------------------------------------------------------------------
def make_setup():
    from nemo_automodel.components.distributed import DistributedSetup, FSDP2Config, ParallelismSizes

    strategy = FSDP2Config()
    if os.environ.get("PROBE_MP") == "fp32":
        # The default mp_policy (bf16 params) also casts FROZEN weights to bf16 under LoRA, even at
        # world size 1 where fully_shard is skipped (infrastructure.py:
        # prepare_frozen_parameters_for_sharding, cast_frozen_modules_to_compute_dtype).
        from torch.distributed.fsdp import MixedPrecisionPolicy

        fp32 = MixedPrecisionPolicy(param_dtype=torch.float32, reduce_dtype=torch.float32)
        strategy = FSDP2Config(mp_policy=fp32)
    setup = DistributedSetup.build(strategy=strategy, parallelism_sizes=ParallelismSizes(), world_size=WORLD)
    mc = setup.mesh_context
    return setup, {"mesh": str(mc.device_mesh), "dp_shard": mc.dp_shard_size, "tp": mc.tp_size,
                   "mp_param_dtype": str(strategy.mp_policy.param_dtype)}


def make_peft():
    from nemo_automodel.components._peft.lora import PeftConfig

    # AutoModel matches the FULL module name (module_matcher.py:157): a bare "q_proj" (peft style)
    # matches nothing and leaves no trainable parameter; "*.q_proj" is the suffix form.
    return PeftConfig(target_modules=["*.q_proj", "*.k_proj", "*.v_proj", "*.o_proj"], dim=8, alpha=16,
                      use_triton=False)


def load(setup, peft_config, force_hf, dtype):
    from nemo_automodel import NeMoAutoModelForCausalLM

    return NeMoAutoModelForCausalLM.from_pretrained(
        TINY,
        distributed_setup=setup,
        peft_config=peft_config,
        force_hf=force_hf,
        dtype=dtype,
        use_liger_kernel=False,
        attn_implementation="sdpa",
    )


def describe(model):
    from torch.distributed.tensor import DTensor

    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:
        FSDPModule = ()  # noqa: N806
    n_fsdp = sum(isinstance(m, FSDPModule) for m in model.modules()) if FSDPModule else -1
    params = list(model.named_parameters())
    n_dt = sum(isinstance(p, DTensor) for _, p in params)
    trainable = [(n, p) for n, p in params if p.requires_grad]
    lora_types = sorted({type(m).__name__ for m in model.modules() if hasattr(m, "lora_A")})
    return {
        "class": f"{type(model).__module__}.{type(model).__name__}",
        "mro": [c.__name__ for c in type(model).__mro__[:5]],
        "fsdp_modules": n_fsdp, "dtensor_params": n_dt, "params": len(params),
        "trainable": len(trainable), "trainable_numel": sum(p.numel() for _, p in trainable),
        "trainable_names": [n for n, _ in trainable][:4],
        "lora_module_types": lora_types,
        "dtypes": sorted({str(p.dtype) for _, p in params}),
        "trainable_dtypes": sorted({str(p.dtype) for _, p in trainable}),
        "devices": sorted({str(p.device) for _, p in params}),
        "attn": getattr(getattr(model, "config", None), "_attn_implementation", None),
    }


def caps(model):
    from nemo_automodel import query_capabilities
    from transformers import AutoConfig

    out = {"config": str(query_capabilities(AutoConfig.from_pretrained(TINY)))}
    try:  # an HF class (force_hf) declares no capabilities: only the config form answers
        out["instance"] = str(query_capabilities(model))
    except Exception as e:  # noqa: BLE001
        out["instance"] = f"{type(e).__name__}: {e}"
    return out


def _loss_from_logits(logits, labels):
    logits = logits.float()[:, :-1].reshape(-1, logits.shape[-1])
    tgt = labels[:, 1:].reshape(-1)
    return torch.nn.functional.cross_entropy(logits, tgt, ignore_index=-100)


def train_steps(model, batch, n=3, lr=1e-2):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)
    model.train()
    losses = []
    for _ in range(n):
        out = model(**batch)
        loss = getattr(out, "loss", None)
        manual = _loss_from_logits(out.logits, batch["labels"])
        if loss is None:
            loss = manual
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(params, 1e9)
        opt.step()
        gnorm = gnorm.full_tensor() if hasattr(gnorm, "full_tensor") else gnorm
        losses.append((round(float(loss), 5), round(float(manual), 5), round(float(gnorm), 5)))
    return {"(model_loss, manual_ce, grad_norm) per step": losses}


@torch.no_grad()
def logits_of(model, batch):
    model.eval()
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    return out.logits.float().cpu()


def checkpointer(is_peft, ckpt_dir, **kw):
    from nemo_automodel.components.checkpoint.config import CheckpointingConfig

    cfg = CheckpointingConfig(checkpoint_dir=ckpt_dir, model_repo_id=TINY, model_save_format="safetensors",
                              is_peft=is_peft, **kw)
    mc = None
    return cfg.build(dp_rank=RANK, tp_rank=0, pp_rank=0, moe_mesh=mc)


def save_adapter(model, peft_config, target):
    fresh_dir(target)
    ck = checkpointer(True, target, save_consolidated=False)
    ck.save_model(model, target, peft_config=peft_config)  # collective: every rank calls it
    ck.close()
    barrier()
    if RANK != 0:
        return "saved (rank 0 inspects)"
    d = os.path.join(target, "model")
    files = sorted(os.listdir(d))
    info = {"dir": d, "files": files}
    if "adapter_config.json" in files:
        with open(os.path.join(d, "adapter_config.json")) as f:
            info["adapter_config"] = json.load(f)
    from safetensors import safe_open

    with safe_open(os.path.join(d, "adapter_model.safetensors"), "pt") as f:
        keys = list(f.keys())
    info["n_keys"] = len(keys)
    info["keys"] = keys[:3]
    return info


def reload_adapter_with_peft(target, ref_logits, batch, dtype):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(TINY, dtype=dtype).to(model_device())
    pm = PeftModel.from_pretrained(base, os.path.join(target, "model"))
    got = logits_of(pm, batch)
    return {"max_abs_diff_vs_trained": float((got - ref_logits).abs().max()),
            "ref_abs_max": float(ref_logits.abs().max())}


def export_merged(model, adapter_target, out_dir):
    from nemo_automodel import export_merged_peft_checkpoint

    # Needs a complete, unsharded model: DTensor weights raise ValueError (peft_export.py:61).
    # Under world size > 1 every rank tries it and reports that error.
    fresh_dir(out_dir)
    p = export_merged_peft_checkpoint(model, adapter_path=os.path.join(adapter_target, "model"),
                                      output_dir=out_dir, max_shard_size="5GB")
    return sorted(os.listdir(p))


def save_full_checkpointer(model, target):
    fresh_dir(target)
    ck = checkpointer(False, target, save_consolidated=True)
    ck.save_model(model, target, is_final_checkpoint=True)  # collective
    ck.close()
    barrier()
    d = os.path.join(target, "model")
    cons = os.path.join(d, "consolidated")
    return {"model_dir": sorted(os.listdir(d)),
            "consolidated": sorted(os.listdir(cons)) if os.path.isdir(cons) else None}


def save_full_save_pretrained(model, target):
    fresh_dir(target)
    ck = checkpointer(False, target, save_consolidated=True)
    model.save_pretrained(target, checkpointer=ck, is_final_checkpoint=True)  # collective
    ck.close()
    barrier()
    return sorted(os.listdir(os.path.join(target, "model")))


def reload_full_with_hf(path, ref_logits, batch, dtype):
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(model_device())
    got = logits_of(m, batch)
    return {"class": type(m).__name__, "max_abs_diff_vs_trained": float((got - ref_logits).abs().max())}


def run_variant(variant, force_hf, method, dtype):
    tag = f"{variant}/{method}"
    setup = step(tag, "DistributedSetup.build(fsdp2)", lambda: _pair(make_setup()))
    setup = setup[0] if setup else None
    peft_config = step(tag, "PeftConfig", make_peft) if method == "lora" else None
    model = step(tag, f"from_pretrained(force_hf={force_hf})", load, setup, peft_config, force_hf, dtype)
    if model is None:
        return
    step(tag, "describe (FSDP2 modules / DTensors / LoRA)", describe, model)
    step(tag, "query_capabilities", caps, model)
    batch = fixed_batch(model_device())
    step(tag, "train 3 steps (fwd/bwd/AdamW)", train_steps, model, batch)
    ref = step(tag, "logits after training", logits_of, model, batch)
    base = os.path.join(OUT, variant, method)
    if method == "lora":
        ad = os.path.join(base, "adapter")
        step(tag, "Checkpointer(is_peft).save_model -> adapter", save_adapter, model, peft_config, ad)
        if ref is not None:
            step(tag, "reload adapter with plain peft, compare logits", on_rank0, reload_adapter_with_peft,
                 ad, ref, batch, dtype)
        merged = os.path.join(base, "merged")
        exported = step(tag, "export_merged_peft_checkpoint -> HF dir", export_merged, model, ad, merged)
        if ref is not None and exported:
            step(tag, "reload merged with plain transformers, compare", on_rank0, reload_full_with_hf,
                 merged, ref, batch, dtype)
    else:
        full = os.path.join(base, "full")
        r = step(tag, "Checkpointer.save_model(save_consolidated) -> HF", save_full_checkpointer, model, full)
        if r and r.get("consolidated") and ref is not None:
            step(tag, "reload consolidated with plain transformers, compare", on_rank0, reload_full_with_hf,
                 os.path.join(full, "model", "consolidated"), ref, batch, dtype)
        sp = os.path.join(base, "save_pretrained")
        step(tag, "model.save_pretrained(dir, checkpointer=...)", save_full_save_pretrained, model, sp)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def main():
    step("env", "versions", versions)
    if CPU_SHIM:
        step("env", "cpu shim", apply_cpu_shim)
    step("env", "import nemo_automodel", lambda: __import__("nemo_automodel").__version__)
    step("env", "init process group", init_dist)
    step("env", "build tiny llama -> /tmp/tiny-llama", build_tiny)
    default_dtype = "bfloat16" if torch.cuda.is_available() and not CPU_SHIM else "float32"
    dtype = getattr(torch, os.environ.get("PROBE_DTYPE", default_dtype))
    variants = os.environ.get("PROBE_VARIANTS", "custom,force_hf").split(",")
    methods = os.environ.get("PROBE_METHODS", "lora,full").split(",")
    for v in variants:
        for m in methods:
            run_variant(v, v == "force_hf", m, dtype)
    say("\n== summary ==")
    for v, s, r in RESULTS:
        say(f"{r:4s} [{v}] {s}")
    say(f"{sum(r == 'ok' for *_, r in RESULTS)} ok, {sum(r == 'FAIL' for *_, r in RESULTS)} failed, "
        f"{time.time() - T0:.0f}s")
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
