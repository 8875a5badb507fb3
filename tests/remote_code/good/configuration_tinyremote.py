"""A remote config over Llama's, as many hub repositories ship one."""

from transformers import LlamaConfig


class TinyRemoteConfig(LlamaConfig):
    model_type = "tinyremote"
