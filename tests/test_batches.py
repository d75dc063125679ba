"""Tokenisation, length-grouped dynamic padding, MLM masking and the resumable batch stream."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import pytest
import torch
from transformers import BertTokenizerFast

from engine.data.batches import (
    IGNORE_INDEX,
    BatchStream,
    length_grouped_batches,
    mask_tokens,
    pad_batch,
    tokenize,
)

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = [f"w{i}" for i in range(195)]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> BertTokenizerFast:
    folder: Path = tmp_path_factory.mktemp("tok")
    (folder / "vocab.txt").write_text("\n".join(SPECIALS + WORDS) + "\n", encoding="utf-8")
    return BertTokenizerFast.from_pretrained(folder)


def make_texts(count: int, seed: int = 0, longest: int = 60) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=rng.randint(1, longest))) for _ in range(count)]


def padding(sequences: list[list[int]], batches: list[list[int]]) -> int:
    return sum(
        max(len(sequences[i]) for i in b) * len(b) - sum(len(sequences[i]) for i in b) for b in batches
    )


def test_tokenize_adds_specials_and_truncates(tokenizer: BertTokenizerFast) -> None:
    ids = tokenize(tokenizer, ["w1 w2", " ".join(WORDS[:40])], max_length=16)
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    assert ids[0] == [cls, tokenizer.convert_tokens_to_ids("w1"), tokenizer.convert_tokens_to_ids("w2"), sep]
    assert len(ids[1]) == 16 and ids[1][0] == cls and ids[1][-1] == sep
    assert tokenize(tokenizer, [], 16) == []


def test_pad_batch_pads_to_longest_in_batch_only() -> None:
    sequences = [[2, 7, 3], [2, 7, 8, 9, 10, 3], [2, 3]]
    batch = pad_batch(sequences, [0, 2], pad_id=0)
    assert batch["input_ids"].tolist() == [[2, 7, 3], [2, 3, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    batch = pad_batch(sequences, [1, 0], pad_id=0)
    assert batch["input_ids"].shape == (2, 6) and batch["attention_mask"].sum().item() == 9
    assert batch["input_ids"].dtype == torch.long


def test_length_grouped_batches_cover_all_and_are_deterministic(tokenizer: BertTokenizerFast) -> None:
    sequences = tokenize(tokenizer, make_texts(1000), max_length=64)
    batches = length_grouped_batches(sequences, batch_size=8, seed=1)
    assert sorted(i for b in batches for i in b) == list(range(1000))
    assert all(1 <= len(b) <= 8 for b in batches)
    assert length_grouped_batches(sequences, 8, seed=1) == batches
    assert length_grouped_batches(sequences, 8, seed=2) != batches
    ordered = length_grouped_batches(sequences, 8, seed=1, shuffle=False)
    flat = [len(sequences[i]) for b in ordered for i in b]
    assert flat == sorted(flat, reverse=True)
    with pytest.raises(ValueError):
        length_grouped_batches(sequences, 0, seed=1)


def test_length_grouping_reduces_padding(tokenizer: BertTokenizerFast) -> None:
    sequences = tokenize(tokenizer, make_texts(2000, seed=5), max_length=64)
    grouped = length_grouped_batches(sequences, batch_size=16, seed=0)
    order = list(range(len(sequences)))
    random.Random(0).shuffle(order)
    plain = [order[i : i + 16] for i in range(0, len(order), 16)]
    assert padding(sequences, grouped) < 0.2 * padding(sequences, plain)
    # The batch order is shuffled, not a run of longest-to-shortest blocks per mega-batch.
    widths = [max(len(sequences[i]) for i in b) for b in grouped]
    assert sum(a < b for a, b in itertools.pairwise(widths)) > len(widths) // 4


def masked_batch(tokenizer: BertTokenizerFast, count: int = 400, seed: int = 0) -> dict[str, torch.Tensor]:
    sequences = tokenize(tokenizer, make_texts(count, seed=seed), max_length=64)
    return pad_batch(sequences, list(range(count)), tokenizer.pad_token_id)


def test_mask_tokens_rates_and_exclusions(tokenizer: BertTokenizerFast) -> None:
    batch = masked_batch(tokenizer)
    ids, attention = batch["input_ids"], batch["attention_mask"]
    gen = torch.Generator().manual_seed(0)
    masked, labels = mask_tokens(
        ids, attention, tokenizer, tokenizer.mask_token_id, len(tokenizer), generator=gen
    )
    special = torch.isin(ids, torch.tensor(tokenizer.all_special_ids))
    maskable = attention.bool() & ~special
    chosen = labels != IGNORE_INDEX
    assert maskable.sum() > 10_000
    assert not (chosen & ~maskable).any()  # never specials or padding
    assert torch.equal(masked[~chosen], ids[~chosen])  # nothing else changes
    assert torch.equal(labels[chosen], ids[chosen])
    rate = chosen.sum().item() / maskable.sum().item()
    assert 0.14 < rate < 0.165
    n = chosen.sum().item()
    to_mask = (masked == tokenizer.mask_token_id) & chosen
    kept = (masked == ids) & chosen
    swapped = chosen & ~to_mask & ~kept
    assert abs(to_mask.sum().item() / n - 0.8) < 0.03
    assert abs(kept.sum().item() / n - 0.1) < 0.03  # includes the rare random id equal to the original
    assert abs(swapped.sum().item() / n - 0.1) < 0.03
    random_ids = masked[swapped]
    assert (random_ids < len(tokenizer)).all()
    assert not torch.isin(random_ids, torch.tensor(tokenizer.all_special_ids)).any()


def test_mask_tokens_deterministic_and_at_least_one_per_sequence(tokenizer: BertTokenizerFast) -> None:
    batch = masked_batch(tokenizer, count=50, seed=1)
    ids, attention = batch["input_ids"], batch["attention_mask"]
    # A row made only of specials and padding has nothing to mask.
    ids = torch.cat([ids, torch.full((1, ids.shape[1]), tokenizer.pad_token_id)])
    ids[-1, :2] = torch.tensor([tokenizer.cls_token_id, tokenizer.sep_token_id])
    attention = torch.cat([attention, torch.zeros((1, ids.shape[1]), dtype=torch.long)])
    attention[-1, :2] = 1

    def run(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        gen = torch.Generator().manual_seed(seed)
        return mask_tokens(
            ids,
            attention,
            tokenizer,
            tokenizer.mask_token_id,
            len(tokenizer),
            probability=0.001,
            generator=gen,
        )

    masked, labels = run(7)
    per_row = (labels != IGNORE_INDEX).sum(dim=1)
    assert (per_row[:-1] >= 1).all() and per_row[-1] == 0
    again = run(7)
    assert torch.equal(again[0], masked) and torch.equal(again[1], labels)
    assert not torch.equal(run(8)[1], labels)


def test_mask_tokens_with_special_mask_tensor(tokenizer: BertTokenizerFast) -> None:
    batch = masked_batch(tokenizer, count=100, seed=2)
    ids, attention = batch["input_ids"], batch["attention_mask"]
    special = torch.isin(ids, torch.tensor(tokenizer.all_special_ids))
    gen = torch.Generator().manual_seed(0)
    masked, labels = mask_tokens(
        ids, attention, special, tokenizer.mask_token_id, len(tokenizer), probability=0.5, generator=gen
    )
    chosen = labels != IGNORE_INDEX
    assert not (chosen & special).any() and chosen.any()
    swapped = chosen & (masked != ids) & (masked != tokenizer.mask_token_id)
    assert not torch.isin(masked[swapped], ids[special]).any()


def test_batch_stream_epochs_tokens_and_resume(tokenizer: BertTokenizerFast) -> None:
    texts = make_texts(90, seed=3)
    stream = BatchStream(tokenizer, texts, max_length=32, batch_size=8, seed=11, mlm_probability=0.15)
    assert stream.batches_per_epoch == 12
    full = list(itertools.islice(iter(stream), 30))
    assert [b.step for b in full] == list(range(30)) and full[12].epoch == 1
    assert stream.state()["step"] == 30
    for b in full:
        assert b.real_tokens == int(b.attention_mask.sum())
        assert b.input_ids.shape[1] == max(
            len(stream.sequences[i]) for i in stream.epoch_order(b.epoch)[b.step % stream.batches_per_epoch]
        )
        assert b.labels is not None and (b.labels != IGNORE_INDEX).any()
    # Each epoch uses every sequence once, in a new order.
    first, second = stream.epoch_order(0), stream.epoch_order(1)
    assert sorted(i for b in first for i in b) == list(range(90)) and first != second

    interrupted = BatchStream(tokenizer, texts, max_length=32, batch_size=8, seed=11, mlm_probability=0.15)
    head = list(itertools.islice(iter(interrupted), 17))
    saved = interrupted.state()
    resumed = BatchStream(tokenizer, texts, max_length=32, batch_size=8, seed=11, mlm_probability=0.15)
    resumed.load_state(saved)
    tail = list(itertools.islice(iter(resumed), 13))
    for a, b in zip(full, head + tail, strict=True):
        assert a.step == b.step
        assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.labels, b.labels)
    started = BatchStream(tokenizer, texts, 32, 8, seed=11, mlm_probability=0.15, start_step=25)
    assert torch.equal(next(iter(started)).input_ids, full[25].input_ids)
    with pytest.raises(ValueError, match="seed"):
        BatchStream(tokenizer, texts, 32, 8, seed=12).load_state(saved)


def test_batch_stream_without_masking(tokenizer: BertTokenizerFast) -> None:
    stream = BatchStream(tokenizer, ["w1 w2 w3", "w4"], max_length=32, batch_size=4, seed=0)
    batch = next(iter(stream))
    assert batch.labels is None and set(batch.inputs) == {"input_ids", "attention_mask"}
    assert batch.input_ids.shape == (2, 5) and batch.real_tokens == 8
