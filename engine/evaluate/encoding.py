"""Model inputs for the task heads: texts and words as token ids with their targets (a word's tag on its
first sub-token only), batches of them, and the input embedding cut to the rows a task's texts use.

Token tasks (pos, ner) label the first sub-token of each word and ignore the others (-100); a
word's prediction is its first sub-token's. Words with no sub-token in the model input (cut by
`max_length`, or normalised away by the tokenizer) are predicted as the most frequent train tag,
so scores always count every gold word.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from engine.data.batches import IGNORE_INDEX
from engine.data.tasks import TaskData


@dataclass(frozen=True)
class Encoded:
    """Model inputs of one split. Token tasks: `targets` per token (-100 where ignored) and each
    word's first sub-token position (None when absent); text tasks: one target per example. `soft`: a
    teacher's logits to learn, per example ([labels]) or per token ([tokens, labels], NaN rows where none)."""

    input_ids: list[list[int]]
    targets: list[Any]
    word_positions: list[list[int | None]] | None = None
    soft: list[torch.Tensor] | None = None


def encode(tokenizer: Any, data: TaskData, examples: Sequence[Any], max_length: int) -> Encoded:
    """Token ids and targets of `examples`; labels outside `data.labels` get target -100 (dev and test
    are scored on label strings, and `finetune` rejects such labels in train)."""
    label_id = {label: i for i, label in enumerate(data.labels)}
    if not data.is_token_task:
        enc = tokenizer([ex.text for ex in examples], truncation=True, max_length=max_length,
                        return_attention_mask=False, return_token_type_ids=False)
        targets = [label_id.get(ex.label, IGNORE_INDEX) for ex in examples]
        return Encoded([list(ids) for ids in enc["input_ids"]], targets)
    words = [list(ex.words) for ex in examples]
    tags = [[label_id.get(t, IGNORE_INDEX) for t in ex.tags] for ex in examples]
    return align_words(tokenizer, words, tags, max_length)


def align_words(tokenizer: Any, words: list[list[str]], tags: list[list[int]], max_length: int) -> Encoded:
    """Sub-word ids with each word's tag on its first sub-token only (others -100)."""
    enc = tokenizer(words, is_split_into_words=True, truncation=True, max_length=max_length,
                    return_attention_mask=False, return_token_type_ids=False)
    targets, positions = [], []
    for i, sentence_tags in enumerate(tags):
        word_ids = enc.word_ids(i)
        first: list[int | None] = [None] * len(sentence_tags)
        row = [IGNORE_INDEX] * len(word_ids)
        for pos, w in enumerate(word_ids):
            if w is not None and first[w] is None:
                first[w] = pos
                row[pos] = sentence_tags[w]
        targets.append(row)
        positions.append(first)
    return Encoded([list(ids) for ids in enc["input_ids"]], targets, positions)


def words_from_tokens(token_preds: Sequence[int], positions: Sequence[int | None], labels: Sequence[str],
                      fallback: str) -> list[str]:
    """One tag per word: its first sub-token's prediction, or `fallback` when it has no sub-token."""
    return [fallback if pos is None else labels[token_preds[pos]] for pos in positions]


def most_frequent_tag(data: TaskData) -> str:
    """The most frequent train tag (ties: first in `data.labels`)."""
    counts = Counter(t for ex in data.train for t in ex.tags)
    return max(data.labels, key=lambda label: (counts[label], -data.labels.index(label)))


def batch_targets(enc: Encoded, indices: Sequence[int], width: int) -> torch.Tensor:
    """The targets of a batch of `indices`: one per text, or per token padded to `width` with -100."""
    if enc.word_positions is None:
        return torch.tensor([enc.targets[i] for i in indices], dtype=torch.long)
    out = torch.full((len(indices), width), IGNORE_INDEX, dtype=torch.long)
    for r, i in enumerate(indices):
        out[r, : len(enc.targets[i])] = torch.as_tensor(enc.targets[i], dtype=torch.long)
    return out


def batch_soft(enc: Encoded, indices: Sequence[int], width: int) -> torch.Tensor:
    """The teacher logits of a batch: [batch, labels], or [batch, width, labels] padded with NaN rows."""
    rows = [enc.soft[i] for i in indices]
    if enc.word_positions is None:
        return torch.stack(rows)
    out = torch.full((len(indices), width, rows[0].shape[-1]), math.nan)
    for r, row in enumerate(rows):
        out[r, : len(row)] = row
    return out


def compact_vocabulary(model: nn.Module, splits: Sequence[Encoded],
                       pad_id: int) -> tuple[list[Encoded], Callable[[], None]]:
    """Keep only the input-embedding rows that `splits` use, renumbering their ids (`pad_id` and every
    id below it keep their numbers, so padding and position rules are unchanged); also returns `restore`,
    which puts the full table back with the trained rows written into it (ids as the tokenizer gives them).

    A row no input uses gets no gradient, so the model trains and scores exactly as with every row,
    but backward, clipping and AdamW no longer sweep the whole vocabulary: for a 250k-piece teacher
    that is 96M of its 118M parameters.
    """
    embeddings = model.get_input_embeddings()
    low = max(pad_id, embeddings.padding_idx if embeddings.padding_idx is not None else 0) + 1
    used = sorted(set(range(low)).union(*(ids for enc in splits for ids in enc.input_ids)))
    if len(used) >= embeddings.num_embeddings:
        return list(splits), lambda: None
    compact = nn.Embedding(len(used), embeddings.embedding_dim, padding_idx=embeddings.padding_idx,
                           device=embeddings.weight.device, dtype=embeddings.weight.dtype)
    with torch.no_grad():
        compact.weight.copy_(embeddings.weight[used])
    model.set_input_embeddings(compact)
    new_id = np.zeros(max(used) + 1, dtype=np.int64)
    new_id[used] = np.arange(len(used))

    def restore() -> None:
        with torch.no_grad():
            embeddings.weight[used] = compact.weight.to(embeddings.weight.device)
        model.set_input_embeddings(embeddings)

    return [replace(enc, input_ids=[new_id[ids].tolist() for ids in enc.input_ids]) for enc in splits], restore
