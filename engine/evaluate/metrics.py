"""Scores for the downstream tasks, as fractions in [0, 1].

- Classification (sentiment, topic): accuracy and macro-F1. Macro-F1 averages the per-label F1
  over the labels present in gold ∪ pred (as scikit-learn's `f1_score(average="macro")` with
  `zero_division=0`): a label never seen in gold nor predicted is left out; a label only
  predicted counts with F1 = 0.
- POS: the same two metrics over all tokens of all sentences (token accuracy, macro-F1 over tags).
- NER: entity-level micro precision / recall / F1 by seqeval in its default mode, which follows
  conlleval: tags are read as IOB2 (IOB1 input scores the same), and an `I-X` that does not
  continue an `X` entity starts a new one, so ill-formed predictions are not discarded.
- Over seeds: mean and sample standard deviation (ddof = 1; 0 for a single seed).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence


def classification_metrics(
    gold: Sequence[str], pred: Sequence[str], labels: Iterable[str] | None = None
) -> dict[str, float]:
    """Accuracy and macro-F1; `labels`, when given, is the label set every gold/pred label must be in."""
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold labels but {len(pred)} predictions")
    if not gold:
        raise ValueError("no examples to score")
    if labels is not None:
        unknown = (set(gold) | set(pred)) - set(labels)
        if unknown:
            raise ValueError(f"labels outside the label set: {sorted(unknown)}")
    correct = Counter(g for g, p in zip(gold, pred, strict=True) if g == p)
    gold_count, pred_count = Counter(gold), Counter(pred)
    f1s = [2 * correct[label] / (gold_count[label] + pred_count[label]) for label in gold_count | pred_count]
    return {"accuracy": sum(correct.values()) / len(gold), "macro_f1": sum(f1s) / len(f1s)}


def pos_metrics(gold_sents: Sequence[Sequence[str]], pred_sents: Sequence[Sequence[str]]) -> dict[str, float]:
    """Token accuracy and macro-F1 over tags, pooled over all sentences."""
    _check_aligned(gold_sents, pred_sents)
    return classification_metrics([t for s in gold_sents for t in s], [t for s in pred_sents for t in s])


def ner_metrics(gold_sents: Sequence[Sequence[str]], pred_sents: Sequence[Sequence[str]]) -> dict[str, float]:
    """Entity-level micro F1, precision and recall (seqeval, default conlleval-like mode)."""
    from seqeval.metrics import f1_score, precision_score, recall_score

    _check_aligned(gold_sents, pred_sents)
    gold, pred = [list(s) for s in gold_sents], [list(s) for s in pred_sents]
    return {
        "f1": float(f1_score(gold, pred, zero_division=0)),
        "precision": float(precision_score(gold, pred, zero_division=0)),
        "recall": float(recall_score(gold, pred, zero_division=0)),
    }


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof = 1); the deviation of a single value is 0."""
    if not values:
        raise ValueError("no values to average")
    mean = sum(values) / len(values)
    if len(values) == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _check_aligned(gold_sents: Sequence[Sequence[str]], pred_sents: Sequence[Sequence[str]]) -> None:
    if len(gold_sents) != len(pred_sents):
        raise ValueError(f"{len(gold_sents)} gold sentences but {len(pred_sents)} predicted")
    for i, (g, p) in enumerate(zip(gold_sents, pred_sents, strict=True)):
        if len(g) != len(p):
            raise ValueError(f"sentence {i}: {len(g)} gold tags but {len(p)} predicted")
    if not any(gold_sents):
        raise ValueError("no tokens to score")
