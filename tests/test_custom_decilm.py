"""The custom DeciLM (`nemotron-nas`): heterogeneous blocks build, train, generate, pad, save and shard
as their block configs say, on real torch with a tiny model."""

from __future__ import annotations

import copy
import json
import re
import warnings

import pytest
import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM

from custom_models.decilm import DeciLMConfig, DeciLMForCausalLM, DeciLMModel
from custom_models.decilm.modeling_decilm import _CACHE_FIELD, DeciLMAttention, DeciLMRotaryEmbedding

VOCAB = 512

# Standard GQA; attention skipped with a wider FFN; linear attention without FFN; MHA with a linear FFN.
BLOCKS = [
    {"attention": {"n_heads_in_group": 2, "no_op": False, "replace_with_linear": False},
     "ffn": {"ffn_mult": 1.0, "no_op": False, "replace_with_linear": False}},
    {"attention": {"n_heads_in_group": None, "no_op": True, "replace_with_linear": False},
     "ffn": {"ffn_mult": 2.0, "no_op": False, "replace_with_linear": False}},
    {"attention": {"n_heads_in_group": None, "no_op": False, "replace_with_linear": True},
     "ffn": {"ffn_mult": None, "no_op": True, "replace_with_linear": False}},
    {"attention": {"n_heads_in_group": 1, "no_op": False, "replace_with_linear": False},
     "ffn": {"ffn_mult": None, "no_op": False, "replace_with_linear": True}},
]
# Layer 0's attention is skipped: the cache must be read from the first layer that attends.
FIRST_SKIPPED = [BLOCKS[1], BLOCKS[0], BLOCKS[3]]


def tiny_config(blocks=BLOCKS, **overrides) -> DeciLMConfig:
    kwargs = dict(
        hidden_size=64, num_attention_heads=4, head_dim=16, vocab_size=VOCAB, max_position_embeddings=128,
        ffn_multiple_of=16, num_hidden_layers=len(blocks), block_configs=copy.deepcopy(blocks),
    )
    return DeciLMConfig(**{**kwargs, **overrides})


def build(config: DeciLMConfig, seed: int = 0) -> DeciLMForCausalLM:
    torch.manual_seed(seed)
    return DeciLMForCausalLM(config)


def tokens(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (batch, length), generator=generator)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors gain nothing from intra-op threads, and lose a lot to them on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def registered():
    """What the harness does for a custom row: register with the auto classes, no auto_map."""
    AutoConfig.register("nemotron-nas", DeciLMConfig, exist_ok=True)
    AutoModelForCausalLM.register(DeciLMConfig, DeciLMForCausalLM, exist_ok=True)


def cache_of(output):
    """The output's KV cache: the field is `cache` from transformers 5.24 on, `past_key_values` before."""
    return getattr(output, _CACHE_FIELD)


def _params(model: nn.Module, layer: int) -> dict[str, tuple[int, ...]]:
    prefix = f"model.layers.{layer}."
    return {n[len(prefix):]: tuple(p.shape) for n, p in model.named_parameters() if n.startswith(prefix)}


def test_blocks_differ_as_configured():
    model = build(tiny_config())
    layers = [_params(model, i) for i in range(4)]
    # GQA with 2 KV heads in layer 0, MHA (4 KV heads) in layer 3
    assert layers[0]["self_attn.k_proj.weight"] == (2 * 16, 64)
    assert layers[3]["self_attn.k_proj.weight"] == (4 * 16, 64)
    # layer 1: attention skipped entirely (no module, no norm); FFN twice as wide as layer 0's
    assert not any(n.startswith(("self_attn", "input_layernorm")) for n in layers[1])
    assert layers[0]["mlp.gate_proj.weight"] == (48, 64)  # int(2 * 1.0 * 64 / 3) = 42 -> 48
    assert layers[1]["mlp.gate_proj.weight"] == (96, 64)  # int(2 * 2.0 * 64 / 3) = 85 -> 96
    # layer 2: one Linear for attention, no FFN at all
    assert set(layers[2]) == {"input_layernorm.weight", "self_attn.linear_attn.weight"}
    # layer 3: one Linear for the FFN
    assert layers[3]["mlp.linear_mlp.weight"] == (64, 64)
    assert "mlp.gate_proj.weight" not in layers[3]
    assert model.config.num_key_value_heads == 2  # the first attention block's, for tools that read it


def test_every_parameter_is_initialised(registered):
    config = tiny_config(pad_token_id=0)
    for model in (build(config), AutoModelForCausalLM.from_config(config)):
        assert type(model) is DeciLMForCausalLM
        for name, param in model.named_parameters():
            assert torch.isfinite(param).all(), name
            if name.endswith("layernorm.weight") or name == "model.norm.weight":
                assert torch.equal(param, torch.ones_like(param)), name
            else:
                assert 0 < param.abs().max() < 0.2 and param.std() < 0.03, name  # normal(0, 0.02)
        assert torch.equal(model.model.embed_tokens.weight[0], torch.zeros(64))  # the padding row


def test_trains_finite_and_loss_falls():
    model = build(tiny_config())
    batch = tokens(4, 16)
    out = model(batch, labels=batch)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    first = None
    for _ in range(20):
        optimizer.zero_grad()
        loss = model(batch, labels=batch).loss
        first = loss.item() if first is None else first
        loss.backward()
        optimizer.step()
    final = model(batch, labels=batch).loss.item()
    assert final < 0.3 * first, (first, final)


def test_loss_is_shifted_and_honours_num_items_in_batch():
    model = build(tiny_config())
    batch = tokens(2, 8)
    labels = batch.clone()
    labels[0, :3] = -100
    out = model(batch, labels=labels)
    expected = nn.functional.cross_entropy(
        out.logits[:, :-1].reshape(-1, VOCAB), labels[:, 1:].reshape(-1), ignore_index=-100
    )
    torch.testing.assert_close(out.loss, expected)
    counted = int((labels[:, 1:] != -100).sum())
    summed = model(batch, labels=labels, num_items_in_batch=torch.tensor(2 * counted)).loss
    torch.testing.assert_close(summed, expected / 2)


def _greedy_without_cache(model, prompt: torch.Tensor, new_tokens: int) -> torch.Tensor:
    sequence = prompt
    for _ in range(new_tokens):
        logits = model(sequence, use_cache=False).logits
        sequence = torch.cat([sequence, logits[:, -1:].argmax(-1)], dim=-1)
    return sequence


@pytest.mark.parametrize("blocks", [BLOCKS, FIRST_SKIPPED], ids=["mixed", "layer0-attention-skipped"])
@torch.no_grad()
def test_cached_greedy_generate_matches_uncached_decoding(blocks):
    model = build(tiny_config(blocks)).eval()
    prompt = tokens(2, 7)
    expected = _greedy_without_cache(model, prompt, 8)
    plain = model.generate(prompt, max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=0)
    masked = model.generate(
        prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=8, min_new_tokens=8, do_sample=False,
        pad_token_id=0,
    )
    assert torch.equal(plain, expected)
    assert torch.equal(masked, expected)


@torch.no_grad()
def test_cache_counts_tokens_at_the_first_attending_layer():
    model = build(tiny_config(FIRST_SKIPPED)).eval()
    prompt = tokens(1, 5)
    cache = cache_of(model(prompt, use_cache=True))
    assert model.model.first_attention_layer == 1
    assert cache.get_seq_length(1) == 5 and cache.get_seq_length(0) == 0
    step = model(prompt[:, :1], past_key_values=cache, use_cache=True).logits
    full = model(torch.cat([prompt, prompt[:, :1]], dim=1), use_cache=False).logits
    torch.testing.assert_close(step[:, -1], full[:, -1], atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_model_without_attention_keeps_no_cache():
    no_attention = [BLOCKS[1], BLOCKS[2]]
    model = build(tiny_config(no_attention)).eval()
    out = model(tokens(1, 4), use_cache=True)
    assert cache_of(out) is None
    assert model.generate(tokens(1, 4), max_new_tokens=3, do_sample=False, pad_token_id=0).shape == (1, 7)


@torch.no_grad()
def test_left_padding_leaves_real_positions_unchanged():
    model = build(tiny_config()).eval()
    real = tokens(1, 6)
    pad = 3
    padded = torch.cat([torch.zeros(1, pad, dtype=torch.long), real], dim=1)
    mask = torch.cat([torch.zeros(1, pad, dtype=torch.long), torch.ones(1, 6, dtype=torch.long)], dim=1)
    reference = model(real).logits
    # positions derived from the mask inside forward, and passed explicitly as generate does
    derived = model(padded, attention_mask=mask).logits[:, pad:]
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    explicit = model(padded, attention_mask=mask, position_ids=positions).logits[:, pad:]
    torch.testing.assert_close(derived, reference, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(explicit, reference, atol=1e-5, rtol=1e-5)
    # a batch with one left-padded row generates what each row generates alone
    other = tokens(1, 9, seed=7)
    batch = torch.cat([padded, other])
    batch_mask = torch.cat([mask, torch.ones_like(other)])
    out = model.generate(
        batch, attention_mask=batch_mask, max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=0
    )
    alone = model.generate(real, max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=0)
    other_alone = model.generate(other, max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(out[0, -6:], alone[0, -6:])
    assert torch.equal(out[1, -6:], other_alone[0, -6:])


@torch.no_grad()
def test_save_and_auto_reload_round_trip(tmp_path, registered):
    config = tiny_config(rope_theta=500000.0, rope_scaling={"rope_type": "default"})
    model = build(config).eval()
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "nemotron-nas"
    assert "auto_map" not in saved
    assert saved["architectures"] == ["DeciLMForCausalLM"]
    assert isinstance(AutoConfig.from_pretrained(tmp_path), DeciLMConfig)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(reloaded) is DeciLMForCausalLM
    assert reloaded.config.block_configs == config.block_configs
    assert reloaded.config.rope_scaling == {"rope_type": "default"} and reloaded.config.rope_theta == 500000.0
    for (name, a), (_, b) in zip(model.state_dict().items(), reloaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    batch = tokens(2, 9)
    assert torch.equal(model(batch).logits, reloaded(batch).logits)


def test_config_accepts_checkpoint_style_blocks():
    """Keys this model does not use are kept; missing ones get defaults; normalising is idempotent."""
    blocks = [
        {"attention": {"n_heads_in_group": 2, "no_op": False, "replace_with_linear": False, "sparsify": None,
                       "window_length": None, "num_sink_tokens": None},
         "ffn": {"ffn_mult": 1.3125, "no_op": False, "replace_with_linear": False, "sparsify": None}},
        {"attention": {"no_op": True}, "ffn": {}},
    ]
    config = tiny_config(blocks, rope_scaling={"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                               "original_max_position_embeddings": 64, "rope_type": "llama3"})
    assert config.block_configs[0]["attention"]["window_length"] is None
    assert config.block_configs[1] == {
        "attention": {"no_op": True, "replace_with_linear": False, "n_heads_in_group": None},
        "ffn": {"no_op": False, "replace_with_linear": False, "ffn_mult": 1.0},
    }
    again = DeciLMConfig(**config.to_dict())
    assert again.block_configs == config.block_configs
    # llama3 scaling leaves the high frequencies alone and divides the lowest by `factor`
    default = DeciLMRotaryEmbedding(tiny_config(blocks)).inv_freq(torch.device("cpu"))
    scaled = DeciLMRotaryEmbedding(config).inv_freq(torch.device("cpu"))
    assert scaled[0] == default[0]
    torch.testing.assert_close(scaled[-1], default[-1] / 8.0)
    out = build(config)(tokens(1, 5))
    assert torch.isfinite(out.logits).all()


def test_block_configs_length_must_match_layers():
    with pytest.raises(ValueError, match=r"block_configs has 4 entries but num_hidden_layers is 3"):
        tiny_config(num_hidden_layers=3)


def test_tied_embeddings_are_refused():
    with pytest.raises(NotImplementedError, match="tie_word_embeddings"):
        DeciLMForCausalLM(tiny_config(tie_word_embeddings=True))


@torch.no_grad()
def test_default_config_builds_and_runs():
    config = DeciLMConfig()
    assert config.block_configs is None
    assert "block_configs" in config.to_dict()  # so a row's own block_configs reaches the constructor
    model = build(config).eval()
    assert len(model.model.layers) == config.num_hidden_layers
    out = model(tokens(2, 6) % config.vocab_size)
    assert out.logits.shape == (2, 6, config.vocab_size)
    assert torch.isfinite(out.logits).all()
    # the harness's shrink: the default config, then the generic tiny sizes as constructor keys
    shrunk = DeciLMConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                          head_dim=16, vocab_size=512, max_position_embeddings=512)
    base = DeciLMModel(shrunk)
    assert base.layers[0].self_attn.k_proj.out_features == 2 * 16
    assert torch.isfinite(base(tokens(1, 4)).last_hidden_state).all()


def _pattern(key: str) -> re.Pattern:
    """A TP plan key as transformers reads it: `*` stands for one path segment."""
    return re.compile(re.escape(key).replace(r"\*", r"[^.]+"))


def test_tp_plan_matches_only_modules_that_exist():
    plan = DeciLMConfig.base_model_tp_plan
    assert plan["layers.*.self_attn.q_proj"] == "colwise" and plan["layers.*.mlp.down_proj"] == "rowwise"
    names = [name for name, _ in DeciLMModel(tiny_config()).named_modules()]
    matched = {key: [n for n in names if _pattern(key).fullmatch(n)] for key in plan}
    for key, hits in matched.items():
        assert hits, f"{key} matches no module"
    attention_hits = {n for key, hits in matched.items() if "self_attn" in key for n in hits}
    mlp_hits = {n for key, hits in matched.items() if ".mlp." in key for n in hits}
    # skipped (1) and linear (2) attention stay out of the plan; so do the missing (2) and linear (3) FFNs
    assert {n.split(".")[1] for n in attention_hits} == {"0", "3"}
    assert {n.split(".")[1] for n in mlp_hits} == {"0", "1"}


@torch.no_grad()
def test_attention_reads_local_head_counts_from_shapes():
    """Shard layer 0's attention as TP does (q/k/v by output rows, o by input columns) over 2 ranks:
    each rank holds 2 query heads and 1 KV head, and the ranks' outputs sum to the full output."""
    config = tiny_config()
    model = build(config).eval()
    full: DeciLMAttention = model.model.layers[0].self_attn
    hidden = torch.randn(2, 5, 64)
    positions = torch.arange(5).unsqueeze(0)
    rope = model.model.rotary_emb(hidden, positions)
    expected = full(hidden, rope, is_causal=True)
    total = torch.zeros_like(expected)
    for rank in range(2):
        local = copy.deepcopy(full)
        for name in ("q_proj", "k_proj", "v_proj"):
            weight = getattr(full, name).weight
            rows = weight.shape[0] // 2
            setattr(local, name, nn.Linear(64, rows, bias=False))
            getattr(local, name).weight.copy_(weight[rank * rows:(rank + 1) * rows])
        cols = full.o_proj.weight.shape[1] // 2
        local.o_proj = nn.Linear(cols, 64, bias=False)
        local.o_proj.weight.copy_(full.o_proj.weight[:, rank * cols:(rank + 1) * cols])
        total += local(hidden, rope, is_causal=True)
    torch.testing.assert_close(total, expected, atol=1e-5, rtol=1e-5)


def test_gradient_checkpointing_gives_the_same_loss_and_grads():
    model = build(tiny_config()).train()
    batch = tokens(2, 12)
    calls = []
    mlp = model.model.layers[0].mlp
    forward = mlp.forward

    def counted(x):  # counts recomputes too (torch does not run forward hooks while recomputing)
        calls.append(1)
        return forward(x)

    mlp.forward = counted

    def loss_and_grads():
        model.zero_grad()
        calls.clear()
        loss = model(batch, labels=batch).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    loss_off, grads_off = loss_and_grads()
    assert len(calls) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # 5.24 renames it activation_checkpointing_enable
        model.gradient_checkpointing_enable()
    assert model.model.gradient_checkpointing
    assert all(layer.gradient_checkpointing for layer in model.model.layers)
    loss_on, grads_on = loss_and_grads()
    assert len(calls) == 2  # the layer really ran again in the backward pass
    torch.testing.assert_close(loss_on, loss_off)
    for name, grad in grads_off.items():
        torch.testing.assert_close(grads_on[name], grad, msg=name)
    # a training forward under checkpointing does not build a cache
    assert cache_of(model(batch, use_cache=True)) is None


def test_the_custom_registry_serves_the_matrix_rows_in_a_fresh_process():
    """prepare() registers the row's classes (AutoConfig, the auto class) before anything is built,
    as each pool rank does: a fresh interpreter then loads the tiny checkpoint with plain
    from_pretrained and gets the custom class, never remote code. The checkpoint ships its code and
    auto_map as custom code ships to users, so TRL's own loader (which reads config.auto_map for a
    class transformers lacks) loads it too, and also gets the registered class."""
    import subprocess
    import sys

    script = (
        "from harness.spec.load import load_matrix\n"
        "from harness.spec.cells import Cell, cell_architecture\n"
        "from harness.ckpt.models import checkpoint_for\n"
        "from harness.ckpt.implementations import prepare, provenance\n"
        "m = load_matrix()\n"
        "for row in ('DeciLMForCausalLM', 'NemotronNASForCausalLM'):\n"
        "    cell = Cell(row, 'sft', 'single', 'tiny', 'train', implementation='custom')\n"
        "    arch = cell_architecture(m, cell)\n"
        "    assert not arch.trust_remote_code\n"
        "    path = checkpoint_for(arch, m.tiers['tiny'], m)\n"
        "    import transformers, json\n"
        "    model = transformers.AutoModelForCausalLM.from_pretrained(path)\n"
        "    widths = [getattr(getattr(l, 'mlp', None), 'gate_proj', None) for l in model.model.layers]\n"
        "    auto_map = json.loads((path / 'config.json').read_text()).get('auto_map')\n"
        "    from trl.trainer.utils import create_model_from_path\n"
        "    trl_model = create_model_from_path(str(path))\n"
        "    shipped = sorted(p.name for p in path.glob('*.py'))\n"
        "    compact = dict(separators=(',', ':'))\n"
        "    print(row, type(model).__module__, type(model).__name__, json.dumps(auto_map, **compact),\n"
        "          json.dumps([w.out_features if w is not None else None for w in widths], **compact),\n"
        "          provenance(arch)['kind'], type(trl_model).__module__, ','.join(shipped))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert [line.split()[:3] for line in lines] == [
        [row, "custom_models.decilm.modeling_decilm", "DeciLMForCausalLM"]
        for row in ("DeciLMForCausalLM", "NemotronNASForCausalLM")]
    auto_map = ('{"AutoConfig":"configuration_decilm.DeciLMConfig",'
                '"AutoModelForCausalLM":"modeling_decilm.DeciLMForCausalLM"}')
    rest = [auto_map, "[48,96,null,null]", "custom", "custom_models.decilm.modeling_decilm",
            "configuration_decilm.py,modeling_decilm.py"]
    assert all(line.split()[3:] == rest for line in lines), lines
