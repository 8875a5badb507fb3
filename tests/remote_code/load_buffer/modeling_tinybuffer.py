"""Remote code that computes a non-persistent buffer in `__init__` and nowhere else (as InternLM v1
computes its rotary frequencies): a build from a config has it, transformers' loader of a saved
checkpoint builds on the meta device and does not compute it again."""

import torch
from torch import nn
from transformers import LlamaForCausalLM

from .configuration_tinybuffer import TinyBufferConfig


class LogitScale(nn.Module):
    def __init__(self, size):
        super().__init__()
        self.register_buffer("scale", 1.0 + torch.arange(size, dtype=torch.float32) / size, persistent=False)

    def forward(self, logits):
        return logits * self.scale


class TinyBufferForCausalLM(LlamaForCausalLM):
    config_class = TinyBufferConfig

    def __init__(self, config):
        super().__init__(config)
        self.logit_scale = LogitScale(config.vocab_size)

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        out.logits = self.logit_scale(out.logits)
        return out
