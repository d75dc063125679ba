"""A fine-tuned teacher's predictions as training targets (task distillation): the teacher's logits per
text, or per word for token tasks (so teacher and student may segment words differently), attached to the
student's training inputs together with unlabelled texts the teacher labelled.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from engine.data.batches import IGNORE_INDEX, length_grouped_batches, pad_batch
from engine.data.tasks import TaskData
from engine.evaluate.encoding import Encoded, align_words
from engine.events import CancelToken
from engine.models.loading import max_positions


@dataclass(frozen=True)
class Distillation:
    """A fine-tuned teacher's logits, columns in `TaskData.labels` order: `train[i]` for train example i, and
    `unlabelled` inputs (texts, or word tuples for token tasks) with `unlabelled_logits`. Per example a
    [labels] array (text tasks) or [words, labels] (token tasks; NaN rows for words the teacher cut).
    Each epoch passes over the train texts and the next `unlabelled_ratio` × as many unlabelled ones."""

    train: Sequence[np.ndarray]
    unlabelled: Sequence[str | tuple[str, ...]] = ()
    unlabelled_logits: Sequence[np.ndarray] = ()
    temperature: float = 2.0
    alpha: float = 0.5
    unlabelled_ratio: float = 3.0  # unlabelled texts per train text in each epoch


def with_teacher(tokenizer: Any, data: TaskData, train_set: Encoded, distillation: Distillation,
                 max_length: int) -> Encoded:
    """`train_set` with the teacher's logits attached, followed by the unlabelled inputs (no gold targets)."""
    if len(distillation.train) != len(train_set.input_ids) or len(distillation.unlabelled) != len(
            distillation.unlabelled_logits):
        raise ValueError("the teacher's logits do not match the texts")
    if not data.is_token_task:
        extra = tokenizer(list(distillation.unlabelled), truncation=True, max_length=max_length,
                          return_attention_mask=False, return_token_type_ids=False)["input_ids"] \
            if distillation.unlabelled else []
        soft = [torch.as_tensor(np.asarray(row), dtype=torch.float32)
                for row in (*distillation.train, *distillation.unlabelled_logits)]
        return Encoded([*train_set.input_ids, *map(list, extra)],
                       [*train_set.targets, *[IGNORE_INDEX] * len(extra)], None, soft)
    unlabelled = [list(words) for words in distillation.unlabelled]
    extra = align_words(tokenizer, unlabelled, [[IGNORE_INDEX] * len(w) for w in unlabelled], max_length) \
        if unlabelled else Encoded([], [], [])
    ids = [*train_set.input_ids, *extra.input_ids]
    positions = [*train_set.word_positions, *extra.word_positions]
    soft = []
    for row_ids, first, logits in zip(ids, positions, (*distillation.train, *distillation.unlabelled_logits),
                                      strict=True):
        row = torch.full((len(row_ids), np.shape(logits)[-1]), math.nan)
        for word, pos in enumerate(first):
            if pos is not None:
                row[pos] = torch.as_tensor(logits[word], dtype=torch.float32)
        soft.append(row)
    return Encoded(ids, [*train_set.targets, *extra.targets], positions, soft)


def teacher_logits(model: nn.Module, tokenizer: Any, inputs: Sequence[str | Sequence[str]], token_level: bool,
                   max_length: int = 128, batch_size: int = 32, device: str | torch.device = "cpu",
                   token: CancelToken | None = None) -> list[np.ndarray]:
    """A task model's logits on `inputs`: per text [labels], or per word [words, labels] (texts given as
    word sequences; a word's first sub-token's logits, NaN for words cut by `max_length`)."""
    if not inputs:
        return []
    max_length = min(max_length, max_positions(model.config))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    if token_level:
        words = [list(w) for w in inputs]
        enc = align_words(tokenizer, words, [[IGNORE_INDEX] * len(w) for w in words], max_length)
    else:
        ids = tokenizer(list(inputs), truncation=True, max_length=max_length, return_attention_mask=False,
                        return_token_type_ids=False)["input_ids"]
        enc = Encoded([list(row) for row in ids], [IGNORE_INDEX] * len(ids))
    model.eval().to(device)
    out: list[np.ndarray] = [np.empty(0)] * len(enc.input_ids)
    with torch.no_grad():
        for indices in length_grouped_batches(enc.input_ids, batch_size, 0, shuffle=False):
            if token is not None:
                token.raise_if_cancelled()
            batch = {k: v.to(device) for k, v in pad_batch(enc.input_ids, indices, pad_id).items()}
            logits = model(**batch).logits.float().cpu().numpy()
            for i, row in zip(indices, logits, strict=True):
                if enc.word_positions is None:
                    out[i] = row
                else:
                    first = enc.word_positions[i]
                    words_out = np.full((len(first), row.shape[-1]), np.nan, dtype=np.float32)
                    for w, pos in enumerate(first):
                        if pos is not None:
                            words_out[w] = row[pos]
                    out[i] = words_out
    return out
