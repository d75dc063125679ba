"""Linear probes on frozen features: the fast, deterministic way to compare a teacher and its students.

A model's hidden states are computed once per task (every split, a few layers), then a multinomial
logistic regression is fitted to convergence by L-BFGS on standardised features. The layer (at a
middle L2 strength), then the L2 strength, are chosen by dev log-loss (smoother than accuracy or F1
on small dev sets); test is scored once with that choice. Token tasks (pos, ner) use
each word's first sub-token (words cut by `max_length` get the most frequent train tag, as in
fine-tuning); text tasks (sentiment, topic) use the mean of the real tokens' states.

Every model gets the same search: up to `MAX_LAYERS` layers spread evenly up to the last, so a
12-layer teacher is probed at layers 2, 4, …, 12 and a 4-layer student at 1–4. Results do not
depend on a seed beyond ties (L-BFGS is deterministic); the seed is kept for the result's record.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from engine.data.batches import IGNORE_INDEX, length_grouped_batches, pad_batch
from engine.data.tasks import TaskData
from engine.evaluate.encoding import encode, most_frequent_tag, words_from_tokens
from engine.evaluate.finetune import DevScore, SeedResult, load_tokenizer, score
from engine.evaluate.report import headline
from engine.events import CancelToken
from engine.models.loading import max_positions

MAX_LAYERS = 6
LAYER_L2 = 1e-3  # weight decay on the mean cross-entropy while the layer is chosen
L2_GRID = (1e-2, 1e-4)  # then tried on the chosen layer, each fit starting from the previous solution
MAX_ITERATIONS = 150
BATCH_SIZE = 32
MAX_TRAIN_ROWS = 20_000  # words (token tasks) or texts the classifier is fitted on; more adds time, not ranking


@dataclass(frozen=True)
class SplitFeatures:
    """One split's features per probed layer ([rows, hidden]) and the row targets."""

    layers: dict[int, Tensor]
    targets: Tensor


def probe_layers(num_layers: int, limit: int = MAX_LAYERS) -> list[int]:
    """Layers to probe (1-based outputs): all of them up to `limit`, else `limit` spread evenly to the last."""
    if num_layers <= limit:
        return list(range(1, num_layers + 1))
    return sorted({round(num_layers * (i + 1) / limit) for i in range(limit)})


def probe(
    model_dir: Path,
    data: TaskData,
    seed: int = 0,
    *,
    max_length: int = 128,
    device: str | torch.device = "cpu",
    progress: Callable[[DevScore], None] | None = None,
    token: CancelToken | None = None,
) -> SeedResult:
    """Fit and score a linear probe of the frozen model in `model_dir` on `data`; `progress` receives each fit's
    `DevScore`."""
    from transformers import AutoModel

    started = time.perf_counter()
    torch.manual_seed(seed)
    tokenizer = load_tokenizer(Path(model_dir))
    model = AutoModel.from_pretrained(model_dir, use_safetensors=True, trust_remote_code=False,
                                      add_pooling_layer=False).to(device).eval()
    layers = probe_layers(model.config.num_hidden_layers)
    max_length = min(max_length, max_positions(model.config))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    train = training_subset(data, seed)
    encoded = {"train": encode(tokenizer, data, train, max_length),
               **{split: encode(tokenizer, data, getattr(data, split), max_length) for split in ("dev", "test")}}
    features = {split: extract(model, enc, layers, pad_id, device, token) for split, enc in encoded.items()}
    del model
    fallback = most_frequent_tag(data) if data.is_token_task else ""
    metric = headline(data.task)
    n_classes = len(data.labels)
    mean, std = _standardiser(features["train"])

    def fitted(layer: int, l2: float, start: Tensor | None) -> tuple[Tensor, dict[str, float]]:
        if token is not None:
            token.raise_if_cancelled()
        weights = fit_logistic(_scaled(features["train"], layer, mean, std), features["train"].targets,
                               n_classes, l2, start=start)
        dev = score_split(data, data.dev, encoded["dev"], features["dev"], layer, weights, mean, std, fallback)
        dev["log_loss"] = _log_loss(_scaled(features["dev"], layer, mean, std), features["dev"].targets, weights)
        if progress is not None:
            progress(DevScore(metric, dev[metric], layer=layer, l2=l2))
        return weights, dev

    # chosen by dev log-loss: far less noisy than accuracy or F1 on a dev set of a hundred texts
    trials = {(layer, LAYER_L2): fitted(layer, LAYER_L2, None) for layer in layers}
    best = min(layers, key=lambda layer: trials[layer, LAYER_L2][1]["log_loss"])
    for l2 in L2_GRID:
        trials[best, l2] = fitted(best, l2, trials[best, LAYER_L2][0])
    layer, l2 = min((key for key in trials if key[0] == best), key=lambda key: trials[key][1]["log_loss"])
    weights, dev = trials[layer, l2]
    test = score_split(data, data.test, encoded["test"], features["test"], layer, weights, mean, std, fallback)
    return SeedResult(
        metrics=test, dev_metrics=dev, best_epoch=0, epochs_run=0, seconds=time.perf_counter() - started,
        train_size=len(train), dev_size=len(data.dev), test_size=len(data.test), labels=tuple(data.labels),
        learning_rate=0.0,
        details={"layer": layer, "l2": l2,
                 "dev_by_layer": {str(k): trials[k, LAYER_L2][1][metric] for k in layers}},
    )


def training_subset(data: TaskData, seed: int, max_rows: int = MAX_TRAIN_ROWS) -> list[Any]:
    """Train examples in a seeded order until `max_rows` words (token tasks) or texts are covered."""
    order = list(range(len(data.train)))
    random.Random(seed).shuffle(order)
    picked, rows = [], 0
    for i in order:
        if rows >= max_rows:
            break
        picked.append(i)
        rows += len(data.train[i].words) if data.is_token_task else 1
    return [data.train[i] for i in sorted(picked)]


@torch.inference_mode()
def extract(model: torch.nn.Module, enc: Any, layers: Sequence[int], pad_id: int, device: str | torch.device,
            token: CancelToken | None = None) -> SplitFeatures:
    """Hidden states at `layers` for every labelled row, in example order: each word's first sub-token
    (token tasks; words without one are skipped) or each text's mean over its real tokens."""
    chunks: dict[int, list[Tensor]] = {layer: [] for layer in layers}
    order: list[int] = []  # example index of each chunk, to restore example order at the end
    token_task = enc.word_positions is not None
    for indices in length_grouped_batches(enc.input_ids, BATCH_SIZE, 0, shuffle=False):
        if token is not None:
            token.raise_if_cancelled()
        batch = {k: v.to(device) for k, v in pad_batch(enc.input_ids, indices, pad_id).items()}
        hidden = model(**batch, output_hidden_states=True).hidden_states
        states = torch.stack([hidden[layer] for layer in layers]).float().cpu()  # [layers, batch, length, hidden]
        if token_task:
            positions = [[p for p in enc.word_positions[i] if p is not None] for i in indices]
            rows = torch.tensor([r for r, present in enumerate(positions) for _ in present], dtype=torch.long)
            picked = states[:, rows, torch.tensor([p for present in positions for p in present], dtype=torch.long)]
            for layer, values in zip(layers, picked, strict=True):
                chunks[layer] += values.split([len(present) for present in positions])
        else:
            weights = batch["attention_mask"].cpu().unsqueeze(-1).float()
            means = (states * weights).sum(2) / weights.sum(1)
            for layer, values in zip(layers, means, strict=True):
                chunks[layer] += values.split(1)
        order += indices
    rank = sorted(range(len(order)), key=order.__getitem__)
    if token_task:
        targets = [torch.tensor([enc.targets[i][p] for p in enc.word_positions[i] if p is not None], dtype=torch.long)
                   for i in range(len(enc.input_ids))]
    else:
        targets = [torch.tensor([target], dtype=torch.long) for target in enc.targets]
    return SplitFeatures({layer: torch.cat([chunks[layer][c] for c in rank]) for layer in layers}, torch.cat(targets))


def fit_logistic(x: Tensor, y: Tensor, n_classes: int, l2: float, max_iterations: int = MAX_ITERATIONS,
                 start: Tensor | None = None) -> Tensor:
    """Multinomial logistic regression by L-BFGS: weights [hidden + 1, classes] (the last row is the bias),
    from zero or from `start` (a neighbouring solution converges in a fraction of the iterations).

    Rows whose target is IGNORE_INDEX (labels unseen in train) are left out.
    """
    keep = y != IGNORE_INDEX
    x, y = x[keep], y[keep]
    x = torch.cat([x, torch.ones(x.shape[0], 1)], dim=1)
    initial = torch.zeros(x.shape[1], n_classes) if start is None else start.clone()
    weights = initial.requires_grad_(True)
    optimizer = torch.optim.LBFGS([weights], lr=1, max_iter=max_iterations, history_size=20,
                                  tolerance_grad=1e-6, tolerance_change=1e-9, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ weights, y) + l2 * weights[:-1].pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return weights.detach()


def _log_loss(x: Tensor, y: Tensor, weights: Tensor) -> float:
    keep = y != IGNORE_INDEX
    return float(F.cross_entropy(x[keep] @ weights[:-1] + weights[-1], y[keep]))


def _standardiser(train: SplitFeatures) -> tuple[dict[int, Tensor], dict[int, Tensor]]:
    mean = {layer: x.mean(0) for layer, x in train.layers.items()}
    std = {layer: x.std(0).clamp(min=1e-6) for layer, x in train.layers.items()}
    return mean, std


def _scaled(split: SplitFeatures, layer: int, mean: dict[int, Tensor], std: dict[int, Tensor]) -> Tensor:
    return (split.layers[layer] - mean[layer]) / std[layer]


def score_split(data: TaskData, examples: Sequence[Any], enc: Any, split: SplitFeatures, layer: int, weights: Tensor,
                mean: dict[int, Tensor], std: dict[int, Tensor], fallback: str) -> dict[str, float]:
    """The task's metrics of the probe `weights` on one split's features at `layer`."""
    x = _scaled(split, layer, mean, std)
    predicted = (x @ weights[:-1] + weights[-1]).argmax(-1).tolist()
    if enc.word_positions is None:
        return score(data.task, examples, [data.labels[p] for p in predicted])
    out, cursor = [], 0
    for positions in enc.word_positions:
        present = [p for p in positions if p is not None]
        token_preds = dict(zip(present, predicted[cursor : cursor + len(present)], strict=True))
        cursor += len(present)
        out.append(words_from_tokens(token_preds, positions, data.labels, fallback))
    return score(data.task, examples, out)
