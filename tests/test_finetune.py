"""Fine-tuning tiny models on synthetic, learnable tasks: learning, alignment, determinism, modes, errors."""

from __future__ import annotations

import copy
import random
import shutil
from pathlib import Path

import pytest
import torch
from tiny import tiny_model_dir

from engine.data.batches import pad_batch
from engine.data.tasks import TaskData, TextExample, TokenExample
from engine.errors import Cancelled, ModelError, TaskDataError
from engine.evaluate.encoding import align_words, compact_vocabulary, encode, most_frequent_tag, words_from_tokens
from engine.evaluate.finetune import DevScore, FitStep, default_learning_rate, finetune, load_for_task
from engine.events import CancelToken

FILLER = ["ra", "ne", "si", "po", "ha", "wu", "ja", "bo", "de", "kali", "mutora", "nesipo", "hawuja"]
KEYWORDS = {"good": ["kamuli", "topo"], "bad": ["deboja", "wuha"], "meh": ["limura", "sine"]}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ft-models")
    return {"bert": tiny_model_dir(root / "bert", "bert", mlm_head=True, layers=2),
            "xlmr": tiny_model_dir(root / "xlmr", "xlm-roberta", mlm_head=False, layers=2)}


def sentiment_data(n_train: int = 240, seed: int = 0) -> TaskData:
    """The label is decided by which keyword the text contains; three balanced classes."""
    rng = random.Random(seed)

    def split(n: int) -> tuple[TextExample, ...]:
        out = []
        for _ in range(n):
            label = rng.choice(sorted(KEYWORDS))
            words = rng.choices(FILLER, k=rng.randint(3, 9))
            words.insert(rng.randint(0, len(words)), rng.choice(KEYWORDS[label]))
            out.append(TextExample(" ".join(words), label))
        return tuple(out)

    return TaskData("sentiment", tuple(sorted(KEYWORDS)), split(n_train), split(60), split(90), "synthetic")


def pos_tag(word: str) -> str:
    return "NOUN" if word[0] in "kl" else "VERB" if word[0] in "mr" else "ADJ"


POS_WORDS = ["ka", "kali", "limu", "lo", "mu", "mura", "ra", "rato", "si", "ne", "po", "hawuja", "kamulito"]


def pos_data(n_train: int = 200, seed: int = 0, length: tuple[int, int] = (3, 10)) -> TaskData:
    """The tag is a function of the word's first letter."""
    rng = random.Random(seed)

    def split(n: int) -> tuple[TokenExample, ...]:
        sents = [rng.choices(POS_WORDS, k=rng.randint(*length)) for _ in range(n)]
        return tuple(TokenExample(tuple(s), tuple(pos_tag(w) for w in s)) for s in sents)

    return TaskData("pos", ("NOUN", "VERB", "ADJ"), split(n_train), split(40), split(60), "synthetic")


def majority(data: TaskData) -> float:
    gold = [t for ex in data.test for t in ex.tags] if data.is_token_task else [ex.label for ex in data.test]
    return max(gold.count(label) for label in set(gold)) / len(gold)


def test_sentiment_learns_keyword_task(models):
    data = sentiment_data()
    result = finetune(models["bert"], data, seed=1, epochs=6, learning_rate=2e-3)
    assert majority(data) < 0.45
    assert result.metrics["accuracy"] > 0.85
    assert result.metrics["macro_f1"] > 0.85
    assert 1 <= result.best_epoch <= result.epochs_run <= 6
    assert (result.train_size, result.dev_size, result.test_size) == (240, 60, 90)
    assert result.labels == ("bad", "good", "meh")
    assert set(result.dev_metrics) == {"accuracy", "macro_f1"}


def test_pos_learns_word_function_and_is_deterministic(models):
    data = pos_data()
    runs = [finetune(models["xlmr"], data, seed=3, epochs=4, learning_rate=2e-3) for _ in range(2)]
    assert majority(data) < 0.5
    assert runs[0].metrics["accuracy"] > 0.9
    assert runs[0].metrics == runs[1].metrics
    assert runs[0].dev_metrics == runs[1].dev_metrics
    assert runs[0].best_epoch == runs[1].best_epoch


def test_ner_scores_entities(models):
    rng = random.Random(0)
    names = {"kamuli", "topo"}

    def split(n: int) -> tuple[TokenExample, ...]:
        out = []
        for _ in range(n):
            words = rng.choices(FILLER, k=rng.randint(3, 8))
            words.insert(rng.randint(0, len(words)), rng.choice(sorted(names)))
            out.append(TokenExample(tuple(words), tuple("B-PER" if w in names else "O" for w in words)))
        return tuple(out)

    data = TaskData("ner", ("O", "B-PER"), split(160), split(30), split(40), "synthetic")
    result = finetune(models["bert"], data, seed=0, epochs=4, learning_rate=2e-3)
    assert set(result.metrics) == {"f1", "precision", "recall"}
    assert result.metrics["f1"] > 0.8


def test_alignment_labels_only_first_subtoken(models):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(models["bert"])
    words = [["kamulitorane", "ra", "sipohawu"]]
    pieces = [len(tokenizer.tokenize(w)) for w in words[0]]
    assert pieces[0] > 1 and pieces[2] > 1  # the words really split into several sub-tokens
    enc = align_words(tokenizer, words, [[0, 1, 2]], max_length=64)
    targets, positions = enc.targets[0], enc.word_positions[0]
    assert len(targets) == len(enc.input_ids[0]) == sum(pieces) + 2
    assert [t for t in targets if t != -100] == [0, 1, 2]  # one label per word
    # first sub-tokens after [CLS]: word 0 at 1, word 1 after word 0's pieces, word 2 after that
    assert positions == [1, 1 + pieces[0], 1 + pieces[0] + 1]
    assert [targets[p] for p in positions] == [0, 1, 2]
    token_preds = [1] * len(targets)  # later sub-tokens and specials predict "B": ignored
    for pos, pred in zip(positions, (2, 0, 1), strict=True):
        token_preds[pos] = pred
    assert words_from_tokens(token_preds, positions, ["A", "B", "C"], "A") == ["C", "A", "B"]


def test_truncated_words_get_the_fallback_tag(models):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(models["bert"])
    words = [["kamulitorane", "ra", "sipohawu", "ne"]]
    enc = align_words(tokenizer, words, [[0, 1, 2, 1]], max_length=4)
    # [CLS] + 2 sub-tokens of word 0 + [SEP]: word 0 keeps its label, the rest have no sub-token
    assert len(enc.input_ids[0]) == 4
    assert enc.word_positions[0] == [1, None, None, None]
    assert [t for t in enc.targets[0] if t != -100] == [0]
    assert words_from_tokens([5, 2, 0, 5], enc.word_positions[0], ["A", "B", "C"], "B") == ["C", "B", "B", "B"]


def test_most_frequent_train_tag():
    data = pos_data(50)
    counts = {t: sum(ex.tags.count(t) for ex in data.train) for t in data.labels}
    assert most_frequent_tag(data) == max(counts, key=counts.get)


def test_short_max_length_still_scores_every_word(models):
    data = pos_data(40, length=(12, 20))
    result = finetune(models["bert"], data, seed=0, epochs=1, max_length=8)
    assert 0.0 <= result.metrics["accuracy"] <= 1.0  # pos_metrics would raise on a word count mismatch


def test_cancellation_between_steps(models):
    token = CancelToken()
    seen = []

    def progress(report):
        seen.append(report)
        if isinstance(report, FitStep) and report.step == 2:
            token.cancel()

    with pytest.raises(Cancelled):
        finetune(models["bert"], sentiment_data(64), seed=0, epochs=3, progress=progress, token=token)
    assert [r.step for r in seen] == [1, 2]
    assert seen[0].steps == 3 * 4 and seen[0].epochs == 3


def test_progress_reports_steps_and_dev_scores(models):
    seen = []
    result = finetune(models["bert"], sentiment_data(32), seed=0, epochs=2, batch_size=16, progress=seen.append)
    assert [type(r) for r in seen] == [FitStep, FitStep, DevScore, FitStep, FitStep, DevScore]
    assert [(r.epoch, r.step) for r in seen if isinstance(r, FitStep)] == [(1, 1), (1, 2), (2, 3), (2, 4)]
    dev = seen[2 + 3 * (result.best_epoch - 1)]
    assert (dev.metric, dev.epoch, dev.layer) == ("macro_f1", result.best_epoch, 0)
    assert dev.value == result.dev_metrics["macro_f1"]


def test_default_rate_grows_as_the_encoder_narrows_and_is_recorded(models):
    assert default_learning_rate("pos", 768) == pytest.approx(5e-5)
    assert default_learning_rate("topic", 192) == pytest.approx(2e-4)
    result = finetune(models["bert"], sentiment_data(32), seed=0, epochs=1)  # tiny BERT: hidden 64
    assert result.learning_rate == pytest.approx(5e-5 * 768 / 64)
    assert finetune(models["bert"], sentiment_data(32), seed=0, epochs=1, learning_rate=1e-4).learning_rate == 1e-4


def test_folder_without_tokenizer(models, tmp_path):
    for name in ("config.json", "model.safetensors"):
        shutil.copy(models["bert"] / name, tmp_path / name)
    with pytest.raises(ModelError, match="no tokenizer"):
        finetune(tmp_path, sentiment_data(16), seed=0, epochs=1)


def test_bad_task_data(models):
    data = sentiment_data(16)
    with pytest.raises(TaskDataError, match="test split is empty"):
        finetune(models["bert"], TaskData("sentiment", data.labels, data.train, data.dev, (), "x"), seed=0)
    extra = (*data.train, TextExample("ra ne", "angry"))
    with pytest.raises(TaskDataError, match="angry"):
        finetune(models["bert"], TaskData("sentiment", data.labels, extra, data.dev, data.test, "x"), seed=0)


@pytest.mark.parametrize("family", ["bert", "xlmr"])
def test_compact_vocabulary_trains_exactly_like_the_full_embedding(models, family):
    data = pos_data(40)
    tokenizer, full = load_for_task(models[family], data)
    compact = copy.deepcopy(full)
    pad = tokenizer.pad_token_id
    encoded = [encode(tokenizer, data, split, 32) for split in (data.train, data.dev, data.test)]
    renumbered, restore = compact_vocabulary(compact, encoded, pad)
    used = sorted({i for enc in encoded for ids in enc.input_ids for i in ids} | set(range(pad + 1)))
    assert compact.get_input_embeddings().num_embeddings == len(used) < full.config.vocab_size
    assert [len(ids) for ids in renumbered[0].input_ids] == [len(ids) for ids in encoded[0].input_ids]
    for old, new in zip(encoded, renumbered, strict=True):  # every input reads its own row
        old_ids, new_ids = (torch.tensor([i for ids in enc.input_ids for i in ids]) for enc in (old, new))
        torch.testing.assert_close(compact.get_input_embeddings().weight[new_ids],
                                   full.get_input_embeddings().weight[old_ids])
    outputs = []
    for model, enc in ((full, encoded[0]), (compact, renumbered[0])):
        batch = pad_batch(enc.input_ids, list(range(8)), pad)
        model.train()
        torch.manual_seed(0)  # the same dropout masks
        logits = model(**batch).logits
        logits.square().mean().backward()
        outputs.append((logits.detach(), dict(model.named_parameters())))
    (full_logits, full_params), (compact_logits, compact_params) = outputs
    torch.testing.assert_close(compact_logits, full_logits)
    word = next(name for name in full_params if "word_embeddings" in name)
    torch.testing.assert_close(compact_params[word].grad, full_params[word].grad[used])
    unused = torch.ones(full.config.vocab_size, dtype=torch.bool)
    unused[used] = False
    assert not full_params[word].grad[unused].any()  # the rows the compact embedding drops get no gradient
    for name, param in full_params.items():
        if name != word:
            torch.testing.assert_close(compact_params[name].grad, param.grad, msg=name)
    with torch.no_grad():  # a trained compact table goes back into the full one at the tokenizer's ids
        compact.get_input_embeddings().weight.add_(1.0)
    restore()
    restored = compact.get_input_embeddings().weight
    assert restored.shape[0] == full.config.vocab_size
    torch.testing.assert_close(restored[used], full.get_input_embeddings().weight[used] + 1.0)
    torch.testing.assert_close(restored[unused], full.get_input_embeddings().weight[unused])


def test_each_epoch_takes_every_train_text_and_the_next_share_of_unlabelled_ones():
    from engine.evaluate.finetune import _EpochExamples

    schedule = _EpochExamples(gold=4, unlabelled=10, ratio=1.25, seed=3)
    epochs = [schedule(epoch) for epoch in (1, 2, 3, 4)]
    assert all(e[:4] == [0, 1, 2, 3] and len(e) == 4 + 5 for e in epochs)
    assert set(epochs[0][4:]).isdisjoint(epochs[1][4:])  # no repeat before every unlabelled text was seen
    assert set(epochs[0][4:] + epochs[1][4:]) == set(range(4, 14))
    assert epochs[2] == epochs[0] and epochs == [_EpochExamples(4, 10, 1.25, 3)(epoch) for epoch in (1, 2, 3, 4)]
    assert epochs[0] != _EpochExamples(4, 10, 1.25, 4)(1)
    assert _EpochExamples(4, 10, 0.0, 3)(2) == [0, 1, 2, 3]
    assert sorted(_EpochExamples(4, 3, 5.0, 3)(1)) == list(range(7))  # fewer unlabelled texts than the share
