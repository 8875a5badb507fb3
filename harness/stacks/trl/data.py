"""The cell's global batches as the dataset SFTTrainer takes: pre-tokenised rows, in step order.

SFTTrainer skips its own tokenisation for a dataset that already has `input_ids`, and builds
the labels itself (its collator pads and masks). A row keeps only its real tokens (the attention
mask's ones); on real text, where the batch's labels mask the question, the answer tokens become
the row's `completion_mask`, which TRL's completion-only loss reads. Step i of the schedule
trains on batch i (taken in turn), so the dataset holds steps x global batch rows; with
sequential sampling the trainer sees them in that order.
"""

from __future__ import annotations


def rows(batch: dict) -> list[dict]:
    ids, labels = batch["input_ids"], batch.get("labels")
    mask = batch.get("attention_mask")
    out = []
    for i in range(ids.shape[0]):
        keep = mask[i].bool() if mask is not None else ids[i] == ids[i]
        row = {"input_ids": ids[i][keep].tolist()}
        if labels is not None and labels.ndim == 2 and bool((labels[i][keep] == -100).any()):
            row["completion_mask"] = (labels[i][keep] != -100).long().tolist()
        out.append(row)
    return out


def dataset(batches: list[dict], steps: int):
    """(datasets.Dataset of steps x global batch rows, whether the rows carry a completion mask)."""
    from datasets import Dataset

    table = [row for step in range(steps) for row in rows(batches[step % len(batches)])]
    masked = any("completion_mask" in row for row in table)
    if masked:
        for row in table:
            row.setdefault("completion_mask", [1] * len(row["input_ids"]))
    return Dataset.from_list(table), masked
