"""A degenerate implementation fails `train` and `implementation_parity`; the reference passes both.

The planted implementation is a real tiny Llama from transformers whose output layer's result is
multiplied by 0 (a forward hook): its logits are uniform, its start loss is exactly ln(vocab), and no
gradient reaches any weight, as AutoModel's own Qwen3Next class behaved (start 6.238324 = ln 512,
first gradient norm 0.018 against 1.60). The reference is the same checkpoint unmodified, trained by
the harness's loop. The native stack's own train cell must start exactly where the reference does.
"""

from __future__ import annotations

import math
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM

from harness.cellrun import CellRun
from harness.checks import implementation_parity, reference, train
from harness.checks.common import logits
from harness.ckpt.tiny import tiny_checkpoint
from harness.data.batches import fixed_batch
from harness.failures import CellFailure
from harness.spec.cells import Cell
from harness.spec.load import load_matrix
from harness.spec.matrix import DEFAULT_MATRIX_DIR, PARITY_TRANSFORMS, MatrixError
from harness.stacks import loop
from harness.stacks.result import TrainResult

ARCH = "LlamaForCausalLM"


@pytest.fixture(scope="module")
def matrix():
    return load_matrix()


def _model(matrix, uniform: bool):
    path = tiny_checkpoint(matrix.architectures[ARCH], matrix)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    if uniform:
        model.lm_head.register_forward_hook(lambda module, args, out: out * 0.0)
    return model


def _batch(matrix, model):
    tier = matrix.tiers["tiny"]
    return fixed_batch(model.config.vocab_size, tier.batch_size, tier.seq_len)


def _trained(matrix, uniform: bool):
    model = _model(matrix, uniform)
    batch = _batch(matrix, model)
    optimizer = loop.make_optimizer(model, matrix.methods["sft"].lr)
    return loop.fit(model, batch, optimizer, matrix.tiers["tiny"].steps), model.config.vocab_size


def test_uniform_logits_fail_train_naming_the_cause(matrix):
    bounds = train.ReferenceBounds.of(matrix.tiers["tiny"])
    honest, vocab = _trained(matrix, uniform=False)
    degenerate, _ = _trained(matrix, uniform=True)
    train.assert_fall_beyond_noise(honest, bounds)
    assert train.compare_with_reference(honest, honest, bounds, vocab)["grad_norm_ratio"] == 1.0
    with pytest.raises(CellFailure) as caught:
        train.compare_with_reference(degenerate, honest, bounds, vocab)
    message = str(caught.value)
    assert "vanishing gradient" in message
    assert "logits are uniform" in message and "ln(vocab size 512)" in message
    assert caught.value.metrics["reference_losses"] == honest.losses
    with pytest.raises(CellFailure, match="loss_fall_min"):
        train.assert_fall_beyond_noise(degenerate, bounds)


def _step_zero(matrix, uniform: bool) -> reference.StepZero:
    model = _model(matrix, uniform)
    batch = _batch(matrix, model)
    out = logits(model, batch)
    model.train()
    loss = model(**batch).loss
    loss.backward()
    grads = {n: p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
             for n, p in model.named_parameters()}
    return reference.StepZero(float(loss.detach()), out, grads, loop.local_grad_norm(model))


def test_uniform_logits_fail_implementation_parity_naming_parameters(matrix):
    tolerance = dict(matrix.tolerances["float32"])
    want = _step_zero(matrix, uniform=False)
    honest = _step_zero(matrix, uniform=False)
    metrics = implementation_parity.decide(
        "the same class", (honest.loss, want.loss),
        implementation_parity.compare_logits(honest.logits, want.logits, tolerance),
        implementation_parity.compare_grads(honest.grads, want.grads, tolerance), tolerance)
    assert metrics["params_compared"] == len(want.grads)
    got = _step_zero(matrix, uniform=True)
    with pytest.raises(CellFailure) as caught:
        implementation_parity.decide(
            "a uniform-logit class", (got.loss, want.loss),
            implementation_parity.compare_logits(got.logits, want.logits, tolerance),
            implementation_parity.compare_grads(got.grads, want.grads, tolerance), tolerance)
    message = str(caught.value)
    assert caught.value.category == "numerics"
    assert "start loss" in message and "logits differ" in message
    assert "lm_head.weight" in message and "model.embed_tokens.weight" in message
    assert caught.value.metrics["grad_worst_param"] in want.grads


def test_a_gradient_term_the_loss_does_not_show_is_told_as_such(matrix):
    """AutoModel's own MoE classes add the router's load-balancing gradient in backward only: the same
    loss and logits, other gradients. The failure says the forward agrees."""
    tolerance = dict(matrix.tolerances["float32"])
    want = _step_zero(matrix, uniform=False)
    extra = {name: grad + 1e-2 * grad.abs().max() if name == "lm_head.weight" else grad
             for name, grad in want.grads.items()}
    with pytest.raises(CellFailure) as caught:
        implementation_parity.decide(
            "an implementation with an extra gradient term", (want.loss, want.loss),
            implementation_parity.compare_logits(want.logits, want.logits, tolerance),
            implementation_parity.compare_grads(extra, want.grads, tolerance), tolerance)
    assert "1 of" in str(caught.value) and "lm_head.weight" in str(caught.value)
    assert "The start loss and the logits agree" in str(caught.value)
    assert caught.value.metrics["forward_agrees"] is True


def test_renames_map_an_implementations_names_and_refuse_collisions():
    rename = reference.renamer([[r"^(.*)\.lora_([AB])\.weight$",
                                 r"base_model.model.\1.lora_\2.default.weight"]])
    assert rename("model.layers.0.self_attn.q_proj.lora_A.weight") == \
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight"
    assert rename("model.norm.weight") == "model.norm.weight"
    collide = reference.renamer([[r"\.[ab]$", ".x"]])
    with pytest.raises(CellFailure, match="two parameters"):
        reference.renamed({"w.a": 1, "w.b": 2}, collide)


def test_a_rename_may_transpose_the_value_it_names():
    """AutoModel's grouped experts are (experts, in, out) where transformers' are (experts, out, in)."""
    rename = reference.renamer([[r"^(.*)\.experts\.gate_and_up_projs$", r"\1.experts.gate_up_proj",
                                 "transpose"]])
    grouped = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4)
    norm = torch.ones(3)
    out = reference.renamed({"mlp.experts.gate_and_up_projs": grouped, "model.norm.weight": norm}, rename)
    assert sorted(out) == ["mlp.experts.gate_up_proj", "model.norm.weight"]
    assert out["mlp.experts.gate_up_proj"].shape == (2, 4, 3)
    assert torch.equal(out["mlp.experts.gate_up_proj"][1, 2], grouped[1, :, 2])
    assert out["model.norm.weight"] is norm


def test_every_transform_the_matrix_accepts_is_one_the_check_applies():
    assert set(reference.TRANSFORMS) == set(PARITY_TRANSFORMS)


def test_a_rows_parity_renames_are_checked_at_load(tmp_path):
    """A transform the check does not know is one message naming the row's key."""
    bad = tmp_path / "matrix"
    shutil.copytree(DEFAULT_MATRIX_DIR, bad)
    path = bad / "architectures.toml"
    text = path.read_text()
    path.write_text(text.replace("experts.down_proj', 'transpose']", "experts.down_proj', 'flip']", 1))
    with pytest.raises(MatrixError, match=r"parity_renames\.\"automodel\"\[1\]\[2\].*transpose"):
        load_matrix(bad)


def test_the_native_train_cell_starts_exactly_where_the_reference_does(matrix, tmp_path):
    native = CellRun(matrix, Cell(ARCH, "sft", "single", "tiny", "train"), "cpu", scratch_root=tmp_path)
    own = train.run(native)
    other = CellRun(matrix, Cell(ARCH, "sft", "single", "tiny", "train", stack="trl"), "cpu",
                    scratch_root=tmp_path)
    assert reference.reference_curve(other).losses == own["losses"]
    assert reference.reference_curve(other).grad_norms == own["grad_norms"]


def test_a_lora_loss_that_stands_still_names_its_cause(matrix, tmp_path):
    """AutoModel's own Qwen3Next class under its LoRA kept the loss at ln(vocab) to every digit: the
    `train` failure must say why (uniform logits, no gradient), not only that the loss did not fall.
    The cell's curve is planted; the reference is the native LoRA run on the same checkpoint."""
    cr = CellRun(matrix, Cell(ARCH, "lora", "single", "tiny", "train", stack="trl"), "cpu",
                 scratch_root=tmp_path)
    vocab = cr.config.get_text_config().vocab_size
    still = TrainResult([math.log(vocab)] * 6, [1e-9] * 6, [0.1] * 6, 64)
    with pytest.raises(CellFailure) as stood:
        train.assert_loss_falls(still)
    told = train.with_reference_causes(cr, still, stood.value)
    assert told.message.startswith("loss did not fall over 6 steps")
    assert f"The first loss is ln(vocab size {vocab})" in told.message
    assert "logits are uniform" in told.message
    assert "vanishing gradient" in told.message and "reference's" in told.message
    assert told.category == stood.value.category and told.metrics["grad_norm_ratio"] < 1e-6
    honest = reference.reference_curve(cr)
    assert train.with_reference_causes(cr, honest, stood.value) is stood.value
