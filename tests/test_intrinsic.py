"""Intrinsic metrics on tiny models: masked-token accuracy, representation fidelity."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from tiny import sentences, tiny_model_dir
from torch import nn

from engine.data.batches import BatchStream
from engine.errors import CorpusError, ModelError
from engine.evaluate.intrinsic import (
    best_cka,
    layer_fidelity,
    masked_token_accuracy,
    quality_drops,
    representation_fidelity,
)
from engine.models.adapters import BertAdapter
from engine.models.loading import LoadedModel, load_model

FAMILIES = ("bert", "xlm-roberta")
TEXTS = sentences(40, seed=3)


class ConstantHead(nn.Module):
    """An MLM head whose logits ignore the hidden states: 30 on `token`, 0 elsewhere."""

    def __init__(self, vocab: int, token: int) -> None:
        super().__init__()
        self.vocab, self.token = vocab, token

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(*hidden.shape[:-1], self.vocab)
        logits[..., self.token] = 30.0
        return logits


def with_head(loaded: LoadedModel, head: nn.Module) -> LoadedModel:
    setattr(loaded.model, "cls" if loaded.adapter.family == "bert" else "lm_head", head)
    return loaded


def single_token_word(loaded: LoadedModel) -> tuple[str, int]:
    """A word the tokenizer keeps as one token, even when repeated."""
    tok = loaded.tokenizer
    for word in " ".join(sentences(50)).lower().split():
        ids = tok(f"{word} {word} {word}", add_special_tokens=False)["input_ids"]
        if len(ids) == 3 and len(set(ids)) == 1:
            return word, ids[0]
    raise AssertionError("no single-token word found")


def repeated_texts(word: str) -> list[str]:
    return [" ".join([word] * n) for n in range(3, 20)]


@pytest.mark.parametrize("family", FAMILIES)
def test_masked_accuracy_matches_full_logit_computation(tiny_models, family):
    loaded = load_model(tiny_models[family])
    result = masked_token_accuracy(loaded, TEXTS, max_length=32, batch_size=8, seed=5)
    stream = BatchStream(loaded.tokenizer, TEXTS, 32, 8, 5, mlm_probability=0.15)
    correct = total = 0
    nll = 0.0
    with torch.no_grad():
        for step in range(stream.batches_per_epoch):
            batch = stream.batch(step)
            logits = loaded.model(**batch.inputs).logits
            picked = batch.labels != -100
            correct += int((logits.argmax(-1)[picked] == batch.labels[picked]).sum())
            nll += float(F.cross_entropy(logits.transpose(1, 2), batch.labels, reduction="sum"))
            total += int(picked.sum())
    assert result["masked_tokens"] == total > 0
    assert result["texts"] == len(TEXTS)
    assert result["accuracy"] == pytest.approx(correct / total)
    assert result["loss"] == pytest.approx(nll / total, rel=1e-5)
    assert masked_token_accuracy(loaded, TEXTS, max_length=32, batch_size=8, seed=5) == result
    assert masked_token_accuracy(loaded, TEXTS, max_length=32, batch_size=8, seed=6) != result


@pytest.mark.parametrize("family", FAMILIES)
def test_masked_accuracy_of_an_oracle_and_a_wrong_constant(tiny_models, family):
    loaded = load_model(tiny_models[family])
    word, token = single_token_word(loaded)
    texts = repeated_texts(word)
    vocab = loaded.config.vocab_size
    assert masked_token_accuracy(with_head(loaded, ConstantHead(vocab, token)), texts)["accuracy"] == 1.0
    assert masked_token_accuracy(with_head(loaded, ConstantHead(vocab, token + 1)), texts)["accuracy"] == 0.0


def test_masked_accuracy_of_a_random_model_is_low(tiny_models):
    loaded = load_model(tiny_models["bert"])
    result = masked_token_accuracy(loaded, TEXTS)
    assert 0.0 <= result["accuracy"] < 0.05
    assert result["loss"] > math.log(loaded.config.vocab_size) - 1.0


def test_masked_accuracy_needs_a_head_and_text(tiny_models):
    with pytest.raises(ModelError, match="MLM head"):
        masked_token_accuracy(load_model(tiny_models["bert-nohead"]), TEXTS)
    with pytest.raises(CorpusError):
        masked_token_accuracy(load_model(tiny_models["bert"]), ["", "  "])


@pytest.mark.parametrize("family", FAMILIES)
def test_fidelity_of_a_model_with_itself_is_perfect(tiny_models, family):
    loaded = load_model(tiny_models[family])
    result = representation_fidelity(loaded, loaded, TEXTS, batch_size=8)
    assert result["sentence_cosine"] == pytest.approx(1.0, abs=1e-5)
    assert result["token_cosine"] == pytest.approx(1.0, abs=1e-5)
    assert result["similarity_correlation"] == pytest.approx(1.0, abs=1e-6)
    assert result["aligned_fraction"] == 1.0
    assert result["texts"] == len(TEXTS)


def test_fidelity_with_a_different_model_is_below_one_and_padding_blind(tiny_models):
    teacher = load_model(tiny_models["bert"])
    torch.manual_seed(7)
    other = LoadedModel(type(teacher.model)(teacher.config).eval(), teacher.tokenizer, teacher.adapter)
    result = representation_fidelity(teacher, other, TEXTS, batch_size=16)
    assert result["aligned_fraction"] == 1.0
    for key in ("sentence_cosine", "token_cosine", "similarity_correlation"):
        assert -1.0 <= result[key] < 0.99
    one_by_one = representation_fidelity(teacher, other, TEXTS, batch_size=1)
    for key in ("sentence_cosine", "token_cosine", "similarity_correlation"):
        assert one_by_one[key] == pytest.approx(result[key], abs=1e-5)


def test_token_cosine_only_counts_texts_that_tokenise_alike(tiny_models):
    teacher = load_model(tiny_models["bert"])
    student = load_model(tiny_models["bert"])
    student.tokenizer.add_tokens(["qqq"])
    student.model.resize_token_embeddings(len(student.tokenizer))
    texts = ["ka li mu", "qqq to ra", "ne si po", "ha qqq wu", "ja bo de", "to ka li."]
    assert teacher.tokenizer.tokenize("qqq") != student.tokenizer.tokenize("qqq")
    result = representation_fidelity(teacher, student, texts)
    assert result["aligned_fraction"] == pytest.approx(4 / 6)
    assert result["token_cosine"] == pytest.approx(1.0, abs=1e-5)
    assert result["sentence_cosine"] < 0.9999


def test_fidelity_across_widths_uses_the_similarity_structure(tiny_models, tmp_path):
    teacher = load_model(tiny_models["bert"])
    narrow = load_model(tiny_model_dir(tmp_path / "narrow", "bert", layers=2, hidden=32, ffn=64))
    result = representation_fidelity(teacher, narrow, TEXTS)
    assert result["sentence_cosine"] is None and result["token_cosine"] is None
    assert result["aligned_fraction"] == 1.0
    assert -1.0 <= result["similarity_correlation"] < 0.99

    class Widened(nn.Module):
        """The teacher's states followed by zeros: twice as wide, same geometry."""

        def __init__(self) -> None:
            super().__init__()
            self.inner = teacher.adapter.base(teacher.model)
            self.config = SimpleNamespace(hidden_size=2 * teacher.config.hidden_size)

        def forward(self, **inputs):
            hidden = self.inner(**inputs).last_hidden_state
            return SimpleNamespace(last_hidden_state=torch.cat([hidden, torch.zeros_like(hidden)], -1))

    class Plain(BertAdapter):
        def base(self, model):
            return model

    widened = LoadedModel(Widened(), teacher.tokenizer, Plain())
    same_geometry = representation_fidelity(teacher, widened, TEXTS)
    assert same_geometry["sentence_cosine"] is None
    assert same_geometry["similarity_correlation"] == pytest.approx(1.0, abs=1e-6)


def test_quality_drops_names_each_measure_that_fell_too_far() -> None:
    before = {"fidelity": 1.0, "masked_accuracy": 0.50, "retrieval_top1": 0.97, "tokens": 900}
    after = {"fidelity": 0.96, "masked_accuracy": 0.49, "retrieval_top1": 0.90, "tokens": 10}
    assert quality_drops(before, after, 0.03) == [("fidelity", 1.0, 0.96), ("retrieval_top1", 0.97, 0.90)]
    assert quality_drops(before, after, 0.10) == []
    assert quality_drops({"fidelity": 1.0}, after, 0.03) == [("fidelity", 1.0, 0.96)]  # only measures on both sides
    assert quality_drops(after, before, 0.0) == []  # a rise is never a drop


def test_best_cka_is_the_best_pairwise_linear_cka_and_blind_to_rotation_and_scale():
    def cka(x, y):  # the definition, pair by pair (Kornblith et al. 2019, eq. 5)
        x, y = x.double() - x.double().mean(0), y.double() - y.double().mean(0)
        return float((y.T @ x).norm() ** 2 / ((x.T @ x).norm() * (y.T @ y).norm()))

    torch.manual_seed(0)
    teacher = [torch.randn(300, 12) for _ in range(3)]
    rotation, _ = torch.linalg.qr(torch.randn(12, 12))
    students = [torch.randn(300, 8), 3 * teacher[1] @ rotation + 5, torch.randn(300, 8) + teacher[2][:, :8]]
    best = best_cka(teacher, students)
    assert best == pytest.approx([max(cka(t, s) for s in students) for t in teacher], rel=1e-12)
    assert best[1] == pytest.approx(1.0, abs=1e-12)  # rotated, scaled and shifted: the same representation
    assert best[0] < 0.3 < best[2] < 1  # unrelated; partly shared


def test_layer_fidelity_of_a_model_with_itself_is_one_at_every_layer(tiny_models):
    loaded = load_model(tiny_models["bert"])
    result = layer_fidelity(loaded, loaded, TEXTS)
    assert result["by_layer"] == pytest.approx([1.0] * loaded.config.num_hidden_layers, abs=1e-12)
    assert result["texts"] == len(TEXTS) and result["tokens"] > len(TEXTS)
