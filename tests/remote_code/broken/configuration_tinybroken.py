"""A remote config written for transformers 4, which set `pruned_heads` on every config."""

from transformers import LlamaConfig


class TinyBrokenConfig(LlamaConfig):
    model_type = "tinybroken"
