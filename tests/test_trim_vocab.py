"""Vocabulary trimming: trimmed model + tokenizer reload in a fresh process and match the original."""

from __future__ import annotations

import copy
import json
import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertForMaskedLM,
    BertModel,
    BertTokenizerFast,
    XLMRobertaConfig,
    XLMRobertaForMaskedLM,
    XLMRobertaModel,
    XLMRobertaTokenizerFast,
)

from engine.errors import CorpusError, ModelError
from engine.models.adapters import adapter_for
from engine.surgery.vocab import TrimReport, trim_vocabulary

LETTERS = "abcdefghijklmnopqrstuvwxyz"
COMMON = ["the", "cat", "dog", "walked", "walking", "house", "runs", "runner", "cats", "dogs", "walks"]
TEXTS = [
    " ".join(random.Random(i).choice(COMMON) for _ in range(8)) + ("." if i % 3 else ",") for i in range(60)
] + ["the zebra walked.", "a quick fox"]
PROBES = ["the cat walked.", "the dogs runs, the house", "walking cats", "the zebra", "a fox"]
SIZE = 12
EXTRA_ROWS = 5  # embedding rows past the tokenizer, as in multilingual-e5-small
SPECIALS = ("cls", "sep", "pad", "mask", "unk")

WORDPIECE_VOCAB = [
    "[PAD]",
    *(f"[unused{i}]" for i in range(5)),
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    ".",
    ",",
    *LETTERS,
    *(f"##{c}" for c in LETTERS),
    "the", "cat", "dog", "walk", "house", "run", "zebra", "quick", "fox", "xyzzy", "qoph",
    "##ing", "##ed", "##ner", "##ouse", "##og",
]  # fmt: skip
UNIGRAM_WORDS = [
    "▁the", "▁cat", "▁dog", "▁walk", "ing", "ed", "s", "▁house", "▁run", "ner", "▁zebra", "▁quick",
    "▁fox", "▁xyzzy", "▁qoph", "ouse", "og", ".", ",",
]  # fmt: skip


def wordpiece_tokenizer(folder: Path) -> BertTokenizerFast:
    """A WordPiece tokenizer loaded from a folder that holds a real `vocab.txt` (which must go stale)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(WORDPIECE_VOCAB) + "\n", encoding="utf-8")
    BertTokenizerFast(vocab=str(folder / "vocab.txt")).save_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert len(tokenizer) == len(WORDPIECE_VOCAB)
    return tokenizer


def unigram_tokenizer() -> XLMRobertaTokenizerFast:
    """An XLM-R style Unigram tokenizer (specials first, `<mask>` last) built with `tokenizers`."""
    pieces = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -8.0)]
    pieces += [(c, -10.0) for c in LETTERS] + [(f"▁{c}", -9.0) for c in LETTERS]
    pieces += [(w, -2.0 - 0.1 * i) for i, w in enumerate(UNIGRAM_WORDS)] + [("<mask>", 0.0)]
    backend = Tokenizer(models.Unigram(pieces, unk_id=3))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")]
    )
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    backend.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    return XLMRobertaTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        sep_token="</s>",
        cls_token="<s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
    )


def tiny_model(family: str, mlm: bool, n_tokens: int) -> torch.nn.Module:
    torch.manual_seed(0)
    shape = {
        "vocab_size": n_tokens + EXTRA_ROWS,
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 128,
    }
    if family == "bert":
        model = (BertForMaskedLM if mlm else BertModel)(BertConfig(pad_token_id=0, **shape))
    else:
        config = XLMRobertaConfig(
            pad_token_id=1, bos_token_id=0, eos_token_id=2, max_position_embeddings=64, **shape
        )
        model = (XLMRobertaForMaskedLM if mlm else XLMRobertaModel)(config)
    head = adapter_for(model.config.model_type).mlm_head(model)
    if head is not None:
        with torch.no_grad():
            head.decoder.bias.normal_()  # a non-zero bias, so slicing it is checked
    return model.eval()


def build(family: str, mlm: bool, folder: Path):
    tokenizer = wordpiece_tokenizer(folder / "original") if family == "bert" else unigram_tokenizer()
    model = tiny_model(family, mlm, len(tokenizer))
    original = copy.deepcopy(model)
    return original, tokenizer, model


RELOAD = r"""
import json, sys
import numpy as np, torch
from transformers import AutoModel, AutoModelForMaskedLM, AutoTokenizer
spec = json.load(open(sys.argv[1]))
for job in spec["jobs"]:
    tok = AutoTokenizer.from_pretrained(job["dir"])
    cls = AutoModelForMaskedLM if job["mlm"] else AutoModel
    model, info = cls.from_pretrained(job["dir"], output_loading_info=True)
    model.eval()
    emb = model.get_input_embeddings().weight
    arrays = {"emb": emb.detach().numpy()}
    meta = {
        "len": len(tok), "vocab_size": model.config.vocab_size, "rows": emb.shape[0],
        "pad_token_id": model.config.pad_token_id,
        "loading": {k: sorted(map(str, v)) for k, v in info.items()},
        "specials": {n: getattr(tok, n + "_token_id") for n in spec["specials"]},
        "text_ids": [tok(t)["input_ids"] for t in spec["texts"]],
        "probe_ids": [tok(t)["input_ids"] for t in spec["probes"]],
    }
    if job["mlm"]:
        out = model.get_output_embeddings()
        meta["decoder_rows"] = out.weight.shape[0]
        meta["tied"] = out.weight.data_ptr() == emb.data_ptr()
        arrays["decoder_bias"] = out.bias.detach().numpy()
    with torch.no_grad():
        for i, ids in enumerate(meta["probe_ids"]):
            output = model(torch.tensor([ids]), output_hidden_states=True)
            arrays[f"hidden{i}"] = output.hidden_states[-1][0].numpy()
            if job["mlm"]:
                arrays[f"logits{i}"] = output.logits[0].numpy()
    np.savez(job["dir"] + "/reloaded.npz", **arrays)
    json.dump(meta, open(job["dir"] + "/reloaded.json", "w"))
"""

CASES = [("bert", True), ("bert", False), ("xlm-roberta", True), ("xlm-roberta", False)]


@pytest.fixture(scope="module")
def trimmed(tmp_path_factory):
    """Each case trimmed, saved, and reloaded by one fresh Python process."""
    root = tmp_path_factory.mktemp("trim")
    cases, jobs = {}, []
    for family, mlm in CASES:
        folder = root / f"{family}-{'mlm' if mlm else 'base'}"
        original, tokenizer, model = build(family, mlm, folder)
        old_tokenizer = copy.deepcopy(tokenizer)
        model, new_tokenizer, report = trim_vocabulary(
            model, tokenizer, adapter_for(family), TEXTS, SIZE, validation_texts=PROBES
        )
        saved = folder / "trimmed"
        model.save_pretrained(saved)
        new_tokenizer.save_pretrained(saved)
        cases[family, mlm] = {
            "original": original, "old_tokenizer": old_tokenizer, "model": model,
            "tokenizer": new_tokenizer, "report": report, "dir": saved,
        }  # fmt: skip
        jobs.append({"dir": str(saved), "mlm": mlm})
    spec = root / "spec.json"
    spec.write_text(json.dumps({"jobs": jobs, "texts": TEXTS, "probes": PROBES, "specials": SPECIALS}))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", RELOAD, str(spec)], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr
    for case in cases.values():
        case["meta"] = json.loads((case["dir"] / "reloaded.json").read_text())
        case["arrays"] = dict(np.load(case["dir"] / "reloaded.npz"))
    return cases


@pytest.fixture(params=CASES, ids=lambda c: f"{c[0]}-{'mlm' if c[1] else 'base'}")
def case(request, trimmed):
    return trimmed[request.param]


def old_ids(case, text: str) -> list[int]:
    return case["old_tokenizer"](text)["input_ids"]


def test_sizes_agree_after_reload(case):
    meta, report = case["meta"], case["report"]
    assert meta["len"] == meta["vocab_size"] == meta["rows"] == report.new_size == len(report.kept_ids)
    assert meta.get("decoder_rows", meta["rows"]) == meta["rows"]
    assert report.old_size == len(case["old_tokenizer"]) + EXTRA_ROWS
    assert report.new_size == report.kept_by_frequency + report.kept_special + report.kept_characters
    assert report.kept_by_frequency == SIZE
    assert report.new_size < len(case["old_tokenizer"])
    assert meta["loading"]["missing_keys"] == [] and meta["loading"]["unexpected_keys"] == []
    assert meta["loading"]["mismatched_keys"] == []


def test_no_stale_vocabulary_file_is_saved(case):
    assert sorted(p.name for p in case["dir"].iterdir() if not p.name.startswith("reloaded")) == [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ]


def test_reloaded_tokenizer_matches_model_and_in_memory_tokenizer(case):
    meta, rows = case["meta"], case["meta"]["rows"]
    for text, ids in zip(TEXTS + PROBES, meta["text_ids"] + meta["probe_ids"], strict=True):
        assert max(ids) < rows
        assert ids == case["tokenizer"](text)["input_ids"]
    # every character of the training texts was seen: no unknowns appear where there were none
    unk = meta["specials"]["unk"]
    for text, ids in zip(TEXTS, meta["text_ids"], strict=True):
        assert (unk in ids) == (case["old_tokenizer"].unk_token_id in old_ids(case, text))
        assert unk not in ids


def test_special_tokens_point_at_their_old_rows(case):
    meta, kept = case["meta"], case["report"].kept_ids
    old_emb = case["original"].get_input_embeddings().weight.detach().numpy()
    moved = 0
    for name in SPECIALS:
        new_id, old_id = meta["specials"][name], getattr(case["old_tokenizer"], name + "_token_id")
        assert kept[new_id] == old_id
        np.testing.assert_array_equal(case["arrays"]["emb"][new_id], old_emb[old_id])
        moved += new_id != old_id
    assert moved > 0  # [UNK]/[CLS]/... and <mask> really were renumbered
    assert kept[meta["pad_token_id"]] == case["original"].config.pad_token_id


def test_outputs_match_untrimmed_model_on_kept_tokens(case):
    meta, arrays, kept = case["meta"], case["arrays"], np.array(case["report"].kept_ids)
    original, unchanged = case["original"], 0
    for i, text in enumerate(PROBES):
        before, after = old_ids(case, text), meta["probe_ids"][i]
        if kept[after].tolist() != before:
            continue  # resegmented: a cut token was spelled out in kept pieces
        unchanged += 1
        with torch.no_grad():
            output = original(torch.tensor([before]), output_hidden_states=True)
        np.testing.assert_allclose(arrays[f"hidden{i}"], output.hidden_states[-1][0].numpy(), atol=1e-5)
        if f"logits{i}" in arrays:
            np.testing.assert_allclose(arrays[f"logits{i}"], output.logits[0][:, kept].numpy(), atol=1e-5)
    assert unchanged >= 3


def test_decoder_stays_tied_and_bias_is_sliced(trimmed):
    for family in ("bert", "xlm-roberta"):
        case = trimmed[family, True]
        assert case["meta"]["tied"]
        old_bias = case["original"].get_output_embeddings().bias.detach().numpy()
        np.testing.assert_array_equal(case["arrays"]["decoder_bias"], old_bias[list(case["report"].kept_ids)])
        model = case["model"]
        assert model.get_output_embeddings().weight is model.get_input_embeddings().weight


def test_small_size_cuts_rare_tokens_and_keeps_characters(tmp_path):
    _, tokenizer, model = build("bert", True, tmp_path)
    vocab = tokenizer.get_vocab()
    counts = Counter(i for t in TEXTS for i in tokenizer(t, add_special_tokens=False)["input_ids"])
    top = [i for i, _ in counts.most_common(4)]
    validation = ["the zebra", "cat dog", "the jug"]
    _, new_tokenizer, report = trim_vocabulary(
        model, tokenizer, adapter_for("bert"), TEXTS, 4, validation_texts=validation
    )
    kept = set(report.kept_ids)
    assert report.kept_by_frequency == 4 and set(top) <= kept
    assert {vocab["cat"], vocab["dog"]} <= set(top)
    assert vocab["the"] not in kept and vocab["zebra"] not in kept and vocab["xyzzy"] not in kept
    assert {vocab["z"], vocab["##z"], vocab["##b"], vocab["."]} <= kept
    assert vocab["j"] not in kept  # never seen in the corpus
    assert new_tokenizer.tokenize("the zebra") == ["t", "##h", "##e", "z", "##e", "##b", "##r", "##a"]
    assert report.resegmentation_rate == pytest.approx(2 / 3)  # "cat dog" kept its segmentation
    after = [token for text in validation for token in new_tokenizer.tokenize(text)]
    assert after.count("[UNK]") == 1  # only "jug" (unseen "j") became unknown
    assert report.unknown_rate_before == 0.0
    assert report.unknown_rate_after == pytest.approx(1 / len(after))
    assert model.config.vocab_size == len(new_tokenizer) == report.new_size


def test_corpus_smaller_than_size_keeps_what_is_used():
    tokenizer = unigram_tokenizer()
    model = tiny_model("xlm-roberta", False, len(tokenizer))
    texts = ["the cat", "the dog walk"]
    used = {i for t in texts for i in tokenizer(t, add_special_tokens=False)["input_ids"]}
    _, new_tokenizer, report = trim_vocabulary(model, tokenizer, adapter_for("xlm-roberta"), texts, 1000)
    assert isinstance(report, TrimReport)
    assert report.kept_by_frequency == len(used)
    assert report.kept_special == 5  # <s> <pad> </s> <unk> <mask>
    assert set(report.kept_ids) >= used
    assert new_tokenizer.convert_ids_to_tokens(list(range(len(new_tokenizer))))[-1] == "<mask>"
    assert new_tokenizer.tokenize("the dog walk") == ["▁the", "▁dog", "▁walk"]


@pytest.mark.parametrize("family", ["bert", "xlm-roberta"])
def test_budget_is_filled_with_pieces_inside_the_corpus_words(family, tmp_path):
    """The corpus uses few tokens; the rest of the budget goes first to pieces inside its words
    (`house` holds `ouse`), then to pieces spelled in its alphabet, never to foreign characters."""
    texts = ["the house", "the houses walked"]
    sizes = {}
    for fill in (False, True):
        if family == "bert":
            _, tokenizer, model = build("bert", True, tmp_path / str(fill))
        else:
            tokenizer = unigram_tokenizer()
            model = tiny_model("xlm-roberta", False, len(tokenizer))
        vocab = tokenizer.get_vocab()
        used = {i for t in texts for i in tokenizer(t, add_special_tokens=False)["input_ids"]}
        _, new_tokenizer, report = trim_vocabulary(model, tokenizer, adapter_for(family), texts, len(used) + 3,
                                                   fill=fill)
        kept = set(report.kept_ids)
        assert used <= kept and report.kept_by_frequency == len(used)
        sizes[fill] = report.new_size - report.kept_to_fill
        assert report.new_size == len(new_tokenizer) == model.config.vocab_size
        if fill:
            assert 1 <= report.kept_to_fill <= 3
            inside = "##ouse" if family == "bert" else "ouse"
            assert vocab[inside] in kept  # a piece of "house" that its own segmentation does not use
            alphabet = set("thehouseswalked") | {"#", "▁"}
            filled = [tokenizer.convert_ids_to_tokens(i) for i in kept - used - set(tokenizer.all_special_ids)]
            assert all(set(piece) <= alphabet for piece in filled)
        else:
            assert report.kept_to_fill == 0
    assert sizes[True] == sizes[False]


def test_rejects_empty_corpus_and_unsupported_tokenizer():
    tokenizer = unigram_tokenizer()
    model = tiny_model("xlm-roberta", False, len(tokenizer))
    with pytest.raises(CorpusError):
        trim_vocabulary(model, tokenizer, adapter_for("xlm-roberta"), [], 10)
    bpe = Tokenizer(models.BPE({"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "a": 4}, [], unk_token="<unk>"))
    with pytest.raises(ModelError, match="WordPiece and Unigram"):
        trim_vocabulary(
            model, XLMRobertaTokenizerFast(tokenizer_object=bpe), adapter_for("xlm-roberta"), ["a"], 10
        )
