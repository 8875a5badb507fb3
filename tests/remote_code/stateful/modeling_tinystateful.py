"""Remote code with class-level state: every build after the first in one imported module scales
its logits differently. Loaded twice in one process from the same imported module, the second
model is not the first; imported afresh for each load, both are the same."""

from transformers import LlamaForCausalLM

from .configuration_tinystateful import TinyStatefulConfig


class TinyStatefulForCausalLM(LlamaForCausalLM):
    config_class = TinyStatefulConfig
    builds = 0

    def __init__(self, config):
        super().__init__(config)
        type(self).builds += 1
        self.logit_factor = float(type(self).builds)

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        out.logits = out.logits * self.logit_factor
        return out
