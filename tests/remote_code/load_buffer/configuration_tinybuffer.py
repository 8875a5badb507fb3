"""A remote config over Llama's."""

from transformers import LlamaConfig


class TinyBufferConfig(LlamaConfig):
    model_type = "tinybuffer"
