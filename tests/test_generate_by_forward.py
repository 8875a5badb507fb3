"""A class without `generate` (NeMo AutoModel's own) is checked by the tokens its users get after
export: greedy decoding by forward passes must give exactly what transformers' `generate` gives."""

from __future__ import annotations

import torch

from harness.checks.generate import greedy, greedy_by_forward, has_generate


class ForwardOnly(torch.nn.Module):
    """A real transformers model behind a class of its own that offers forward but no generate."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.config = inner.config

    def forward(self, **inputs):
        return self.inner(**inputs)


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, eos_token_id=2, bos_token_id=1)
    return LlamaForCausalLM(config).eval()


def test_greedy_by_forward_passes_equals_generate_on_a_real_tiny_model():
    model = tiny_llama()
    only_forward = ForwardOnly(model)
    assert has_generate(model) and not has_generate(only_forward)
    prompt = torch.randint(3, 96, (1, 8), generator=torch.Generator().manual_seed(1))
    by_generate = greedy(model, prompt, 12)
    assert greedy(only_forward, prompt, 12) == by_generate
    assert greedy_by_forward(model, prompt, 12) == by_generate
    assert len(by_generate) == 12


def test_the_end_of_sequence_token_is_held_back_as_min_new_tokens_does():
    """A model that would end at once still gives its new tokens, as generate's min_new_tokens makes it."""
    model = tiny_llama()
    prompt = torch.randint(3, 96, (1, 8), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        hidden = model.model(input_ids=prompt).last_hidden_state[0, -1]
        model.lm_head.weight[2] = 100.0 * hidden / hidden.norm()  # eos now wins after this prompt
        assert int(model(input_ids=prompt).logits[0, -1].argmax()) == 2
    tokens = greedy(ForwardOnly(model), prompt, 6)
    assert 2 not in tokens and tokens == greedy(model, prompt, 6)
