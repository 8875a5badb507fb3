"""DeciLM / Llama-Nemotron Super-Ultra (`nemotron-nas`) causal LM: a Llama whose blocks differ per layer.

Each layer reads its own block config: attention may be GQA with its own KV head count, a single
Linear, or skipped; the FFN may have its own width, be a single Linear, or be skipped. Module names
follow Llama's (`self_attn.q_proj`, `mlp.gate_proj`, ...) so LoRA targets and tensor-parallel plans
written for Llama apply to the blocks that have those modules.

Self-contained on purpose: it uses only transformers APIs that are stable across the 5.x releases
(PreTrainedModel, GenerationMixin, DynamicCache.update/get_seq_length, the output classes, ACT2FN),
and builds its own RMSNorm, rotary embedding and attention masks.
"""

import dataclasses
import functools
import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.cache_utils import DynamicCache
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.utils import logging

from .configuration_decilm import DeciLMConfig

try:  # the init helpers that skip tensors `from_pretrained` already loaded (flag `_is_hf_initialized`)
    from transformers import initialization as init
except ImportError:  # pragma: no cover - older transformers
    from torch.nn import init

try:
    from transformers.modeling_layers import GradientCheckpointingLayer
except ImportError:  # pragma: no cover - older transformers: checkpoint the layer call ourselves

    class GradientCheckpointingLayer(nn.Module):
        gradient_checkpointing = False

        def __call__(self, *args, **kwargs):
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                return self._gradient_checkpointing_func(functools.partial(super().__call__, **kwargs), *args)
            return super().__call__(*args, **kwargs)


logger = logging.get_logger(__name__)

# transformers 5.24 renamed the outputs' cache field from `past_key_values` to `cache` (5.17 has the
# old name; 5.24 still accepts it, with a deprecation warning). Write whichever field this release has.
_CACHE_FIELD = (
    "cache" if "cache" in {f.name for f in dataclasses.fields(BaseModelOutputWithPast)} else "past_key_values"
)
_SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")


def _is_compiling() -> bool:
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and compiler.is_compiling())


class DeciLMRMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        # Normalised in float32 whatever the weights' dtype, as Llama does.
        dtype = hidden_states.dtype
        hidden_states = hidden_states.to(torch.float32)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * hidden_states.to(dtype)


class DeciLMRotaryEmbedding(nn.Module):
    """Rotary position embedding (rope_theta, head_dim; `rope_scaling` types default, linear and llama3).

    The frequencies are computed in each forward rather than kept in a buffer: a non-persistent buffer
    is left uninitialised when `from_pretrained` builds the model on the meta device, and would be cast
    to low precision with the weights.
    """

    def __init__(self, config: DeciLMConfig):
        super().__init__()
        self.head_dim = config.head_dim
        self.base = float(config.rope_theta)
        self.scaling = dict(config.rope_scaling or {})
        self.rope_type = self.scaling.get("rope_type", self.scaling.get("type", "default"))
        if self.rope_type not in _SUPPORTED_ROPE_TYPES:
            logger.warning_once(
                f"DeciLM: rope_type {self.rope_type!r} is not implemented here; "
                "using default rotary frequencies"
            )

    def inv_freq(self, device: torch.device) -> torch.Tensor:
        exponent = torch.arange(0, self.head_dim, 2, dtype=torch.int64, device=device).float() / self.head_dim
        inv_freq = 1.0 / (self.base**exponent)
        if self.rope_type == "linear":
            inv_freq = inv_freq / float(self.scaling["factor"])
        elif self.rope_type == "llama3":
            inv_freq = self._llama3(inv_freq)
        return inv_freq

    def _llama3(self, inv_freq: torch.Tensor) -> torch.Tensor:
        """Llama 3.1 frequency scaling: long wavelengths divided by `factor`, a smooth band in between."""
        factor = float(self.scaling["factor"])
        low = float(self.scaling.get("low_freq_factor", 1.0))
        high = float(self.scaling.get("high_freq_factor", 4.0))
        original = float(self.scaling.get("original_max_position_embeddings", 8192))
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > original / low, inv_freq / factor, inv_freq)
        smooth = (original / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= original / high) & (wavelen <= original / low)
        return torch.where(medium, smoothed, scaled)

    @torch.no_grad()
    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # An elementwise outer product in float32: autocast leaves it (and cos/sin) in full precision.
        freqs = position_ids.to(device=x.device, dtype=torch.float32)[..., None] * self.inv_freq(x.device)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def _apply_rotary(q, k, cos, sin):
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # broadcast over heads
    return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin


def _repeat_kv(states: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(batch, kv_heads, seq, dim) -> (batch, kv_heads * n_rep, seq, dim), each KV head serving a group."""
    if n_rep == 1:
        return states
    batch, kv_heads, seq, dim = states.shape
    expanded = states[:, :, None].expand(batch, kv_heads, n_rep, seq, dim)
    return expanded.reshape(batch, kv_heads * n_rep, seq, dim)


class DeciLMAttention(nn.Module):
    """Grouped-query attention with this block's own KV head count, through SDPA.

    Head counts are read from the projected tensors' shapes, never from the config: under tensor
    parallelism q/k/v are sharded column-wise and each rank holds only its share of the heads.
    """

    def __init__(self, config: DeciLMConfig, layer_idx: int, n_heads_in_group: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.num_heads = config.num_attention_heads
        self.num_key_value_heads = config.num_attention_heads // n_heads_in_group
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_dropout
        bias = config.attention_bias
        self.q_proj = nn.Linear(config.hidden_size, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(config.hidden_size, self.num_key_value_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(config.hidden_size, self.num_key_value_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=bias)

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        past_key_values=None,
        **kwargs,
    ) -> torch.Tensor:
        bsz, q_len, _ = hidden_states.shape
        shape = (bsz, q_len, -1, self.head_dim)
        query = self.q_proj(hidden_states).view(shape).transpose(1, 2)
        key = self.k_proj(hidden_states).view(shape).transpose(1, 2)
        value = self.v_proj(hidden_states).view(shape).transpose(1, 2)
        cos, sin = position_embeddings
        query, key = _apply_rotary(query, key, cos, sin)
        if past_key_values is not None:
            key, value = past_key_values.update(key, value, self.layer_idx)
        n_rep = query.shape[1] // key.shape[1]  # local heads: see the class docstring
        key, value = _repeat_kv(key, n_rep), _repeat_kv(value, n_rep)
        if attention_mask is not None and attention_mask.dtype != torch.bool:
            attention_mask = attention_mask.to(query.dtype)
        out = F.scaled_dot_product_attention(
            query,
            key,
            value,
            attn_mask=attention_mask,
            dropout_p=self.attention_dropout if self.training else 0.0,
            is_causal=is_causal and attention_mask is None,
            scale=self.scaling,
        )
        out = out.transpose(1, 2).reshape(bsz, q_len, -1)
        return self.o_proj(out)


class DeciLMLinearAttention(nn.Module):
    """Attention replaced by one Linear(hidden, hidden): no mixing across positions, nothing cached."""

    def __init__(self, config: DeciLMConfig):
        super().__init__()
        self.linear_attn = nn.Linear(config.hidden_size, config.hidden_size, bias=False)

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return self.linear_attn(hidden_states)


class DeciLMMLP(nn.Module):
    """SwiGLU feed-forward whose width comes from this block's `ffn_mult`."""

    def __init__(self, config: DeciLMConfig, intermediate_size: int):
        super().__init__()
        self.intermediate_size = intermediate_size
        bias = config.mlp_bias
        self.gate_proj = nn.Linear(config.hidden_size, intermediate_size, bias=bias)
        self.up_proj = nn.Linear(config.hidden_size, intermediate_size, bias=bias)
        self.down_proj = nn.Linear(intermediate_size, config.hidden_size, bias=bias)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class DeciLMLinearMLP(nn.Module):
    """Feed-forward replaced by one Linear(hidden, hidden)."""

    def __init__(self, config: DeciLMConfig):
        super().__init__()
        self.linear_mlp = nn.Linear(config.hidden_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_mlp(x)


class DeciLMDecoderLayer(GradientCheckpointingLayer):
    """One block as its block config says. A skipped (no_op) part has no norm and no parameters at all:
    the residual stream passes through it unchanged."""

    def __init__(self, config: DeciLMConfig, layer_idx: int, block: dict | None = None):
        super().__init__()
        block = block if block is not None else config.layer_block_configs()[layer_idx]
        self.layer_idx = layer_idx
        attention, ffn = block["attention"], block["ffn"]
        self.attention_no_op = attention["no_op"]
        self.attention_is_linear = attention["replace_with_linear"]
        self.ffn_no_op = ffn["no_op"]
        self.ffn_is_linear = ffn["replace_with_linear"]
        # Only real attention writes to (and reads from) the KV cache.
        self.uses_cache = not (self.attention_no_op or self.attention_is_linear)
        if not self.attention_no_op:
            self.input_layernorm = DeciLMRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
            if self.attention_is_linear:
                self.self_attn = DeciLMLinearAttention(config)
            else:
                self.self_attn = DeciLMAttention(config, layer_idx, attention["n_heads_in_group"])
        if not self.ffn_no_op:
            self.post_attention_layernorm = DeciLMRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
            if self.ffn_is_linear:
                self.mlp = DeciLMLinearMLP(config)
            else:
                self.mlp = DeciLMMLP(config, config.intermediate_size_for(ffn["ffn_mult"]))

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        is_causal: bool = False,
        past_key_values=None,
        **kwargs,
    ) -> torch.Tensor:
        if not self.attention_no_op:
            residual = hidden_states
            hidden_states = self.self_attn(
                self.input_layernorm(hidden_states),
                position_embeddings=position_embeddings,
                attention_mask=attention_mask,
                is_causal=is_causal,
                past_key_values=past_key_values,
            )
            hidden_states = residual + hidden_states
        if not self.ffn_no_op:
            hidden_states = hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))
        return hidden_states


class DeciLMPreTrainedModel(PreTrainedModel):
    config_class = DeciLMConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["DeciLMDecoderLayer"]
    _skip_keys_device_placement = ["past_key_values", "cache"]
    _supports_sdpa = True

    def _init_weights(self, module: nn.Module) -> None:
        # The `init` helpers leave tensors flagged as loaded alone: from_pretrained keeps the checkpoint's.
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.padding_idx is not None and not getattr(module.weight, "_is_hf_initialized", False):
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
        elif isinstance(module, DeciLMRMSNorm):
            init.ones_(module.weight)


def _attention_mask(
    attention_mask: torch.Tensor | None, batch: int, q_len: int, past: int, device: torch.device
) -> tuple[torch.Tensor | None, bool]:
    """The SDPA mask for `q_len` new tokens after `past` cached ones: (boolean mask or None, is_causal).

    Without padding no mask is built (SDPA's causal kernel, or nothing at all for one new token).
    With padding, the causal structure and the padding mask are combined; a query that may attend
    nothing (a left-padding position) is let attend everything instead, so SDPA gives no NaN: its
    output is never read by a real token, since real tokens do not attend padding.
    """
    kv_len = past + q_len
    if attention_mask is not None and attention_mask.dim() == 4:
        return attention_mask.to(device), False  # already expanded by the caller
    padding = None
    if attention_mask is not None:
        padding = _padding_mask(attention_mask, batch, kv_len, device)
        if not _is_compiling() and bool(padding.all()):
            padding = None
    if padding is None:
        if q_len == 1:
            return None, False
        if past == 0:
            return None, True
    rows = torch.arange(q_len, device=device)[:, None] + past
    mask = (rows >= torch.arange(kv_len, device=device)[None, :])[None, None]
    if padding is not None:
        mask = mask & padding[:, None, None, :]
    mask = mask | ~mask.any(dim=-1, keepdim=True)
    return mask.expand(batch, 1, q_len, kv_len), False


def _padding_mask(
    attention_mask: torch.Tensor, batch: int, kv_len: int, device: torch.device
) -> torch.Tensor:
    """The 2D mask as booleans over all `kv_len` keys; a mask covering only the new tokens gets the past
    (assumed unpadded) prepended."""
    mask = attention_mask.to(device=device, dtype=torch.bool)
    if mask.shape[-1] < kv_len:
        mask = torch.cat([mask.new_ones(batch, kv_len - mask.shape[-1]), mask], dim=-1)
    elif mask.shape[-1] > kv_len:
        raise ValueError(
            f"attention_mask covers {mask.shape[-1]} tokens but the cache and the input hold only {kv_len}"
        )
    return mask


class DeciLMModel(DeciLMPreTrainedModel):
    def __init__(self, config: DeciLMConfig):
        super().__init__(config)
        padding_idx = config.pad_token_id
        if padding_idx is not None and not 0 <= padding_idx < config.vocab_size:
            padding_idx = None
        self.padding_idx = padding_idx
        self.vocab_size = config.vocab_size
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx)
        blocks = config.layer_block_configs()
        self.layers = nn.ModuleList(DeciLMDecoderLayer(config, i, block) for i, block in enumerate(blocks))
        self.norm = DeciLMRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = DeciLMRotaryEmbedding(config)
        self.gradient_checkpointing = False
        # Skipped and linear attention never write to the cache, so the number of cached tokens is read
        # from the first layer that does (layer 0 may be a no-op); None when no layer attends.
        attending = [layer.layer_idx for layer in self.layers if layer.uses_cache]
        self.first_attention_layer = attending[0] if attending else None
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values=None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        cache_position: torch.LongTensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        cache=None,
        **kwargs,
    ):
        """`cache` is the name transformers 5.24's generate passes the KV cache under; `past_key_values`
        the name of 5.17 and earlier. Either is accepted."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids and inputs_embeds")
        if cache is not None and past_key_values is not None and cache is not past_key_values:
            raise ValueError("Pass the KV cache as either `past_key_values` or `cache`, not both")
        past_key_values = past_key_values if past_key_values is not None else cache
        asked_for_cache = bool(use_cache) or past_key_values is not None
        use_cache = use_cache if use_cache is not None else self.config.use_cache
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        return_dict = return_dict if return_dict is not None else self.config.return_dict

        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            if asked_for_cache:
                logger.warning_once("DeciLM: gradient checkpointing in training: not caching keys and values")
            use_cache, past_key_values = False, None
        if self.first_attention_layer is None:  # nothing to cache
            use_cache, past_key_values = False, None
        elif use_cache and past_key_values is None:
            past_key_values = DynamicCache()

        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        batch, q_len = inputs_embeds.shape[:2]
        device = inputs_embeds.device
        past = 0
        if past_key_values is not None:
            past = past_key_values.get_seq_length(self.first_attention_layer)

        if position_ids is None:
            if attention_mask is not None and attention_mask.dim() == 2:
                # As generate derives them: left padding does not shift the real tokens' positions.
                full = _padding_mask(attention_mask, batch, past + q_len, device).long()
                position_ids = (full.cumsum(-1) - 1).masked_fill(full == 0, 0)[:, past:]
            elif cache_position is not None:
                position_ids = cache_position.to(device).unsqueeze(0)
            else:
                position_ids = torch.arange(past, past + q_len, device=device).unsqueeze(0)

        hidden_states = inputs_embeds
        mask, is_causal, position_embeddings = None, False, None
        if self.first_attention_layer is not None:
            mask, is_causal = _attention_mask(attention_mask, batch, q_len, past, device)
            position_embeddings = self.rotary_emb(hidden_states, position_ids)

        all_hidden_states = () if output_hidden_states else None
        for layer in self.layers:
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            hidden_states = layer(
                hidden_states,
                attention_mask=mask,
                position_embeddings=position_embeddings,
                is_causal=is_causal,
                past_key_values=past_key_values if layer.uses_cache else None,
            )
        hidden_states = self.norm(hidden_states)
        if output_hidden_states:
            all_hidden_states += (hidden_states,)

        output = BaseModelOutputWithPast(
            last_hidden_state=hidden_states,
            hidden_states=all_hidden_states,
            **{_CACHE_FIELD: past_key_values if use_cache else None},
        )
        return output if return_dict else output.to_tuple()


class DeciLMForCausalLM(DeciLMPreTrainedModel, GenerationMixin):
    _tp_plan = {"lm_head": "colwise_gather_output"}

    def __init__(self, config: DeciLMConfig):
        if getattr(config, "tie_word_embeddings", False):
            # The weight-tying APIs (`_tied_weights_keys`' form, `tie_weights`' signature) differ across
            # transformers 5 releases; an untied head is what the Nemotron-NAS checkpoints have anyway.
            raise NotImplementedError(
                "DeciLMForCausalLM does not tie the LM head to the input embeddings: "
                "set tie_word_embeddings=False"
            )
        super().__init__(config)
        self.model = DeciLMModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, new_embeddings: nn.Linear) -> None:
        self.lm_head = new_embeddings

    def get_decoder(self) -> DeciLMModel:
        return self.model

    def set_decoder(self, decoder: DeciLMModel) -> None:
        self.model = decoder

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values=None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        cache_position: torch.LongTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        cache=None,
        num_items_in_batch: int | torch.Tensor | None = None,
        shift_labels: torch.LongTensor | None = None,
        **kwargs,
    ):
        """Shifted cross-entropy over `labels` (-100 ignored): a mean, or a sum divided by
        `num_items_in_batch` when a trainer passes it (the token count of the whole accumulated batch)."""
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            cache_position=cache_position,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            cache=cache,
        )
        hidden_states = outputs.last_hidden_state
        if isinstance(logits_to_keep, int):
            if logits_to_keep > 0:
                hidden_states = hidden_states[:, -logits_to_keep:]
        else:
            hidden_states = hidden_states[:, logits_to_keep]
        logits = self.lm_head(hidden_states)

        loss = None
        if labels is not None or shift_labels is not None:
            loss = causal_lm_loss(logits, labels, num_items_in_batch, shift_labels)

        output = CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            **{_CACHE_FIELD: getattr(outputs, _CACHE_FIELD)},
        )
        return output if return_dict else output.to_tuple()


def causal_lm_loss(
    logits: torch.Tensor,
    labels: torch.Tensor | None,
    num_items_in_batch: int | torch.Tensor | None = None,
    shift_labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """Next-token cross-entropy in float32. Labels are shifted by padding with -100 rather than slicing
    the logits, which would copy them."""
    logits = logits.float()
    if shift_labels is None:
        shift_labels = F.pad(labels, (0, 1), value=-100)[..., 1:]
    shift_labels = shift_labels.to(logits.device)
    reduction = "sum" if num_items_in_batch is not None else "mean"
    loss = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), shift_labels.reshape(-1), ignore_index=-100, reduction=reduction
    )
    if num_items_in_batch is not None:
        if torch.is_tensor(num_items_in_batch):
            num_items_in_batch = num_items_in_batch.to(loss.device)
        loss = loss / num_items_in_batch
    return loss


__all__ = [
    "DeciLMAttention",
    "DeciLMDecoderLayer",
    "DeciLMForCausalLM",
    "DeciLMLinearAttention",
    "DeciLMLinearMLP",
    "DeciLMMLP",
    "DeciLMModel",
    "DeciLMPreTrainedModel",
    "DeciLMRMSNorm",
    "DeciLMRotaryEmbedding",
]
