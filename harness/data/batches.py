"""The tiny tier's batches: deterministic token ids from a checkpoint's own vocabulary.

The real tier's text is harness/data/text.py. Both are global batches: each rank trains on its
data-parallel slice (harness/stacks/placed.py: DataParallel).
"""

from __future__ import annotations

import torch

# Auto classes whose loss averages over sequences (one label each), not over label tokens.
PER_SEQUENCE_AUTO_CLASSES = ("AutoModelForSequenceClassification",)


def label_tokens(batch: dict, per_sequence: bool) -> int:
    """How many targets the model's loss averages over: shifted label tokens, or sequences."""
    labels = batch["labels"]
    if per_sequence or labels.ndim == 1:
        return int(labels.shape[0])
    return int((labels[..., 1:] != -100).sum())


def fixed_batch(vocab_size: int, batch_size: int, seq_len: int, seed: int = 0) -> dict:
    """A deterministic batch of token ids; labels are the inputs (causal LM shifts inside)."""
    generator = torch.Generator().manual_seed(seed)
    # Stay clear of id 0 and the top of the vocab, where pad and special tokens usually sit.
    high = max(vocab_size - 1, 3)
    input_ids = torch.randint(1, high, (batch_size, seq_len), generator=generator)
    return {"input_ids": input_ids, "labels": input_ids.clone()}


def classification_labels(batch_size: int, num_labels: int) -> torch.Tensor:
    """One class id per sequence, for sequence-classification heads."""
    return torch.arange(batch_size) % num_labels
