"""Tokenisation, length-grouped dynamic-padding batches, BERT-style MLM masking, and the
resumable endless batch stream the training loop consumes."""

from __future__ import annotations

import random
from array import array
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from engine.data.corpus import derive_seed, take
from engine.errors import CorpusError, ModelError

MEGABATCH_FACTOR = 50
IGNORE_INDEX = -100
TOKEN_CACHE_LINES = 20_000  # tokenised lines a BatchStream keeps (a small corpus: all of it)
MEGABATCH_CACHE = 8  # length-sorted mega-batches a BatchStream keeps


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


class TokenizedTexts(Sequence[Any]):
    """The token ids of `texts` (with special tokens, truncated), tokenised when first asked for: the latest
    `capacity` lines are kept (int32 arrays), so memory stays bounded whatever the number of texts."""

    def __init__(self, tokenizer: Any, texts: Sequence[str], max_length: int,
                 capacity: int = TOKEN_CACHE_LINES) -> None:
        self.tokenizer, self.texts, self.max_length, self.capacity = tokenizer, texts, max_length, capacity
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, index: int) -> np.ndarray:  # type: ignore[override]
        return self.many([index])[0]

    def many(self, indices: Sequence[int]) -> list[np.ndarray]:
        """The ids of these texts, tokenising those not kept in one batched call."""
        missing = sorted({i for i in indices if i not in self._cache})
        fresh = dict(zip(missing, tokenize(self.tokenizer, take(self.texts, missing), self.max_length), strict=True))
        found = []
        for i in indices:
            if i in fresh:
                ids = np.asarray(fresh[i], dtype=np.int32)
                self._cache[i] = ids
            else:
                ids = self._cache[i]
                self._cache.move_to_end(i)
            found.append(ids)
        while len(self._cache) > self.capacity:
            self._cache.popitem(last=False)
        return found


class BatchStream:

    """Endless, resumable stream of length-grouped, dynamically padded (optionally masked) batches.

    Epoch e uses an order derived from (seed, e) and step k's masking from (seed, k), so batch k
    is the same whether reached directly (`start_step=k`, `load_state`) or by iterating.

    The batches are exactly `length_grouped_batches(all token ids, batch_size, epoch seed)`, but only the
    mega-batch a batch comes from is tokenised (`TokenizedTexts`), so a corpus of any size costs memory
    for its epoch's order only (8 bytes a line), never for its text or token ids.
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
        self.sequences = TokenizedTexts(tokenizer, texts, max_length)
        full, rest = divmod(len(texts), MEGABATCH_FACTOR * batch_size)
        self.batches_per_epoch = MEGABATCH_FACTOR * full + -(-rest // batch_size)
        self.step = start_step
        self._epoch: tuple[int, array, array] | None = None  # epoch, line order, batch order
        self._megabatches: OrderedDict[int, list[int]] = OrderedDict()

    def state(self) -> dict[str, int]:
        """What a checkpoint stores: the number of batches already handed out."""
        return {"step": self.step, "seed": self.seed}

    def load_state(self, state: dict[str, int]) -> None:
        if state.get("seed", self.seed) != self.seed:
            raise ValueError(f"Checkpoint was made with seed {state['seed']}, this stream uses {self.seed}.")
        self.step = int(state["step"])

    def epoch_order(self, epoch: int) -> list[list[int]]:
        """Batches (index lists) of one epoch, derived from seed and epoch alone (tokenises the whole epoch)."""
        return [self.batch_indices(epoch, position) for position in range(self.batches_per_epoch)]

    def batch_indices(self, epoch: int, position: int) -> list[int]:
        """The text indices of batch `position` of `epoch`: `length_grouped_batches` with the epoch's seed,
        computed from its mega-batch alone."""
        if self._epoch is None or self._epoch[0] != epoch:
            # the same random calls as length_grouped_batches: shuffle the lines, then the batches (whose
            # count does not depend on the lengths); array.shuffle keeps 8 bytes a line, not a list of ints
            rng = random.Random(derive_seed(self.seed, "epoch", epoch))
            order, batches = array("q", range(len(self.sequences))), array("q", range(self.batches_per_epoch))
            rng.shuffle(order)
            rng.shuffle(batches)
            self._epoch = (epoch, order, batches)
            self._megabatches.clear()
        _, order, batches = self._epoch
        mega, within = divmod(batches[position], MEGABATCH_FACTOR)
        if mega not in self._megabatches:
            size = MEGABATCH_FACTOR * self.batch_size
            members = order[mega * size : (mega + 1) * size].tolist()
            lengths = dict(zip(members, map(len, self.sequences.many(members)), strict=True))
            self._megabatches[mega] = sorted(members, key=lengths.__getitem__, reverse=True)
            if len(self._megabatches) > MEGABATCH_CACHE:
                self._megabatches.popitem(last=False)
        return self._megabatches[mega][within * self.batch_size : (within + 1) * self.batch_size]

    def batch(self, step: int) -> Batch:
        """Batch number `step` (0-based, counted across epochs)."""
        epoch, position = divmod(step, self.batches_per_epoch)
        rows = self.sequences.many(self.batch_indices(epoch, position))
        tensors = pad_batch(rows, range(len(rows)), self.pad_id)
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
