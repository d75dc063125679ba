"""Fine-tune one model on one task with one seed, select the epoch on dev, score test.

Defaults per task (epochs, rate, batch, patience, dev metric) come from the task table (`engine.tasks`);
the paper used 20 epochs for classification and 100 for token tasks with adapters, full fine-tuning of a
small encoder needs far fewer. The full fine-tuning rate is BERT-base's 5e-5 scaled by 768 / hidden
size: narrower encoders need larger steps. Measured on a hidden-192 e5 → Maltese student (1 seed, 10
epochs): at 5e-5 it stayed at the majority class on SIB-200 topic (25.0 accuracy) and reached 75.3 on UD
POS; at 2e-4, 38.2 and 85.9 (the teacher: 86.2 POS after 3 epochs).

Training, through the one training loop (`engine.training.loop`): fused AdamW (weight decay 0.01, none
on biases and LayerNorms), linear schedule with 10% warmup, gradient clipping at 1.0, length-grouped
dynamically padded batches in an order derived from the seed and epoch, the input embedding cut to the
rows the task's texts use (the same training, a fraction of the optimiser's work for a large
vocabulary). After each epoch the dev set is scored; the best epoch's weights are restored (early
stopping after `patience` epochs without improvement) and the test set is scored.

Inputs and targets: `engine.evaluate.encoding`; the teacher's targets: `engine.evaluate.teacher_targets`.

Task distillation (`Distillation`): the student also learns a fine-tuned teacher's predictions, softened by
a temperature, on the train texts and on unlabelled in-language texts the teacher labelled (token tasks: per
word, on the word's first sub-token, so teacher and student may segment differently). The loss is
`alpha` × gold cross-entropy + (1 − `alpha`) × T² × KL(teacher ‖ student); unlabelled texts have only the
second term. Each epoch passes over all train texts and the next share of the unlabelled ones
(`Distillation.unlabelled_ratio` per train text), so the gold labels are seen as often as without a
teacher and the epochs follow the train set's size.

A frozen encoder is scored by `engine.evaluate.probe` instead: a linear classifier fitted to
convergence on cached features (training a task head by SGD on a frozen encoder under-fits badly:
0.43 on Maltese UD POS after 2 epochs against 0.89 for the probe).

Runs are deterministic for a fixed seed on CPU: python, numpy and torch are seeded before the
task head is created, and batch orders come from (seed, epoch).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engine.data.batches import IGNORE_INDEX, length_grouped_batches, pad_batch
from engine.data.corpus import derive_seed
from engine.data.tasks import TaskData
from engine.errors import ModelError, TaskDataError
from engine.evaluate.encoding import (
    Encoded,
    batch_soft,
    batch_targets,
    compact_vocabulary,
    encode,
    most_frequent_tag,
    words_from_tokens,
)
from engine.evaluate.metrics import classification_metrics, ner_metrics, pos_metrics
from engine.evaluate.report import headline
from engine.evaluate.teacher_targets import Distillation, with_teacher
from engine.events import CancelToken
from engine.models.loading import fast_tokenizer, inspect_folder, max_positions
from engine.seeding import seed_everything
from engine.tasks import task as task_kind
from engine.training.loop import LoopSettings, TrainBatch, TrainState, train
from engine.training.precision import Precision

TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "sentencepiece.bpe.model", "spiece.model", "tokenizer.model",
                   "vocab.json")
WEIGHT_DECAY = 0.01
WARMUP_RATIO = 0.1
MAX_GRAD_NORM = 1.0
REFERENCE_HIDDEN = 768  # the width the standard 5e-5 full fine-tuning rate belongs to (BERT-base)


@dataclass(frozen=True)
class SeedResult:
    """One fine-tuning run: test metrics of the best dev epoch (1-based) and the run's bookkeeping."""

    metrics: dict[str, float]
    dev_metrics: dict[str, float]
    best_epoch: int
    epochs_run: int
    seconds: float
    train_size: int
    dev_size: int
    test_size: int
    labels: tuple[str, ...]
    learning_rate: float
    details: dict[str, Any] = field(default_factory=dict)  # mode-specific choices (a probe's layer and L2)


@dataclass(frozen=True)
class FitStep:
    """`finetune` took optimiser step `step` of `steps` (in epoch `epoch` of `epochs`, from 1)."""

    epoch: int
    epochs: int
    step: int
    steps: int
    loss: float
    eta_seconds: float | None = None


@dataclass(frozen=True)
class DevScore:
    """A dev-set score of the headline `metric`: after a fine-tuning epoch, or after a probe's fit of a layer and L2."""

    metric: str
    value: float
    epoch: int = 0  # fine-tuning: the epoch, from 1; probes: 0
    layer: int = 0  # probes: the layer fitted, from 1; fine-tuning: 0
    l2: float = 0.0


@dataclass
class Fitted:
    """A fine-tuned model (task head included, full vocabulary, eval mode) with its tokenizer and scores."""

    result: SeedResult
    model: nn.Module
    tokenizer: Any


def finetune(model_dir: Path, data: TaskData, seed: int, **options: Any) -> SeedResult:
    """Fine-tune the model in `model_dir` on `data` and score it (see `fit`); the model is discarded."""
    return fit(model_dir, data, seed, **options).result


def fit(
    model_dir: Path,
    data: TaskData,
    seed: int,
    *,
    epochs: int | None = None,
    batch_size: int | None = None,
    learning_rate: float | None = None,
    max_length: int = 128,
    patience: int | None = None,
    device: str | torch.device = "cpu",
    distillation: Distillation | None = None,
    progress: Callable[[FitStep | DevScore], None] | None = None,
    token: CancelToken | None = None,
) -> Fitted:
    """Fine-tune the model in `model_dir` on `data` (learning from a teacher too with `distillation`); None
    arguments take the task's defaults (`engine.tasks`).

    `progress` receives a `FitStep` after each optimiser step and a `DevScore` after each epoch.
    """
    started = time.perf_counter()
    defaults = task_kind(data.task)
    for split in ("train", "dev", "test"):
        if not getattr(data, split):
            raise TaskDataError(f"{data.source}: the {split} split is empty")
    train_labels = {t for ex in data.train for t in ex.tags} if data.is_token_task else {ex.label for ex in data.train}
    unknown = train_labels - set(data.labels)
    if unknown:
        raise TaskDataError(f"{data.source}: train labels missing from the label set: {sorted(unknown)}")
    batch_size = defaults.batch_size if batch_size is None else batch_size
    patience = defaults.patience if patience is None else patience
    if (epochs is not None and epochs < 1) or batch_size < 1 or patience < 1:
        raise ValueError("epochs, batch_size and patience must be >= 1")

    seed_everything(seed)
    tokenizer, model = load_for_task(Path(model_dir), data)
    if learning_rate is None:
        learning_rate = default_learning_rate(data.task, model.config.hidden_size)
    max_length = min(max_length, max_positions(model.config))
    model.to(device)

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    splits = [encode(tokenizer, data, split, max_length) for split in (data.train, data.dev, data.test)]
    if distillation is not None:
        splits[0] = with_teacher(tokenizer, data, splits[0], distillation, max_length)
    (train_set, dev, test), restore = compact_vocabulary(model, splits, pad_id)
    epochs = defaults.epochs_for(len(data.train)) if epochs is None else epochs
    fallback = most_frequent_tag(data) if data.is_token_task else ""
    temperature = distillation.temperature if distillation is not None else 1.0
    alpha = distillation.alpha if distillation is not None else 1.0
    epoch_examples = _EpochExamples(len(data.train), len(train_set.input_ids) - len(data.train),
                                    distillation.unlabelled_ratio if distillation is not None else 0.0, seed)
    steps_per_epoch = len(length_grouped_batches(
        [train_set.input_ids[i] for i in epoch_examples(1)], batch_size, seed))
    loss_fn = nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX)
    orders: dict[int, list[list[int]]] = {}

    def batch(index: int) -> TrainBatch:
        epoch, position = divmod(index, steps_per_epoch)
        if epoch + 1 not in orders:
            orders.clear()
            members = epoch_examples(epoch + 1)
            orders[epoch + 1] = [[members[i] for i in group] for group in length_grouped_batches(
                [train_set.input_ids[i] for i in members], batch_size, derive_seed(seed, "finetune", epoch + 1))]
        indices = orders[epoch + 1][position]
        padded = {k: v.to(device) for k, v in pad_batch(train_set.input_ids, indices, pad_id).items()}
        width = padded["input_ids"].shape[1]
        inputs = {**padded, "labels": batch_targets(train_set, indices, width).to(device)}
        if train_set.soft is not None:
            inputs["soft"] = batch_soft(train_set, indices, width).to(device)
        return TrainBatch(inputs, int(padded["attention_mask"].sum()))

    def objective(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
        targets = inputs["labels"]
        logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
        losses = {}
        if (targets != IGNORE_INDEX).any():  # else the loss would be NaN
            losses["gold"] = loss_fn(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        if "soft" in inputs:
            soft = inputs["soft"]
            taught = ~soft[..., 0].isnan()
            if taught.any():
                losses["teacher"] = temperature ** 2 * nn.functional.kl_div(
                    nn.functional.log_softmax(logits[taught].float() / temperature, -1),
                    nn.functional.log_softmax(soft[taught] / temperature, -1), reduction="batchmean", log_target=True)
        if not losses:
            return None
        return {"total": alpha * losses.get("gold", 0.0) + (1 - alpha) * losses.get("teacher", 0.0), **losses}

    def evaluate(enc: Encoded, examples: Sequence[Any]) -> dict[str, float]:
        return score(data.task, examples, predict(model, enc, data, fallback, batch_size, pad_id, device, token))

    metric = headline(data.task)
    settings = LoopSettings(max_steps=epochs * steps_per_epoch, learning_rate=learning_rate,
                            weight_decay=WEIGHT_DECAY, warmup_ratio=WARMUP_RATIO, grad_clip=MAX_GRAD_NORM,
                            eval_every=steps_per_epoch, patience=patience, select=metric, maximize=True)
    observer = _EpochObserver(steps_per_epoch, epochs, metric, progress)
    state = train(model, objective, batch, lambda: evaluate(dev, data.dev), settings, observer,
                  precision=Precision(torch.device(device), None), token=token)
    result = SeedResult(
        metrics=evaluate(test, data.test), dev_metrics=observer.best_dev, best_epoch=state.best_step // steps_per_epoch,
        epochs_run=state.step // steps_per_epoch, seconds=time.perf_counter() - started, train_size=len(data.train),
        dev_size=len(data.dev), test_size=len(data.test), labels=tuple(data.labels), learning_rate=learning_rate,
        details={"unlabelled": len(distillation.unlabelled)} if distillation is not None else {},
    )
    restore()
    return Fitted(result, model.eval(), tokenizer)


@dataclass(frozen=True)
class _EpochExamples:
    """The training examples of each epoch: all `gold` ones (indices 0 … gold − 1), then the next
    `ratio` × `gold` of the `unlabelled` ones (indices from `gold`) in a seeded order, wrapping around."""

    gold: int
    unlabelled: int
    ratio: float
    seed: int

    def __call__(self, epoch: int) -> list[int]:
        share = min(self.unlabelled, round(self.ratio * self.gold))
        order = list(range(self.gold, self.gold + self.unlabelled))
        random.Random(derive_seed(self.seed, "unlabelled order")).shuffle(order)
        start = (epoch - 1) * share
        return [*range(self.gold), *(order[(start + i) % self.unlabelled] for i in range(share))]


@dataclass
class _EpochObserver:
    """The training loop's steps and per-epoch validations as `FitStep`s and `DevScore`s; keeps the best dev
    metrics."""

    steps_per_epoch: int
    epochs: int
    metric: str
    progress: Callable[[FitStep | DevScore], None] | None
    best_dev: dict[str, float] = field(default_factory=dict)

    def stepped(self, state: TrainState, losses: dict[str, float], learning_rate: float,
                tokens_per_second: float, eta_seconds: float) -> None:
        if self.progress is not None:
            self.progress(FitStep(epoch=(state.step - 1) // self.steps_per_epoch + 1, epochs=self.epochs,
                                  step=state.step, steps=self.epochs * self.steps_per_epoch,
                                  loss=losses.get("total", math.nan), eta_seconds=eta_seconds))

    def validated(self, state: TrainState, values: dict[str, float]) -> None:
        if state.best_step == state.step:
            self.best_dev = values
        if self.progress is not None:
            self.progress(DevScore(self.metric, values[self.metric], epoch=state.step // self.steps_per_epoch))

    def resumed(self, state: TrainState) -> None:
        """Fine-tuning keeps no checkpoints."""


def default_learning_rate(task: str, hidden: int) -> float:
    """The task's default rate scaled by 768 / `hidden` (see the module docstring)."""
    return task_kind(task).learning_rate * REFERENCE_HIDDEN / hidden


def load_tokenizer(model_dir: Path) -> Any:
    """The folder's fast tokenizer, checked against the model's embedding rows."""
    info = inspect_folder(model_dir)  # clear errors for a missing config, no weights or pickled weights
    if not any((model_dir / name).is_file() for name in TOKENIZER_FILES):
        raise ModelError(f"{model_dir} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}); "
                         "save the model's tokenizer into the folder")
    tokenizer = fast_tokenizer(model_dir)
    if len(tokenizer) > info.config.vocab_size:
        raise ModelError(f"{model_dir}: the tokenizer has {len(tokenizer)} tokens but the model only "
                         f"{info.config.vocab_size} embedding rows; they do not belong together")
    return tokenizer


def load_for_task(model_dir: Path, data: TaskData) -> tuple[Any, nn.Module]:
    """The folder's fast tokenizer and the model with a new task head for `data.labels`."""
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

    tokenizer = load_tokenizer(model_dir)
    labels = list(data.labels)
    auto = AutoModelForTokenClassification if data.is_token_task else AutoModelForSequenceClassification
    model = auto.from_pretrained(
        model_dir, num_labels=len(labels), id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)}, use_safetensors=True, trust_remote_code=False,
        ignore_mismatched_sizes=True,  # a task model of the same kind given as the encoder gets a new head
    )
    return tokenizer, model


def predict(model: nn.Module, enc: Encoded, data: TaskData, fallback: str, batch_size: int, pad_id: int,
            device: str | torch.device, token: CancelToken | None = None) -> list[Any]:
    """Predicted label per example (text tasks) or per word (token tasks), in input order."""
    model.eval()
    out: list[Any] = [None] * len(enc.input_ids)
    with torch.no_grad():
        for indices in length_grouped_batches(enc.input_ids, batch_size, 0, shuffle=False):
            if token is not None:
                token.raise_if_cancelled()
            batch = {k: v.to(device) for k, v in pad_batch(enc.input_ids, indices, pad_id).items()}
            preds = model(**batch).logits.argmax(-1).cpu().tolist()
            for i, p in zip(indices, preds, strict=True):
                if enc.word_positions is None:
                    out[i] = data.labels[p]
                else:
                    out[i] = words_from_tokens(p, enc.word_positions[i], data.labels, fallback)
    return out


def score(task: str, examples: Sequence[Any], predictions: list[Any]) -> dict[str, float]:
    """The task's metrics of `predictions` against the gold labels of `examples`."""
    scoring = task_kind(task).scoring
    if scoring == "labels":
        return classification_metrics([ex.label for ex in examples], predictions)
    return {"tags": pos_metrics, "entities": ner_metrics}[scoring]([ex.tags for ex in examples], predictions)
