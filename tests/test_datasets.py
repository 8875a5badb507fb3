"""The real-text QA set: shape, splits, label masking, local JSONL/parquet files, clear errors.

A byte-level tokenizer built here (every byte one token, so decoding is exact) stands in for
a real one, so these tests need no checkpoint package and run in well under a second each.
"""

from __future__ import annotations

import json

import pytest

from harness.data import qa as datasets
from harness.data.qa import IGNORE_INDEX, DatasetError, QAItem

CHAT = ("{% for m in messages %}<|{{ m.role }}|>{{ m.content }}<|end|>{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}")
# A template that renders the generation header differently from a finished assistant turn,
# as some reasoning templates do: the prompt is then not a prefix of the conversation.
CHAT_NOT_PREFIX = ("{% for m in messages %}<|{{ m.role }}|>{{ m.content }}<|end|>{% endfor %}"
                   "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


def byte_tokenizer(chat_template: str | None = None):
    from tokenizers import Tokenizer, decoders, models
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {ch: i for i, ch in enumerate(sorted(ByteLevel.alphabet()))}
    specials = ["<pad>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|end|>"]
    for token in specials:
        vocab[token] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(specials)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                                        pad_token="<pad>")
    tokenizer.chat_template = chat_template
    return tokenizer


def answer_text(tokenizer, ids, labels) -> str:
    assert len(ids) == len(labels)
    kept = [label for label in labels if label != IGNORE_INDEX]
    first = next(i for i, label in enumerate(labels) if label != IGNORE_INDEX)
    assert all(label == IGNORE_INDEX for label in labels[:first])  # one masked prompt, then the answer
    assert labels[first:] == ids[first:]
    return tokenizer.decode(kept)


FRANCE = QAItem("fr", "France's capital is Paris.", "What is the capital of France?", "Paris",
                "heldout", True)


def test_shipped_set_has_the_promised_shape():
    items = datasets.load_qa()
    assert 60 <= len(items) <= 100
    assert len({item.id for item in items}) == len(items)
    heldout = datasets.split_items(items, "heldout")
    assert 0.15 <= len(heldout) / len(items) <= 0.25
    for item in items:
        assert item.answer in item.context, f"{item.id}: answer is not a span of its context"


def test_heldout_split_is_disjoint_from_train():
    items = datasets.load_qa()
    train, heldout = datasets.split_items(items, "train"), datasets.split_items(items, "heldout")
    assert train and heldout and len(train) + len(heldout) == len(items)
    assert not {i.id for i in train} & {i.id for i in heldout}
    assert not {i.question for i in train} & {i.question for i in heldout}
    assert not {i.context for i in train} & {i.context for i in heldout}


def test_fixed_prompts_are_one_word_heldout_answers():
    fixed = datasets.fixed_prompts()
    assert len(fixed) >= 3
    assert fixed[0].question == "What is the capital of France?" and fixed[0].answer == "Paris"
    assert all(len(item.answer.split()) == 1 and item.split == "heldout" for item in fixed)
    assert datasets.answer_matches("The capital of France is paris.", "Paris")
    assert not datasets.answer_matches("Lyon", "Paris")


def test_plain_format_masks_the_prompt_and_ends_with_eos():
    tokenizer = byte_tokenizer()
    ids, labels = datasets.encode_example(tokenizer, FRANCE)
    prompt = datasets.prompt_ids(tokenizer, FRANCE)
    assert ids[: len(prompt)] == prompt and labels[: len(prompt)] == [IGNORE_INDEX] * len(prompt)
    assert tokenizer.decode(prompt) == ("Context: France's capital is Paris.\n"
                                        "Question: What is the capital of France?\nAnswer:")
    assert answer_text(tokenizer, ids, labels) == " Paris</s>"


def test_chat_template_is_used_where_the_tokenizer_has_one():
    tokenizer = byte_tokenizer(CHAT)
    ids, labels = datasets.encode_example(tokenizer, FRANCE)
    prompt = tokenizer.decode(datasets.prompt_ids(tokenizer, FRANCE))
    assert prompt.startswith("<|user|>" + datasets.INSTRUCTION)
    assert prompt.endswith("France?<|end|><|assistant|>")
    assert answer_text(tokenizer, ids, labels) == "Paris<|end|>"  # the template's own end of turn
    bare = tokenizer.decode(datasets.prompt_ids(tokenizer, FRANCE, with_context=False))
    assert bare == "<|user|>What is the capital of France?<|end|><|assistant|>"


def test_a_template_whose_prompt_is_not_a_prefix_falls_back_to_prompt_plus_answer():
    tokenizer = byte_tokenizer(CHAT_NOT_PREFIX)
    ids, labels = datasets.encode_example(tokenizer, FRANCE)
    assert tokenizer.decode(ids).endswith("<|assistant|>\n Paris</s>")
    assert answer_text(tokenizer, ids, labels) == " Paris</s>"


def test_batches_have_one_fixed_shape_with_padding_masked():
    tokenizer = byte_tokenizer(CHAT)
    train = datasets.qa_batch(tokenizer, "train", batch_size=4)
    heldout = datasets.qa_batch(tokenizer, "heldout", batch_size=4)
    assert train["input_ids"].shape == heldout["input_ids"].shape
    assert train["input_ids"].shape[1] % 8 == 0
    padding = train["attention_mask"] == 0
    assert padding.any()
    assert (train["labels"][padding] == IGNORE_INDEX).all()
    assert (train["input_ids"][padding] == tokenizer.pad_token_id).all()
    for row in range(4):  # every row has an answer to learn
        assert (train["labels"][row] != IGNORE_INDEX).any()
    wrapped = datasets.qa_batch(tokenizer, "heldout", batch_size=4, start=len(datasets.split_items(
        datasets.load_qa(), "heldout")))
    assert (wrapped["input_ids"] == heldout["input_ids"]).all()  # items wrap in file order
    with pytest.raises(DatasetError, match="longer than seq_len 16"):
        datasets.qa_batch(tokenizer, "train", batch_size=2, seq_len=16)


def _rows():
    return [
        {"context": "Oslo is the capital of Norway.", "question": "What is the capital of Norway?",
         "answer": "Oslo", "split": "train"},
        {"context": "Lima is the capital of Peru.", "question": "What is the capital of Peru?",
         "answer": "Lima", "split": "heldout", "fixed": True, "source": "extra keys are ignored"},
    ]


def test_a_local_jsonl_file_loads(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in _rows()) + "\n\n")
    items = datasets.load_qa(path)
    assert [(i.id, i.split, i.fixed) for i in items] == [
        ("mine-1", "train", False), ("mine-2", "heldout", True)]
    batch = datasets.qa_batch(byte_tokenizer(), "heldout", batch_size=2, path=path)
    assert batch["input_ids"].shape[0] == 2


def test_a_local_parquet_file_loads(tmp_path):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow", reason="writing parquet here needs pyarrow")
    path = tmp_path / "mine.parquet"
    pd.DataFrame(_rows()).to_parquet(path)
    items = datasets.load_qa(path)
    assert [(i.answer, i.split, i.fixed) for i in items] == [
        ("Oslo", "train", False), ("Lima", "heldout", True)]


@pytest.mark.parametrize("line, message", [
    ('{"context": "c", "question": "q"}', "line 2: missing key 'answer'"),
    ('{"context": "c", "question": "q", "answer": 7}', "line 2: key 'answer' must be a non-empty string"),
    ('{"context": "c", "question": "q", "answer": "a", "split": "test"}',
     "line 2: key 'split' must be one of train, heldout"),
    ('{"context": "c", "question": "q", "answer": "a", "fixed": "yes"}',
     "line 2: key 'fixed' must be true or false"),
    ('{"context": "c", "question": "q", "answer": "a", "id": "one"}', "line 2: key 'id' 'one' repeats"),
    ('{"context": "c", "question": ', "line 2: not valid JSON"),
    ('["c", "q", "a"]', "line 2: expected an object"),
])
def test_a_malformed_jsonl_line_is_named_with_file_line_and_key(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": "one", "context": "c", "question": "q", "answer": "a"}\n' + line + "\n")
    with pytest.raises(DatasetError) as info:
        datasets.load_qa(path)
    assert str(info.value).startswith(str(path))
    assert message in str(info.value)


def test_a_malformed_parquet_row_is_named_with_file_row_and_key(tmp_path):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow", reason="writing parquet here needs pyarrow")
    rows = _rows()
    rows[1]["answer"] = None
    path = tmp_path / "bad.parquet"
    pd.DataFrame(rows).to_parquet(path)
    with pytest.raises(DatasetError, match=r"bad\.parquet row 2: missing key 'answer'"):
        datasets.load_qa(path)
    pd.DataFrame([{"context": "c", "question": "q"}]).to_parquet(path)
    with pytest.raises(DatasetError, match=r"bad\.parquet: missing column\(s\) 'answer'"):
        datasets.load_qa(path)


def test_other_bad_inputs_say_what_is_wrong(tmp_path):
    with pytest.raises(DatasetError, match="no such file"):
        datasets.load_qa(tmp_path / "absent.jsonl")
    (tmp_path / "data.csv").write_text("context,question,answer\n")
    with pytest.raises(DatasetError, match="unsupported file type '.csv'"):
        datasets.load_qa(tmp_path / "data.csv")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DatasetError, match="empty.jsonl: no items"):
        datasets.load_qa(tmp_path / "empty.jsonl")
    only_train = tmp_path / "train.jsonl"
    only_train.write_text(json.dumps(_rows()[0]) + "\n")
    with pytest.raises(DatasetError, match="no items in split 'heldout'"):
        datasets.qa_batch(byte_tokenizer(), "heldout", path=only_train)
