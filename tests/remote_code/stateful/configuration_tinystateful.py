"""A remote config over Llama's."""

from transformers import LlamaConfig


class TinyStatefulConfig(LlamaConfig):
    model_type = "tinystateful"
