"""Real text for the real tier: a small question-answer set, tokenised for causal-LM training.

The random-token batch of the tiny tier proves that the machinery runs; it cannot show that a
pretrained model *learns*. The real tier needs text whose loss starts where a pretrained model
starts and falls on questions it has not trained on. So the harness ships its own SQuAD-style
set (harness/data/qa.jsonl, written for this project: short context, question, extractive
answer, a `split` of train or heldout, and a few `fixed` one-word factual prompts for the
`generate` check), and accepts a local JSONL or parquet file of the same shape. Nothing is
fetched.

Each line/row: {"context": str, "question": str, "answer": str} required;
{"id": str, "split": "train" | "heldout" (default "train"), "fixed": bool (default false)}
optional; other keys are ignored. Errors name the file, the line (JSONL) or row (parquet,
both 1-based) and the key.

A training example is prompt + answer, with labels -100 on the prompt so the loss measures
only the answer. Tokenizers with a chat template get the conversation rendered by their own
template (what the instruct model was trained on); others get the plain
"Context: ...\\nQuestion: ...\\nAnswer:" format followed by " answer" and EOS.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

SHIPPED = Path(__file__).parent / "qa.jsonl"
SPLITS = ("train", "heldout")
REQUIRED = ("context", "question", "answer")
IGNORE_INDEX = -100
INSTRUCTION = "Answer the question with a short phrase taken from the context."


class DatasetError(ValueError):
    """A dataset that does not have the expected shape; the message says where and why."""


@dataclass(frozen=True)
class QAItem:
    id: str
    context: str
    question: str
    answer: str
    split: str = "train"
    fixed: bool = False  # a fixed factual prompt: one-word answer, used by the generate check


def _item(record, where: str, default_id: str) -> QAItem:
    """Validate one record; `where` is e.g. "qa.jsonl line 3" and starts every message."""
    if not isinstance(record, dict):
        raise DatasetError(f"{where}: expected an object with keys {', '.join(REQUIRED)}, "
                           f"got {type(record).__name__}")
    for key in REQUIRED:
        if key not in record or record[key] is None:
            raise DatasetError(f"{where}: missing key {key!r} (required: {', '.join(REQUIRED)})")
        value = record[key]
        if not isinstance(value, str) or not value.strip():
            raise DatasetError(f"{where}: key {key!r} must be a non-empty string, got {value!r}")
    split = record.get("split") or "train"
    if split not in SPLITS:
        raise DatasetError(f"{where}: key 'split' must be one of {', '.join(SPLITS)}, got {split!r}")
    fixed = record.get("fixed", False)
    fixed = False if fixed is None else fixed
    if not isinstance(fixed, bool):
        raise DatasetError(f"{where}: key 'fixed' must be true or false, got {fixed!r}")
    item_id = record.get("id") or default_id
    if not isinstance(item_id, str):
        raise DatasetError(f"{where}: key 'id' must be a string, got {item_id!r}")
    return QAItem(item_id, record["context"].strip(), record["question"].strip(),
                  record["answer"].strip(), split, fixed)


def _records(path: Path):
    """(where, default id, record) per line or row; parse errors name the file and line."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DatasetError(f"{path} line {number}: not valid JSON ({exc.msg})") from None
                yield f"{path} line {number}", f"{path.stem}-{number}", record
    elif suffix == ".parquet":
        import pandas as pd

        try:
            frame = pd.read_parquet(path)
        except ImportError as exc:
            raise DatasetError(f"{path}: reading parquet needs pyarrow or fastparquet ({exc})") from None
        missing = [key for key in REQUIRED if key not in frame.columns]
        if missing:
            raise DatasetError(f"{path}: missing column(s) {', '.join(map(repr, missing))} "
                               f"(required: {', '.join(REQUIRED)})")
        for number, record in enumerate(frame.to_dict(orient="records"), start=1):
            # pandas turns a missing value into NaN; call it missing, as JSON null would be.
            record = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in record.items()}
            yield f"{path} row {number}", f"{path.stem}-{number}", record
    else:
        raise DatasetError(f"{path}: unsupported file type {suffix!r}; use .jsonl or .parquet")


def load_qa(path: str | Path | None = None) -> list[QAItem]:
    """All items of the shipped set (path None) or of a local JSONL/parquet file, in file order."""
    path = Path(path) if path is not None else SHIPPED
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    items, seen = [], {}
    for where, default_id, record in _records(path):
        item = _item(record, where, default_id)
        if item.id in seen:
            raise DatasetError(f"{where}: key 'id' {item.id!r} repeats {seen[item.id]}")
        seen[item.id] = where
        items.append(item)
    if not items:
        raise DatasetError(f"{path}: no items")
    return items


def split_items(items: list[QAItem], split: str) -> list[QAItem]:
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    return [item for item in items if item.split == split]


def fixed_prompts(path: str | Path | None = None) -> list[QAItem]:
    """The fixed factual prompts (one-word answers) for the generate check, e.g. France -> Paris."""
    return [item for item in load_qa(path) if item.fixed]


def answer_matches(generated: str, expected: str) -> bool:
    """The generate check's criterion: the expected answer appears in the output, any case."""
    return expected.casefold() in generated.casefold()


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def _user_text(item: QAItem, with_context: bool) -> str:
    if not with_context:
        return item.question
    return f"{INSTRUCTION}\nContext: {item.context}\nQuestion: {item.question}"


def _plain_prompt(item: QAItem, with_context: bool) -> str:
    if not with_context:
        return f"Question: {item.question}\nAnswer:"
    return f"Context: {item.context}\nQuestion: {item.question}\nAnswer:"


def _ids(tokenizer, text: str, special: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def prompt_ids(tokenizer, item: QAItem, with_context: bool = True) -> list[int]:
    """Token ids of the prompt alone, ready for generate (chat: ends with the assistant header)."""
    if has_chat_template(tokenizer):
        messages = [{"role": "user", "content": _user_text(item, with_context)}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return _ids(tokenizer, text, special=False)  # the template already wrote BOS if it wants one
    return _ids(tokenizer, _plain_prompt(item, with_context), special=True)


def encode_example(tokenizer, item: QAItem, with_context: bool = True) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of prompt + answer; labels are IGNORE_INDEX over the prompt."""
    prompt = prompt_ids(tokenizer, item, with_context)
    answer: list[int] | None = None
    if has_chat_template(tokenizer):
        messages = [{"role": "user", "content": _user_text(item, with_context)},
                    {"role": "assistant", "content": item.answer}]
        full = _ids(tokenizer, tokenizer.apply_chat_template(messages, tokenize=False), special=False)
        # Templates normally render the prompt as a prefix of the whole conversation; those that
        # rewrite earlier turns (e.g. strip reasoning) do not, and fall back to prompt + answer.
        if full[: len(prompt)] == prompt and len(full) > len(prompt):
            answer = full[len(prompt):]
    if answer is None:
        answer = _ids(tokenizer, " " + item.answer, special=False)
        if tokenizer.eos_token_id is not None:
            answer.append(tokenizer.eos_token_id)
    return prompt + answer, [IGNORE_INDEX] * len(prompt) + answer


def pad_id(tokenizer) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return candidate
    return 0


def qa_batch(
    tokenizer,
    split: str = "train",
    batch_size: int = 8,
    seq_len: int | None = None,
    start: int = 0,
    path: str | Path | None = None,
    with_context: bool = True,
):
    """A fixed-shape, right-padded batch {input_ids, attention_mask, labels} of `split`.

    Items are taken in file order from `start`, wrapping around, so batch k of a run is the
    same on every machine. seq_len None pads to the longest example of the whole dataset
    (rounded up to 8), so train and heldout batches share one shape; an example longer than
    an explicit seq_len is an error rather than silently losing its answer to truncation.
    """
    import torch

    items = load_qa(path)
    chosen = split_items(items, split)
    if not chosen:
        raise DatasetError(f"{path or SHIPPED}: no items in split {split!r}; mark some with "
                           f'"split": "{split}"')
    picked = [chosen[(start + i) % len(chosen)] for i in range(batch_size)]
    encoded = [encode_example(tokenizer, item, with_context) for item in picked]
    if seq_len is None:
        longest = max(len(encode_example(tokenizer, item, with_context)[0]) for item in items)
        seq_len = -(-longest // 8) * 8
    for item, (ids, _) in zip(picked, encoded, strict=True):
        if len(ids) > seq_len:
            raise DatasetError(f"item {item.id!r} is {len(ids)} tokens, longer than seq_len {seq_len}")
    pad = pad_id(tokenizer)
    input_ids = torch.full((batch_size, seq_len), pad, dtype=torch.long)
    attention_mask = torch.zeros((batch_size, seq_len), dtype=torch.long)
    labels = torch.full((batch_size, seq_len), IGNORE_INDEX, dtype=torch.long)
    for row, (ids, labs) in enumerate(encoded):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention_mask[row, : len(ids)] = 1
        labels[row, : len(labs)] = torch.tensor(labs)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
