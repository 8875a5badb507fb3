"""The real tier's data: batches of real text for a cell's model (and the generate check's prompt).

The tiny tier trains on one fixed batch of random ids; a pretrained model must instead be shown
text it can read, and judged on questions it has not trained on. This module turns the tier's
QA set (harness/data/qa.py: shipped, or the tier's `dataset` file) into the batches a CellRun
trains on: a causal LM gets prompt + answer with the loss on the answer (through its chat
template where it has one); a sequence classifier gets (question, context) pairs labelled 1 when
the context is the question's own and 0 when it belongs to another item of the split.

These are global batches: the stack trains each rank on its data-parallel slice (CellRun.fit),
and the train check measures the held-out loss around the steps (harness/checks/train.py:
fit_on_tier). The loss is the mean over all label tokens of the global batch (answers differ in
length, so the ranks' means are weighted by their tokens), the held-out loss too; the same code
therefore runs under single, fsdp2 and tp.
"""

from __future__ import annotations

import functools

import torch

from harness.data.qa import fixed_prompts, load_qa, prompt_ids, qa_batch, split_items

CLASSIFIER = "AutoModelForSequenceClassification"


def uses_text(cr) -> bool:
    return cr.tier.data == "qa"


@functools.cache
def _tokenizer(path: str, trust_remote_code: bool):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)


def tokenizer(cr):
    return _tokenizer(str(cr.checkpoint), cr.trust_remote_code)


def pair_batch(tok, split: str, batch_size: int, start: int = 0, path=None, seq_len: int = 128) -> dict:
    """(question, context) pairs for a classifier: even rows matched (label 1), odd rows not (0)."""
    items = split_items(load_qa(path), split)
    questions, contexts, labels = [], [], []
    for row in range(batch_size):
        k = (start + row // 2) % len(items)
        other = (k + 1 + (start + row) % (len(items) - 1)) % len(items)
        questions.append(items[k].question)
        contexts.append(items[k if row % 2 == 0 else other].context)
        labels.append(1 if row % 2 == 0 else 0)
    enc = tok(questions, contexts, padding="max_length", truncation=True, max_length=seq_len,
              return_tensors="pt")
    return {**{k: enc[k] for k in ("input_ids", "attention_mask")}, "labels": torch.tensor(labels)}


def text_batch(cr, split: str, batch_size: int, start: int = 0) -> dict:
    """One batch of the tier's QA set for this cell's model (fixed shape: the tier's seq_len)."""
    tok = tokenizer(cr)
    if cr.arch.auto_class == CLASSIFIER:
        return pair_batch(tok, split, batch_size, start, cr.tier.dataset, cr.tier.seq_len)
    return qa_batch(tok, split, batch_size, cr.tier.seq_len, start, cr.tier.dataset)


def train_batches(cr) -> list[dict]:
    """One batch per step, walking through the train split in file order (the same on every rank)."""
    size = cr.tier.batch_size
    return [text_batch(cr, "train", size, start=step * size) for step in range(cr.tier.steps)]


def heldout_batch(cr) -> dict:
    return text_batch(cr, "heldout", cr.tier.heldout_batch_size or cr.tier.batch_size)


def fixed_prompt(cr, item_id: str):
    """The generate check's fixed factual item (e.g. capital-france -> Paris) and its prompt ids."""
    items = {item.id: item for item in fixed_prompts(cr.tier.dataset)}
    if item_id not in items:
        raise KeyError(f"generate option prompt = {item_id!r} is not a fixed item of the QA set; "
                       f"fixed items: {', '.join(sorted(items))}")
    item = items[item_id]
    return item, torch.tensor([prompt_ids(tokenizer(cr), item)])
