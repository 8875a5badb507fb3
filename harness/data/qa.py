"""Real text for the real tier: a small question-answer set, tokenised for causal-LM training.

The random-token batch of the tiny tier proves that the machinery runs; it cannot show that a
pretrained model *learns*. The real tier needs text whose loss starts where a pretrained model
starts and falls on questions it has not trained on. So the harness ships its own SQuAD-style
set (harness/data/qa.jsonl, written for this project: short context, question, extractive
answer, a `split` of train or heldout, and a few `fixed` one-word factual prompts for the
`generate` check), and accepts a local JSONL or parquet file of the same shape. Nothing is
fetched. Reading and checking such a file is harness/spec/qa.py (the matrix stage checks a
tier's file at load); this module turns its items into batches.

A training example is prompt + answer, with labels -100 on the prompt so the loss measures
only the answer. Tokenizers with a chat template get the conversation rendered by their own
template (what the instruct model was trained on); others get the plain
"Context: ...\\nQuestion: ...\\nAnswer:" format followed by " answer" and EOS.
"""

from __future__ import annotations

from pathlib import Path

from harness.spec.qa import SHIPPED, SPLITS, DatasetError, QAItem, load_qa

IGNORE_INDEX = -100
INSTRUCTION = "Answer the question with a short phrase taken from the context."


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
