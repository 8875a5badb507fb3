"""Remote code that reads a config attribute transformers 5 no longer provides (`pruned_heads`)."""

from transformers import LlamaForCausalLM

from .configuration_tinybroken import TinyBrokenConfig


class TinyBrokenForCausalLM(LlamaForCausalLM):
    config_class = TinyBrokenConfig

    def __init__(self, config):
        super().__init__(config)
        if config.pruned_heads:  # transformers 4 set {} here; 5 raises AttributeError
            self.prune_heads(config.pruned_heads)
