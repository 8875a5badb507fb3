"""Configuration of DeciLM / Llama-Nemotron Super-Ultra (`nemotron-nas`): Llama keys plus `block_configs`.

`block_configs` holds one entry per layer, as the checkpoints' config.json writes it:
`{"attention": {"n_heads_in_group", "no_op", "replace_with_linear", ...},
"ffn": {"ffn_mult", "no_op", "replace_with_linear", ...}}`. Keys this implementation does not use
(sliding windows, sinks, MoE, ...) are kept as they are and ignored.

The class is a dataclass-style config, like transformers' own (LlamaConfig): fields with defaults and a
`__post_init__`, which is the form transformers 5 builds, copies and serialises without surprises.
"""

import copy
import dataclasses
from collections.abc import Mapping
from typing import Any

from transformers import PretrainedConfig

DEFAULT_FFN_MULT = 1.0


def find_multiple(n: int, k: int) -> int:
    """`n` rounded up to a multiple of `k`."""
    return n if n % k == 0 else n + k - n % k


def ffn_intermediate_size(ffn_mult: float, hidden_size: int, multiple_of: int) -> int:
    """The FFN width of a block: the DeciLM formula, rounded up to `multiple_of` (256 in the real models)."""
    return find_multiple(int(2 * ffn_mult * hidden_size / 3), multiple_of)


class DeciLMConfig(PretrainedConfig):
    """Llama-style config whose layers are described one by one by `block_configs`.

    With `block_configs=None` every layer is a standard block (GQA with `num_key_value_heads` KV heads,
    FFN multiplier 1.0). Otherwise `num_key_value_heads` is derived from the first real attention block,
    for tools that read it. `ffn_multiple_of` is not a key of the real checkpoints (they round to 256);
    it lets tiny configs have FFN widths that actually differ.
    """

    model_type = "nemotron-nas"
    # Same form as LlamaConfig's. Blocks whose attention or FFN is skipped or a single Linear have no
    # q/k/v/o or gate/up/down modules, so the wildcards do not match them: those stay replicated.
    base_model_tp_plan = {
        "layers.*.self_attn.q_proj": "colwise",
        "layers.*.self_attn.k_proj": "colwise",
        "layers.*.self_attn.v_proj": "colwise",
        "layers.*.self_attn.o_proj": "rowwise",
        "layers.*.mlp.gate_proj": "colwise",
        "layers.*.mlp.up_proj": "colwise",
        "layers.*.mlp.down_proj": "rowwise",
    }

    vocab_size: int = 1024
    hidden_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    hidden_act: str = "silu"
    max_position_embeddings: int = 2048
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-5
    use_cache: bool = True
    pad_token_id: int | None = None
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    tie_word_embeddings: bool = False
    rope_theta: float = 10000.0
    # A field of its own (the checkpoints' key), shadowing transformers 5's `rope_scaling` alias of
    # `rope_parameters`: this model reads it directly and it round-trips as written.
    rope_scaling: dict | None = None
    attention_bias: bool = False
    attention_dropout: float = 0.0
    mlp_bias: bool = False
    block_configs: list | None = None
    ffn_multiple_of: int = 256

    def __post_init__(self, **kwargs):
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.block_configs is not None:
            blocks = list(self.block_configs)
            if len(blocks) != self.num_hidden_layers:
                raise ValueError(
                    f"block_configs has {len(blocks)} entries but num_hidden_layers is "
                    f"{self.num_hidden_layers}: give one block config per layer"
                )
            self.block_configs = [self._normalize_block(block, i) for i, block in enumerate(blocks)]
            self.num_key_value_heads = self._first_kv_heads(self.block_configs)
        else:
            self._default_group()  # validates num_key_value_heads for the standard blocks
        super().__post_init__(**kwargs)

    # -- block configs -------------------------------------------------------------------------------

    def _default_group(self) -> int:
        """n_heads_in_group of a block that does not give one: from num_key_value_heads."""
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) is not a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        return self.num_attention_heads // self.num_key_value_heads

    def _default_block(self) -> dict[str, Any]:
        return {
            "attention": {
                "n_heads_in_group": self._default_group(),
                "no_op": False,
                "replace_with_linear": False,
            },
            "ffn": {"ffn_mult": DEFAULT_FFN_MULT, "no_op": False, "replace_with_linear": False},
        }

    def _normalize_block(self, block: Any, index: int) -> dict[str, Any]:
        """A plain-dict block with every key this model reads present (JSON-ready, idempotent)."""
        if hasattr(block, "to_dict"):
            block = block.to_dict()
        elif dataclasses.is_dataclass(block) and not isinstance(block, type):
            block = dataclasses.asdict(block)
        if not isinstance(block, Mapping):
            raise TypeError(f"block_configs[{index}] must be a dict, got {type(block).__name__}")
        block = copy.deepcopy(dict(block))
        attention = dict(block.get("attention") or {})
        ffn = dict(block.get("ffn") or {})
        for part, name in ((attention, "attention"), (ffn, "ffn")):
            part["no_op"] = bool(part.get("no_op", False))
            part["replace_with_linear"] = bool(part.get("replace_with_linear", False))
            if part["no_op"] and part["replace_with_linear"]:
                raise ValueError(
                    f"block_configs[{index}].{name} cannot be both no_op and replace_with_linear"
                )
        real_attention = not (attention["no_op"] or attention["replace_with_linear"])
        group = attention.get("n_heads_in_group")
        if group is None and real_attention:
            group = self._default_group()
        if group is not None:
            group = int(group)
            if group <= 0 or self.num_attention_heads % group:
                raise ValueError(
                    f"block_configs[{index}].attention.n_heads_in_group ({group}) must divide "
                    f"num_attention_heads ({self.num_attention_heads})"
                )
        attention["n_heads_in_group"] = group
        real_ffn = not (ffn["no_op"] or ffn["replace_with_linear"])
        mult = ffn.get("ffn_mult")
        if mult is None and real_ffn:
            mult = DEFAULT_FFN_MULT
        if mult is not None and float(mult) <= 0:
            raise ValueError(f"block_configs[{index}].ffn.ffn_mult must be positive, got {mult}")
        ffn["ffn_mult"] = mult
        block["attention"] = attention
        block["ffn"] = ffn
        return block

    def _first_kv_heads(self, blocks: list[dict[str, Any]]) -> int:
        for block in blocks:
            attention = block["attention"]
            if not (attention["no_op"] or attention["replace_with_linear"]):
                return self.num_attention_heads // attention["n_heads_in_group"]
        return self.num_attention_heads

    def layer_block_configs(self) -> list[dict[str, Any]]:
        """One normalised block per layer, standard blocks when `block_configs` is None.

        Resolved when the model is built rather than stored, so a config whose sizes are changed after
        construction still builds what it says.
        """
        if self.block_configs is None:
            return [self._default_block() for _ in range(self.num_hidden_layers)]
        if len(self.block_configs) != self.num_hidden_layers:
            raise ValueError(
                f"block_configs has {len(self.block_configs)} entries but num_hidden_layers is "
                f"{self.num_hidden_layers}: give one block config per layer"
            )
        return [self._normalize_block(block, i) for i, block in enumerate(self.block_configs)]

    def intermediate_size_for(self, ffn_mult: float) -> int:
        return ffn_intermediate_size(ffn_mult, self.hidden_size, self.ffn_multiple_of)


__all__ = ["DeciLMConfig", "find_multiple", "ffn_intermediate_size"]
