"""Small helpers the round-trip checks share: logits, state comparison, tied weights."""

from __future__ import annotations

import torch

from harness.cellrun import CellRun
from harness.failures import CellFailure
from harness.stacks.placed import whole_dtensor


def model_device(model) -> torch.device:
    """Where the model's (local) weights live; a DTensor parameter reports its local shard's device."""
    param = next(model.parameters())
    return param.to_local().device if hasattr(param, "to_local") else param.device


def require_one_device_load(cr: CellRun) -> None:
    """A check that reloads with plain peft or from_pretrained loads on one device, as users do:
    its `load_layouts` must map the cell's layout to a one-rank layout."""
    if cr.load_layout.world_size != 1:
        raise CellFailure("error", f"{cr.cell.check} reloads on one device: its load_layouts must map "
                                   f"{cr.layout.name} to a one-rank layout, not {cr.load_layout.name}")


@torch.no_grad()
def logits(model, batch: dict) -> torch.Tensor:
    """The model's logits on the whole batch (every rank of a layout feeds the same batch)."""
    model.eval()
    out = model(input_ids=batch["input_ids"].to(model_device(model))).logits
    if hasattr(out, "full_tensor"):
        out = out.full_tensor()
    return out.float().cpu()


def _whole(name: str, value: torch.Tensor) -> torch.Tensor:
    """A state entry whole (a DTensor gathered; `evidence-unavailable` where torch cannot)."""
    return whole_dtensor(name, value) if hasattr(value, "full_tensor") else value


def full_adapter_state(model, placed=None) -> dict[str, torch.Tensor]:
    """The LoRA adapter in PEFT's state-dict form, gathered whole from any shards.

    With the Placed that built `model`, plain local shards (a release whose TP keeps no DTensors)
    are gathered too (`Placed.global_view`; a collective: every rank calls it).
    """
    from peft import get_peft_model_state_dict

    names = {}
    if placed is not None:  # peft drops the adapter's name from its keys
        adapter = getattr(model, "active_adapter", "default")
        names = {name.replace(f".{adapter}", ""): name for name, _ in model.named_parameters()}
    view = {key: (placed.global_view(names[key], value) if key in names else _whole(key, value))
            for key, value in get_peft_model_state_dict(model).items()}
    return {key: value.detach().cpu().clone() for key, value in view.items()}


def assert_same_logits(expected: torch.Tensor, actual: torch.Tensor, what: str) -> None:
    if not torch.equal(expected, actual):
        diff = (expected - actual).abs().max().item()
        raise CellFailure("check-failed", f"{what}: logits differ (max abs diff {diff:.3e})")


def assert_close_logits(expected: torch.Tensor, actual: torch.Tensor, tol: dict, what: str) -> float:
    """Close relative to the logits' scale: max |diff| <= atol + rtol * max |expected|.

    A merge (W + BA) sums in another order than the unmerged model (xW + xAB); in a deep model
    that rounding reaches every logit at the scale of the largest ones, so an elementwise relative
    bound fails on logits near zero for no fault of the merge, while a wrong merge moves logits by
    their own size. Returns the bound for the record.
    """
    diff = (expected - actual).abs().max().item()
    bound = tol["atol"] + tol["rtol"] * expected.abs().max().item()
    if not diff <= bound:
        raise CellFailure("numerics", f"{what}: logits differ by {diff:.3e}, above {bound:.3e} (rtol "
                                      f"{tol['rtol']} of the largest logit, atol {tol['atol']})")
    return bound


def full_state(model, placed=None) -> dict[str, torch.Tensor]:
    """Every entry of the state dict as a plain CPU tensor, as one device holds it.

    DTensors are gathered; with the Placed that built `model`, plain local shards too (a
    collective then: every rank calls it).
    """
    view = placed.global_view if placed is not None else _whole
    return {name: view(name, value).detach().cpu().clone() for name, value in model.state_dict().items()}


def assert_bit_equal(expected: dict, actual: dict, what: str) -> None:
    missing = sorted(set(expected) - set(actual))
    extra = sorted(set(actual) - set(expected))
    if missing or extra:
        raise CellFailure("check-failed", f"{what}: state dict keys differ; missing {missing[:5]}, "
                                          f"unexpected {extra[:5]}")
    wrong_dtype = [k for k in expected if expected[k].dtype != actual[k].dtype]
    if wrong_dtype:
        k = wrong_dtype[0]
        raise CellFailure("check-failed", f"{what}: dtype not preserved for {len(wrong_dtype)} tensors, "
                                          f"e.g. {k}: {expected[k].dtype} -> {actual[k].dtype}")
    unequal = [k for k in expected if not torch.equal(expected[k], actual[k])]
    if unequal:
        raise CellFailure("check-failed", f"{what}: {len(unequal)} tensors not bit-equal, e.g. {unequal[:5]}")


def assert_ties_kept(model, what: str) -> None:
    """Tied input and output embeddings must still be one tensor after a reload."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    if not getattr(config, "tie_word_embeddings", False):
        return
    out = model.get_output_embeddings()
    if out is None:
        return
    if out.weight.data_ptr() != model.get_input_embeddings().weight.data_ptr():
        raise CellFailure("check-failed", f"{what}: tie_word_embeddings is set but the input and output "
                                          "embeddings are no longer the same tensor")
