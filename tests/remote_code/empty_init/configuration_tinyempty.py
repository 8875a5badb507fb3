"""A remote config over Llama's."""

from transformers import LlamaConfig


class TinyEmptyConfig(LlamaConfig):
    model_type = "tinyempty"
