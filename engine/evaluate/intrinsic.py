"""Intrinsic metrics on held-out text: masked-token accuracy, and how faithfully a student reproduces
its teacher's representations.

Masked-token accuracy needs an MLM head (`LoadedModel.has_mlm_head`); it raises `ModelError` for a
bare encoder, so callers check `has_mlm_head` first. Every function runs in eval mode under
`torch.inference_mode` on the model's own device and restores the model's training flag afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.data.batches import IGNORE_INDEX, BatchStream, pad_batch, tokenize
from engine.errors import CorpusError, ModelError
from engine.models.loading import LoadedModel

MLM_PROBABILITY = 0.15


@contextmanager
def evaluating(model: nn.Module) -> Iterator[None]:
    """Eval mode and inference mode for the duration; the training flag is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


def device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _texts(texts: Sequence[str], metric: str) -> list[str]:
    kept = [t for t in texts if t.strip()]
    if not kept:
        raise CorpusError(f"{metric}: no held-out text (all {len(texts)} texts are empty)")
    return kept


def _mlm_head(model: LoadedModel, metric: str) -> nn.Module:
    head = model.adapter.mlm_module(model.model)
    if head is None:
        raise ModelError(f"{metric} needs an MLM head, and {model.source or 'this model'} has none "
                         "(it is a bare encoder)")
    if model.tokenizer.mask_token_id is None:
        raise ModelError(f"{metric}: the tokenizer of {model.source or 'this model'} has no mask token")
    return head


def masked_token_accuracy(model: LoadedModel, texts: Sequence[str], *, max_length: int = 128,
                          batch_size: int = 16, seed: int = 0) -> dict[str, Any]:
    """Share of masked positions where the model's top prediction is the original token.

    Masking is BERT's (15% of non-special tokens, at least one per text; of those 80% become the
    mask token, 10% a random token, 10% stay) from `BatchStream` with `seed`, so the same texts and
    seed give the same positions on every run and for every model sharing a tokenizer. Returns
    `accuracy`, `loss` (mean cross-entropy at the masked positions), `masked_tokens` and `texts`.
    Raises ModelError when the model has no MLM head.
    """
    head = _mlm_head(model, "masked-token accuracy")
    texts = _texts(texts, "masked-token accuracy")
    stream = BatchStream(model.tokenizer, texts, max_length, batch_size, seed, mlm_probability=MLM_PROBABILITY)
    base, device = model.adapter.base(model.model), device_of(model.model)
    correct, total, nll = 0, 0, 0.0
    with evaluating(model.model):
        for step in range(stream.batches_per_epoch):
            batch = stream.batch(step).to(device)
            picked = batch.labels != IGNORE_INDEX
            hidden = base(**batch.inputs).last_hidden_state[picked]
            logits, targets = head(hidden).float(), batch.labels[picked]
            correct += int((logits.argmax(dim=-1) == targets).sum())
            nll += float(F.cross_entropy(logits, targets, reduction="sum"))
            total += targets.numel()
    if total == 0:
        raise CorpusError("masked-token accuracy: the texts have no maskable (non-special) tokens")
    return {"accuracy": correct / total, "loss": nll / total, "masked_tokens": total, "texts": len(texts)}


def _states(model: LoadedModel, ids: list[list[int]], indices: list[int],
            device: torch.device) -> tuple[Tensor, Tensor]:
    """Last hidden states (float) and attention mask of the texts `indices`, padded to their longest."""
    pad_id = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
    batch = pad_batch(ids, indices, pad_id)
    mask = batch["attention_mask"].to(device)
    hidden = model.adapter.base(model.model)(input_ids=batch["input_ids"].to(device), attention_mask=mask)
    return hidden.last_hidden_state.float(), mask


def _mean_pool(hidden: Tensor, mask: Tensor) -> Tensor:
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def _similarity_correlation(a: Tensor, b: Tensor) -> float | None:
    """Pearson correlation of the upper triangles of the texts' cosine-similarity matrices."""
    if a.shape[0] < 3:
        return None
    upper = torch.triu_indices(a.shape[0], a.shape[0], offset=1)
    sims = []
    for emb in (a, b):
        unit = F.normalize(emb.double(), dim=-1)
        sims.append((unit @ unit.T)[upper[0], upper[1]])
    x, y = (s - s.mean() for s in sims)
    denominator = float(x.norm() * y.norm())
    return float(x @ y) / denominator if denominator > 0 else None


def representation_fidelity(teacher: LoadedModel, student: LoadedModel, texts: Sequence[str], *,
                            max_length: int = 128, batch_size: int = 16) -> dict[str, Any]:
    """How closely the student's last hidden states follow the teacher's on the same texts.

    Each model tokenises the texts with its own tokenizer. Sentence embeddings are the mean of the
    last hidden states over real (attention-mask) tokens, special tokens included.

    - `similarity_correlation` (always, when there are >= 3 texts; else None): for each model the
      cosine-similarity matrix of the texts' sentence embeddings; the Pearson correlation of the two
      matrices' upper triangles. It needs no common space, so it also compares models of different
      widths.
    - `sentence_cosine`: mean over texts of the cosine between teacher and student sentence
      embeddings. None when hidden sizes differ: nothing is fitted to map one space onto the other.
    - `token_cosine`: mean over tokens of the cosine between teacher and student token states, over
      the texts whose token strings are identical for both tokenizers (e.g. after vocabulary
      trimming that did not change the segmentation). None when widths differ or no text aligns.
    - `aligned_fraction`: the share of texts whose token strings are identical.
    - `texts`: the number of non-empty texts compared.
    """
    texts = _texts(texts, "representation fidelity")
    t_ids = tokenize(teacher.tokenizer, texts, max_length)
    s_ids = tokenize(student.tokenizer, texts, max_length)
    aligned = [teacher.tokenizer.convert_ids_to_tokens(a) == student.tokenizer.convert_ids_to_tokens(b)
               for a, b in zip(t_ids, s_ids, strict=True)]
    same_width = teacher.config.hidden_size == student.config.hidden_size
    t_device, s_device = device_of(teacher.model), device_of(student.model)
    t_embs, s_embs, token_cos = [], [], []
    with evaluating(teacher.model), evaluating(student.model):
        for start in range(0, len(texts), batch_size):
            indices = list(range(start, min(start + batch_size, len(texts))))
            t_hidden, t_mask = _states(teacher, t_ids, indices, t_device)
            s_hidden, s_mask = _states(student, s_ids, indices, s_device)
            t_embs.append(_mean_pool(t_hidden, t_mask).cpu())
            s_embs.append(_mean_pool(s_hidden, s_mask).cpu())
            if not same_width:
                continue
            for row, index in enumerate(indices):
                if aligned[index]:
                    n = len(t_ids[index])
                    token_cos.append(F.cosine_similarity(t_hidden[row, :n].cpu(), s_hidden[row, :n].cpu(), dim=-1))
    t_emb, s_emb = torch.cat(t_embs), torch.cat(s_embs)
    sentence_cosine = float(F.cosine_similarity(t_emb, s_emb, dim=-1).mean()) if same_width else None
    token_cosine = float(torch.cat(token_cos).mean()) if token_cos else None
    return {
        "sentence_cosine": sentence_cosine,
        "token_cosine": token_cosine,
        "similarity_correlation": _similarity_correlation(t_emb, s_emb),
        "aligned_fraction": sum(aligned) / len(texts),
        "texts": len(texts),
    }


def best_cka(teacher_layers: Sequence[Tensor], student_layers: Sequence[Tensor]) -> list[float]:
    """For each teacher layer, the best linear centred kernel alignment (Kornblith et al. 2019) any student
    layer reaches with it, over row-matched features (widths may differ): 1 for representations equal up to
    rotation and scale, near 0 for unrelated ones. Each layer is centred and its Gram norm taken once; only
    the cross terms are computed per pair."""

    def centred(layers: Sequence[Tensor]) -> list[tuple[Tensor, float]]:
        out = []
        for layer in layers:
            x = layer.double()
            x = x - x.mean(0)
            out.append((x, float((x.T @ x).norm())))
        return out

    students = centred(student_layers)
    best = []
    for x, x_norm in centred(teacher_layers):
        best.append(max(float((y.T @ x).pow(2).sum()) / (x_norm * y_norm) if x_norm * y_norm > 0 else 0.0
                        for y, y_norm in students))
    return best


def layer_fidelity(teacher: LoadedModel, student: LoadedModel, texts: Sequence[str], *, max_texts: int = 200,
                   max_length: int = 128, batch_size: int = 16) -> dict[str, Any]:
    """How much of each teacher layer the student reproduces somewhere: for every teacher layer, the
    best linear CKA any student layer reaches with it, over the tokens of the texts both tokenizers
    segment identically. `fidelity` is the mean over teacher layers (1.0 for the teacher itself);
    `by_layer` lists the per-layer values; `tokens` and `texts` say how much was compared."""
    texts = _texts(texts, "layer fidelity")[:max_texts]
    t_ids = tokenize(teacher.tokenizer, texts, max_length)
    s_ids = tokenize(student.tokenizer, texts, max_length)
    aligned = [i for i, (a, b) in enumerate(zip(t_ids, s_ids, strict=True))
               if teacher.tokenizer.convert_ids_to_tokens(a) == student.tokenizer.convert_ids_to_tokens(b)]
    if not aligned:
        raise CorpusError("layer fidelity: no held-out text is segmented the same by teacher and student")
    states: dict[str, list[list[Tensor]]] = {"teacher": [], "student": []}
    with evaluating(teacher.model), evaluating(student.model):
        for start in range(0, len(aligned), batch_size):
            indices = aligned[start : start + batch_size]
            for name, model, ids in (("teacher", teacher, t_ids), ("student", student, s_ids)):
                pad_id = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
                batch = pad_batch(ids, indices, pad_id)
                device = device_of(model.model)
                mask = batch["attention_mask"].bool()
                out = model.adapter.base(model.model)(input_ids=batch["input_ids"].to(device),
                                                      attention_mask=mask.to(device), output_hidden_states=True)
                states[name].append([h[mask.to(h.device)].float().cpu() for h in out.hidden_states[1:]])
    teacher_layers = [torch.cat(layer) for layer in zip(*states["teacher"], strict=True)]
    student_layers = [torch.cat(layer) for layer in zip(*states["student"], strict=True)]
    by_layer = best_cka(teacher_layers, student_layers)
    return {"fidelity": sum(by_layer) / len(by_layer), "by_layer": by_layer,
            "tokens": int(teacher_layers[0].shape[0]), "texts": len(aligned)}


def stage_quality(teacher: LoadedModel, student: LoadedModel, texts: Sequence[str]) -> dict[str, Any]:
    """What a stage kept, without labelled data: `layer_fidelity` to the run's teacher and, when the
    student has an MLM head, its masked-token accuracy on the same held-out texts."""
    quality: dict[str, Any] = layer_fidelity(teacher, student, texts)
    if student.has_mlm_head and student.tokenizer.mask_token_id is not None:
        quality["masked_accuracy"] = masked_token_accuracy(student, texts[:200])["accuracy"]
    return quality


GATED = {"fidelity": "fidelity", "masked_accuracy": "masked-token accuracy", "retrieval_top1": "retrieval top-1"}


def quality_drops(
    before: Mapping[str, Any], after: Mapping[str, Any], allowed: float
) -> list[tuple[str, float, float]]:
    """The label-free measures (`GATED`) that fell by more than `allowed` (absolute) from `before` to `after`,
    as (name, before, after); a measure missing on either side is not compared."""
    return [(name, before[name], after[name]) for name in GATED
            if before.get(name) is not None and after.get(name) is not None and before[name] - after[name] > allowed]
