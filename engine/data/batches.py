"""Tokenisation, length-grouped dynamic-padding batches, BERT-style MLM masking, and the
resumable endless batch stream the training loop consumes."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from engine.data.corpus import derive_seed
from engine.errors import CorpusError, ModelError

MEGABATCH_FACTOR = 50
IGNORE_INDEX = -100


def tokenize(tokenizer: Any, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """Token ids of each text with special tokens, truncated to `max_length` (one batched call)."""
    if not texts:
        return []
    encoded = tokenizer(
        list(texts),
        add_special_tokens=True,
        truncation=True,
        max_length=max_length,
        return_attention_mask=False,
        return_token_type_ids=False,
    )
    return [list(ids) for ids in encoded["input_ids"]]


def length_grouped_batches(
    sequences: Sequence[Sequence[int]], batch_size: int, seed: int, shuffle: bool = True
) -> list[list[int]]:
    """Batches of indices into `sequences` with similar lengths.

    shuffle=True: shuffle, sort by length (longest first) inside mega-batches of
    50 x batch_size, cut into batches, shuffle the batch order; deterministic for a seed.
    shuffle=False: all indices sorted by length (longest first), for evaluation.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = list(range(len(sequences)))

    def by_length(indices: list[int]) -> list[int]:
        return sorted(indices, key=lambda i: len(sequences[i]), reverse=True)

    if not shuffle:
        ordered = by_length(order)
        return [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]
    rng = random.Random(seed)
    rng.shuffle(order)
    mega = MEGABATCH_FACTOR * batch_size
    batches = []
    for start in range(0, len(order), mega):
        group = by_length(order[start : start + mega])
        batches.extend(group[i : i + batch_size] for i in range(0, len(group), batch_size))
    rng.shuffle(batches)
    return batches


def pad_batch(
    sequences: Sequence[Sequence[int]], indices: Sequence[int], pad_id: int
) -> dict[str, torch.Tensor]:
    """`input_ids` and `attention_mask` right-padded to the longest sequence of this batch only."""
    rows = [sequences[i] for i in indices]
    width = max(map(len, rows))
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, ids in enumerate(rows):
        input_ids[r, : len(ids)] = torch.as_tensor(ids, dtype=torch.long)
        attention_mask[r, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def mask_tokens(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    special: torch.Tensor | Any,
    mask_id: int,
    vocab_size: int,
    *,
    probability: float = 0.15,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking: choose `probability` of the maskable positions (never special tokens or
    padding; at least one per sequence that has a maskable token); of those 80% -> mask_id,
    10% -> a random real, non-special token id, 10% unchanged. Labels are -100 elsewhere.

    `special` is a bool tensor marking special positions, or a tokenizer (its special ids are
    used; random ids stay below len(tokenizer)). With a bool tensor, random ids avoid the ids
    found at special positions and `mask_id`.
    """
    if isinstance(special, torch.Tensor):
        special_mask = special.bool()
        excluded = torch.unique(torch.cat([input_ids[special_mask], torch.tensor([mask_id])]))
    else:
        excluded = torch.tensor(sorted(set(special.all_special_ids) | {mask_id}), dtype=torch.long)
        special_mask = torch.isin(input_ids, excluded)
        vocab_size = min(vocab_size, len(special))
    maskable = attention_mask.bool() & ~special_mask
    shape = input_ids.shape

    chosen = (torch.rand(shape, generator=generator) < probability) & maskable
    fallback_scores = torch.rand(shape, generator=generator).masked_fill(~maskable, -1.0)
    needs_one = maskable.any(dim=1) & ~chosen.any(dim=1)
    fallback = torch.zeros_like(chosen)
    fallback[torch.arange(shape[0]), fallback_scores.argmax(dim=1)] = True
    chosen |= fallback & needs_one.unsqueeze(1)

    action = torch.rand(shape, generator=generator)
    allowed = torch.arange(vocab_size)
    allowed = allowed[~torch.isin(allowed, excluded)]
    if len(allowed) == 0:
        raise ModelError("The vocabulary has no non-special tokens to use as random replacements.")
    random_ids = allowed[torch.randint(len(allowed), shape, generator=generator)]

    masked = input_ids.clone()
    masked[chosen & (action < 0.8)] = mask_id
    swap = chosen & (action >= 0.8) & (action < 0.9)
    masked[swap] = random_ids[swap]
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    return masked, labels


@dataclass(frozen=True)
class Batch:
    """One training batch; `labels` is None when masking is off."""

    step: int
    epoch: int
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor | None
    real_tokens: int

    @property
    def inputs(self) -> dict[str, torch.Tensor]:
        """Keyword arguments for a Hugging Face encoder's forward."""
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask}

    def to(self, device: torch.device | str) -> Batch:
        labels = None if self.labels is None else self.labels.to(device)
        return replace(
            self,
            input_ids=self.input_ids.to(device),
            attention_mask=self.attention_mask.to(device),
            labels=labels,
        )


class BatchStream:
    """Endless, resumable stream of length-grouped, dynamically padded (optionally masked) batches.

    Epoch e uses an order derived from (seed, e) and step k's masking from (seed, k), so batch k
    is the same whether reached directly (`start_step=k`, `load_state`) or by iterating.
    """

    def __init__(
        self,
        tokenizer: Any,
        texts: Sequence[str],
        max_length: int,
        batch_size: int,
        seed: int,
        *,
        mlm_probability: float | None = None,
        start_step: int = 0,
    ) -> None:
        if not texts:
            raise CorpusError("No text to build training batches from.")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if mlm_probability is not None and tokenizer.mask_token_id is None:
            raise ModelError("The tokenizer has no mask token, so MLM masking is impossible.")
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.seed = seed
        self.mlm_probability = mlm_probability
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.sequences = tokenize(tokenizer, texts, max_length)
        self.batches_per_epoch = len(length_grouped_batches(self.sequences, batch_size, seed))
        self.step = start_step
        self._epoch_cache: tuple[int, list[list[int]]] | None = None

    def state(self) -> dict[str, int]:
        """What a checkpoint stores: the number of batches already handed out."""
        return {"step": self.step, "seed": self.seed}

    def load_state(self, state: dict[str, int]) -> None:
        if state.get("seed", self.seed) != self.seed:
            raise ValueError(f"Checkpoint was made with seed {state['seed']}, this stream uses {self.seed}.")
        self.step = int(state["step"])

    def epoch_order(self, epoch: int) -> list[list[int]]:
        """Batches (index lists) of one epoch, derived from seed and epoch alone."""
        if self._epoch_cache is None or self._epoch_cache[0] != epoch:
            order = length_grouped_batches(
                self.sequences, self.batch_size, derive_seed(self.seed, "epoch", epoch)
            )
            self._epoch_cache = (epoch, order)
        return self._epoch_cache[1]

    def batch(self, step: int) -> Batch:
        """Batch number `step` (0-based, counted across epochs)."""
        epoch, position = divmod(step, self.batches_per_epoch)
        tensors = pad_batch(self.sequences, self.epoch_order(epoch)[position], self.pad_id)
        input_ids, attention_mask = tensors["input_ids"], tensors["attention_mask"]
        labels = None
        if self.mlm_probability is not None:
            generator = torch.Generator().manual_seed(derive_seed(self.seed, "mask", step))
            input_ids, labels = mask_tokens(
                input_ids,
                attention_mask,
                self.tokenizer,
                self.tokenizer.mask_token_id,
                len(self.tokenizer),
                probability=self.mlm_probability,
                generator=generator,
            )
        return Batch(step, epoch, input_ids, attention_mask, labels, int(attention_mask.sum()))

    def __iter__(self) -> Iterator[Batch]:
        while True:
            batch = self.batch(self.step)
            self.step += 1
            yield batch
