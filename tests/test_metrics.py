"""Metrics against values computed by hand (arithmetic in the comments)."""

from __future__ import annotations

import pytest

from engine.evaluate.metrics import classification_metrics, mean_std, ner_metrics, pos_metrics


def test_classification_accuracy_and_macro_f1():
    gold = ["a", "a", "b", "b", "c"]
    pred = ["a", "b", "b", "b", "a"]
    m = classification_metrics(gold, pred, labels=["a", "b", "c", "d"])
    # correct at positions 0, 2, 3 -> accuracy 3/5
    assert m["accuracy"] == pytest.approx(0.6)
    # F1 = 2TP / (gold + pred): a 2*1/(2+2) = 0.5, b 2*2/(2+3) = 0.8, c 0/(1+0) = 0;
    # d is in neither gold nor pred, so it is left out: (0.5 + 0.8 + 0) / 3
    assert m["macro_f1"] == pytest.approx(1.3 / 3)


def test_label_only_predicted_counts_with_zero_f1():
    m = classification_metrics(["a", "a"], ["a", "z"])
    # a: 2*1/(2+1) = 2/3; z: never gold, F1 0 -> (2/3 + 0) / 2 = 1/3; accuracy 1/2
    assert m == pytest.approx({"accuracy": 0.5, "macro_f1": 1 / 3})


def test_perfect_classification():
    assert classification_metrics(["x", "y", "x"], ["x", "y", "x"]) == {"accuracy": 1.0, "macro_f1": 1.0}


def test_classification_rejects_bad_input():
    with pytest.raises(ValueError, match="2 gold labels but 1"):
        classification_metrics(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="no examples"):
        classification_metrics([], [])
    with pytest.raises(ValueError, match="outside the label set"):
        classification_metrics(["a"], ["q"], labels=["a", "b"])


def test_pos_metrics_pool_all_tokens():
    gold = [["N", "V"], ["N", "D", "N"]]
    pred = [["N", "N"], ["N", "D", "V"]]
    m = pos_metrics(gold, pred)
    # flat gold N V N D N vs pred N N N D V: correct 1,0,1,1,0 -> 3/5
    assert m["accuracy"] == pytest.approx(0.6)
    # N: TP 2, gold 3, pred 3 -> 4/6; V: TP 0 -> 0; D: TP 1, gold 1, pred 1 -> 1; mean (2/3 + 0 + 1) / 3 = 5/9
    assert m["macro_f1"] == pytest.approx(5 / 9)


def test_pos_metrics_need_aligned_sentences():
    with pytest.raises(ValueError, match="sentence 1: 3 gold tags but 2"):
        pos_metrics([["N"], ["N", "V", "D"]], [["N"], ["N", "V"]])
    with pytest.raises(ValueError, match="1 gold sentences but 2"):
        pos_metrics([["N"]], [["N"], ["V"]])


def test_ner_entity_level():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-ORG"]]
    pred = [["B-PER", "I-PER", "O", "O"], ["O", "I-ORG"]]
    m = ner_metrics(gold, pred)
    # gold entities: PER(0-1), LOC(3), ORG(1) = 3. Predicted: PER(0-1) and, conlleval-like, the
    # I-ORG after O starts an ORG(1) entity = 2, both correct -> P = 2/2, R = 2/3, F1 = 2PR/(P+R) = 0.8
    assert m == pytest.approx({"f1": 0.8, "precision": 1.0, "recall": 2 / 3})


def test_ner_boundaries_and_types_must_match():
    gold = [["B-PER", "I-PER", "O", "B-LOC", "B-ORG"]]
    pred = [["B-PER", "O", "O", "B-ORG", "B-ORG"]]
    # gold PER(0-1), LOC(3), ORG(4); pred PER(0), ORG(3), ORG(4): only ORG(4) matches
    # P = 1/3, R = 1/3, F1 = 1/3
    assert ner_metrics(gold, pred) == pytest.approx({"f1": 1 / 3, "precision": 1 / 3, "recall": 1 / 3})


def test_ner_iob1_gold_scores_like_iob2():
    gold = [["I-PER", "I-PER", "O", "I-LOC"]]  # IOB1: entities PER(0-1), LOC(3)
    pred = [["B-PER", "I-PER", "O", "B-LOC"]]
    assert ner_metrics(gold, pred) == {"f1": 1.0, "precision": 1.0, "recall": 1.0}


def test_ner_without_predicted_entities_scores_zero():
    assert ner_metrics([["B-PER", "O"]], [["O", "O"]]) == {"f1": 0.0, "precision": 0.0, "recall": 0.0}


def test_mean_and_sample_std():
    # mean 0.7; squared deviations 0.04 + 0 + 0.04 = 0.08; / (3 - 1) = 0.04; sqrt = 0.2
    mean, std = mean_std([0.5, 0.7, 0.9])
    assert mean == pytest.approx(0.7)
    assert std == pytest.approx(0.2)
    assert mean_std([0.3]) == (0.3, 0.0)
    with pytest.raises(ValueError):
        mean_std([])
