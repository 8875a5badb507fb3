"""Remote code that creates a weight with torch.empty and never initialises it."""

import torch
from torch import nn
from transformers import LlamaForCausalLM

from .configuration_tinyempty import TinyEmptyConfig


class TinyEmptyForCausalLM(LlamaForCausalLM):
    config_class = TinyEmptyConfig

    def __init__(self, config):
        super().__init__(config)
        self.logit_scale = nn.Parameter(torch.empty(config.vocab_size))

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        out.logits = out.logits * self.logit_scale
        return out
