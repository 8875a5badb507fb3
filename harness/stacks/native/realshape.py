"""The real-shape tier: a real checkpoint's config, at its true size, with random weights, on a GPU.

A real-shape cell answers "does LoRA / full SFT of this model fit on this GPU, and how fast is
it?" without downloading anything: the row's real config (matrix `real_shapes`, config-class
keyword arguments copied from the checkpoint's config.json) is instantiated on the meta device,
which allocates nothing and tells the parameter counts, then materialised on the GPU in the
tier's dtype and initialised by the model's own `init_weights`. A few steps of the cell's method
on the fixed batch at the tier's sequence length follow (gradient checkpointing when the tier
says so); the losses must be finite, and fall where the tier says `loss_must_fall`. The record
holds the peak memory, tokens/s and MFU against the GPU's peak bf16 FLOPs (matrix `gpus`, found
by device name), and for every published claim about this shape and method
(matrix `claims`) whether the measurement bears it out (harness/spec/claims.py).

A cell that does not fit is an `oom` failure whose record keeps what it asked for: the size of
the failed allocation (from torch's message), the estimated weights + gradients + optimizer
state, and the device's capacity.
"""

from __future__ import annotations

import gc
import re
import time
from dataclasses import asdict, dataclass

import torch

from harness.ckpt.tiny import auto_model_class, config_class
from harness.data.batches import fixed_batch
from harness.failures import CellFailure, is_oom
from harness.spec.claims import claims_for, evaluate
from harness.spec.constraints import EXPERT_COUNT_KEYS
from harness.spec.matrix import Architecture, Gpu, Matrix, RealShape
from harness.stacks.native.methods import apply_method
from harness.stacks.placed import Placed
from harness.stacks.result import TrainResult, training_metrics

GIB = 1 << 30
# AdamW keeps two moments per trainable parameter, in the parameter's dtype.
ADAM_STATES = 2


def build_config(arch: Architecture, shape: RealShape):
    return config_class(arch)(**shape.config)


def meta_model(arch: Architecture, shape: RealShape, dtype: str = "bfloat16"):
    """The model at its real size on the meta device: shapes and counts, no memory."""
    config = build_config(arch, shape)
    with torch.device("meta"):
        return auto_model_class(arch).from_config(config, dtype=getattr(torch, dtype))


@dataclass(frozen=True)
class ParamCounts:
    total: int  # unique parameters (tied embeddings once)
    embedding: int  # the input embedding (a lookup, no matmul FLOPs)
    matmul: int  # parameters that take part in a matmul per token (lm_head included)
    expert: int  # fused expert weights (MoE), part of `matmul`
    active: int  # matmul parameters one token uses: dense + top-k of the experts


def param_counts(model) -> ParamCounts:
    config = model.config.get_text_config()
    params = dict(model.named_parameters())  # named_parameters de-duplicates tied weights
    total = sum(p.numel() for p in params.values())
    embed = model.get_input_embeddings().weight
    out = model.get_output_embeddings()
    tied_head = out is not None and out.weight is embed
    matmul = total - embed.numel() + (embed.numel() if tied_head else 0)
    experts = next((getattr(config, k) for k in EXPERT_COUNT_KEYS if getattr(config, k, None)), None)
    expert = sum(p.numel() for p in params.values() if experts and p.ndim == 3 and p.shape[0] == experts)
    top_k = getattr(config, "num_experts_per_tok", None) or 0
    active = matmul - expert + (expert * top_k // experts if experts else 0)
    return ParamCounts(total=total, embedding=embed.numel(), matmul=matmul, expert=expert, active=active)


def attention_layers(model) -> int:
    """Softmax-attention blocks (they have query and output projections; Mamba mixers do not)."""
    return sum(1 for m in model.modules() if hasattr(m, "q_proj") and hasattr(m, "o_proj"))


def flops_per_token(counts: ParamCounts, n_attention: int, heads: int, head_dim: int, seq_len: int,
                    lora: bool) -> float:
    """Model FLOPs per trained token (PaLM's accounting, no recompute for checkpointing).

    Matmuls: forward 2 per active parameter, backward 4 (input and weight gradients); LoRA's
    frozen base needs no weight gradients, so 2 + 2. Attention scores and values: 12 * layers *
    heads * head_dim * seq_len for forward and backward (the full square, as PaLM counts it).
    """
    per_param = 4 if lora else 6
    return per_param * counts.active + 12 * n_attention * heads * head_dim * seq_len


def find_gpu(gpus: dict[str, Gpu], device_name: str) -> Gpu | None:
    """The matrix's entry for a device name; the longest matching string wins (H100 PCIe > H100)."""
    hits = [(len(m), g) for g in gpus.values() for m in g.match if m.lower() in device_name.lower()]
    return max(hits, key=lambda hit: hit[0])[1] if hits else None


def mfu(tokens_per_s: float, flops_token: float, peak_tflops: float) -> float:
    return tokens_per_s * flops_token / (peak_tflops * 1e12)


def memory_plan(counts: ParamCounts, trainable: int, dtype_bytes: int) -> dict:
    """Bytes the method must hold besides activations: weights, gradients, AdamW moments."""
    weights = counts.total * dtype_bytes
    grads = trainable * dtype_bytes
    optimizer = ADAM_STATES * trainable * dtype_bytes
    return {"weights_bytes": weights, "grads_bytes": grads, "optimizer_bytes": optimizer,
            "planned_bytes": weights + grads + optimizer}


# CUDA: "Tried to allocate 2.50 GiB"; the CPU allocator: "you tried to allocate 1099511627776 bytes".
_ASKED = re.compile(r"[Tt]ried to allocate ([\d.]+) ?(bytes|B|KiB|MiB|GiB|TiB)")
_UNITS = {"bytes": 1, "B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}


def asked_bytes(message: str) -> int | None:
    """The failed allocation's size, from torch's out-of-memory message."""
    found = _ASKED.search(message)
    if not found:
        return None
    return int(float(found.group(1)) * _UNITS[found.group(2)])


def oom_failure(exc: BaseException, plan: dict, device_total_bytes: int | None, where: str) -> CellFailure:
    """An `oom` CellFailure that keeps what the cell asked for and what the device had."""
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    asked = asked_bytes(str(exc))
    metrics = {**plan, "oom_at": where, "asked_bytes": asked, "device_total_bytes": device_total_bytes}
    text = (f"out of memory while {where}: the weights + gradients + AdamW state alone need "
            f"{plan['planned_bytes'] / GIB:.1f} GiB")
    if device_total_bytes:
        text += f" of the device's {device_total_bytes / GIB:.1f} GiB"
    if asked:
        text += f"; the failed allocation asked for {asked / GIB:.2f} GiB"
    return CellFailure("oom", f"{text} ({type(exc).__name__}: {message})", metrics)


def materialise(model, device: str):
    """Allocate the meta model on `device` and initialise it with the model's own init."""
    model.to_empty(device=device)
    # Moving off the meta device gives every module its own parameter: tie the embeddings again.
    model.tie_weights()
    with torch.no_grad():
        model.init_weights()
    bad = [n for n, t in [*model.named_parameters(), *model.named_buffers()]
           if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise CellFailure("error", f"materialised model has non-finite values in {bad[:5]}")
    return model


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _device_memory(device: str) -> tuple[str, int | None]:
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        return props.name, props.total_memory
    return "cpu", None


def measure(cr) -> tuple[dict, TrainResult]:
    """Build at the real shape, train a few steps, measure: (metrics, the training's result).

    An out-of-memory is raised as `oom` with the memory plan and the claims' verdicts; whether
    the loss behaved is the train check's decision (harness/checks/train.py), not this one's.
    """
    matrix: Matrix = cr.matrix
    shape = matrix.real_shapes[cr.cell.shape]
    dtype = getattr(torch, cr.tier.dtype)
    device_name, device_total = _device_memory(cr.device)
    if cr.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    model = meta_model(cr.arch, shape, cr.tier.dtype)
    counts = param_counts(model)
    n_attention = attention_layers(model)
    where = "materialising the weights"
    result = trainable = failure = None
    try:
        torch.manual_seed(0)
        materialise(model, cr.device)
        if cr.tier.gradient_checkpointing:
            # The name 5.17 (the GPU image) knows; 5.23 still takes it and suggests
            # activation_checkpointing_enable, which 5.17 does not have.
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
        trainable = apply_method(model, cr.arch, cr.method)
        build_s = time.perf_counter() - start
        where = "training"
        # The batch from the model's own vocabulary: a real shape has no checkpoint on disk.
        batch = fixed_batch(model.config.get_text_config().vocab_size, cr.tier.batch_size, cr.tier.seq_len)
        result = cr.fit(Placed(trainable.model, trainable, "single"), batches=[batch])
    except Exception as exc:  # noqa: BLE001 - only out-of-memory is handled here
        if not is_oom(exc):
            raise
        n_trainable = counts.total if not cr.method.is_lora else 0
        plan = memory_plan(counts, n_trainable, dtype.itemsize)
        failure = oom_failure(exc, plan, device_total, where)
    if failure is not None:
        del model, trainable
        _free()
        verdicts = [asdict(evaluate(c, status="fail", category="oom", peak_bytes=None,
                                    device_name=device_name, device_count=1,
                                    device_total_bytes=device_total))
                    for c in claims_for(matrix, shape.name, cr.method.name)]
        failure.metrics.update(shape=shape.name, checkpoint=shape.checkpoint, params_total=counts.total,
                               claims=verdicts)
        raise failure
    peak = int(torch.cuda.max_memory_allocated()) if cr.device == "cuda" else None
    reserved = int(torch.cuda.max_memory_reserved()) if cr.device == "cuda" else None
    n_trainable = sum(p.numel() for p in trainable.model.parameters() if p.requires_grad)
    text = model.config.get_text_config()
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    flops = flops_per_token(counts, n_attention, heads, head_dim, cr.tier.seq_len, cr.method.is_lora)
    gpu = find_gpu(matrix.gpus, device_name)
    metrics = {
        **training_metrics(result),
        "shape": shape.name, "checkpoint": shape.checkpoint, "provenance": "random init at real size",
        "model_class": type(model).__name__, "build_s": build_s,
        "params_total": counts.total, "params_active": counts.active, "params_expert": counts.expert,
        "params_trainable": n_trainable, "lora_modules": trainable.lora_modules,
        "seq_len": cr.tier.seq_len, "batch_size": cr.tier.batch_size,
        "gradient_checkpointing": cr.tier.gradient_checkpointing, "dtype": cr.tier.dtype,
        "peak_memory_bytes": peak, "peak_reserved_bytes": reserved, "device_total_bytes": device_total,
        "flops_per_token": flops, "attention_layers": n_attention,
        "peak_tflops": gpu.bf16_tflops if gpu else None, "peak_tflops_source": gpu.source if gpu else None,
        "mfu": mfu(result.tokens_per_s, flops, gpu.bf16_tflops) if gpu else None,
        **memory_plan(counts, n_trainable, dtype.itemsize),
    }
    metrics["claims"] = [asdict(evaluate(c, status="pass", category=None, peak_bytes=reserved,
                                         device_name=device_name, device_count=1,
                                         device_total_bytes=device_total))
                         for c in claims_for(matrix, shape.name, cr.method.name)]
    del model, trainable
    _free()
    return metrics, result
