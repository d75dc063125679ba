"""The vocabulary trim's fast count (distinct words encoded once in a second thread, pieces inside words
looked up in numpy) gives exactly what the straightforward version gives: tokens counted line by line,
words and characters from a Counter, pieces inside words found by a loop over every substring."""

from __future__ import annotations

import json
import random
import sys
import threading
from collections import Counter

import numpy as np
import pytest
from test_trim_vocab import LETTERS, tiny_model, unigram_tokenizer
from tokenizers import AddedToken, Regex, Tokenizer, models, normalizers, pre_tokenizers
from transformers import BertTokenizerFast, XLMRobertaTokenizerFast

from engine.models.adapters import adapter_for
from engine.surgery import vocab

# Lines that a word-by-word count could get wrong: separators the normaliser removes or keeps, runs and
# ends of whitespace, words that start with a combining mark or end with a prepended mark (grapheme
# clusters across a space), added tokens written in the text, empty lines, case and compatibility forms.
AWKWARD = [
    "  leading and  double  spaces ", "tab\there\tand\nnewline", "nbsp\xa0here\u2003em space", "a\x1cb c\x1fd",
    "combining \u0301start and e\u0301 and \u0903x", "x\xa0\u0301y z\u3000\u0308w", "<mask> in text and <s>x</s>",
    "[CLS] and [MASK]x [UNK]", "ZWJ \u200dstart \u200bzero", "Σ ΟΔΟΣ σ İstanbul ǅ", "\u0e33 thai \u0eb3",
    "\u0600 \u0601x arabic\u0600", "emoji \U0001f44d\U0001f3fb \U0001f3fb", "ｆｕｌｌ　width ½ ´",
    "a\r\nb\u2028c\x85d", "", " ", "the cat, the dog.",
]  # fmt: skip
WORDS = ["the", "cat", "dog", "walked", "house", "houses", "zebra", "fox", "quick", "ouse", "ed", "ing", "qoph"]


def corpus(lines: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    alphabet = LETTERS + "éüçñ.,"
    texts = []
    for i in range(lines):
        words = [rng.choice(WORDS) if rng.random() < 0.7 else "".join(rng.choices(alphabet, k=rng.randint(1, 9)))
                 for _ in range(rng.randint(1, 12))]
        texts.append(" ".join(words) + rng.choice(["", ".", " ,", "!"]))
        if i % 17 == 0:
            texts.append(AWKWARD[(i // 17) % len(AWKWARD)])
    return texts + AWKWARD


def wordpiece(lowercase: bool = True) -> BertTokenizerFast:
    """MiniLM's shape: BertNormalizer (clean text, CJK, lowercase), BertPreTokenizer, `##` continuations."""
    pieces = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "!", *LETTERS, *(f"##{c}" for c in LETTERS),
              "the", "cat", "dog", "walk", "house", "zebra", "fox", "quick", "##ed", "##ing", "##ouse", "é",
              "##é", "ü", "σ", "##ς", "ο", "##δ", "##ο", "ς"]  # fmt: skip
    backend = Tokenizer(models.WordPiece({p: i for i, p in enumerate(pieces)}, unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return BertTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
                             pad_token="[PAD]", mask_token="[MASK]")


def xlmr_hub_shape() -> XLMRobertaTokenizerFast:
    """XLM-R as published: nmt_nfkc (a grapheme at a time), runs of spaces made one, Metaspace alone (so a
    trailing space or a run of separators is a `▁` token of its own)."""
    from engine.models.packaged import nmt_nfkc_charsmap

    tokenizer = unigram_tokenizer()
    backend = tokenizer.backend_tokenizer
    backend.normalizer = normalizers.Sequence(
        [normalizers.Precompiled(nmt_nfkc_charsmap()), normalizers.Replace(Regex(" {2,}"), " ")])
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    return tokenizer


def unigram_first_only() -> XLMRobertaTokenizerFast:
    """`prepend_scheme = "first"`: only a line's first word gets `▁`, so words cannot be encoded alone."""
    tokenizer = unigram_tokenizer()
    tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    return tokenizer


TOKENIZERS = {"wordpiece": wordpiece, "unigram": unigram_tokenizer, "xlmr-hub": xlmr_hub_shape,
              "prepend-first": unigram_first_only}


# The straightforward version (the trim before the fast count), kept here as the reference.


def reference_tally(backend: Tokenizer, texts: list[str], n_tokens: int, words_kept: int):
    counts = np.zeros(n_tokens, dtype=np.int64)
    for encoding in backend.encode_batch(texts, add_special_tokens=False):
        for token_id in encoding.ids:
            counts[token_id] += 1
    normalize = backend.normalizer.normalize_str if backend.normalizer else (lambda text: text)
    alphabet: set[str] = set()
    raw: Counter[str] = Counter()
    for start in range(0, len(texts), vocab._CHUNK):
        raw.update(" ".join(texts[start : start + vocab._CHUNK]).split())
        if len(raw) > words_kept:
            ranked = raw.most_common()
            for word, _ in ranked[words_kept // 2 :]:
                alphabet.update(normalize(word))
            raw = Counter(dict(ranked[: words_kept // 2]))
    words: Counter[str] = Counter()
    for word, n in raw.items():
        text = normalize(word)
        alphabet.update(text)
        for piece, _ in backend.pre_tokenizer.pre_tokenize_str(text):
            words[piece] += n
    return counts, {c for c in alphabet if not c.isspace()}, words


def reference_substring_counts(spec: dict, words: Counter[str], n_tokens: int, longest: int = 16) -> np.ndarray:
    model = spec["model"]
    if model["type"] == "WordPiece":
        prefix, ids = model.get("continuing_subword_prefix") or "##", model["vocab"]
    else:
        prefix, ids = "", {piece: i for i, (piece, _) in enumerate(model["vocab"])}
    counts = np.zeros(n_tokens, dtype=np.int64)
    for word, n in words.items():
        for start in range(len(word)):
            lead = prefix if start else ""
            for end in range(start + 1, min(len(word), start + longest) + 1):
                token_id = ids.get(lead + word[start:end])
                if token_id is not None and token_id < n_tokens:
                    counts[token_id] += n
    return counts


def reference_spelled_ids(spec: dict, alphabet: set[str], taken: np.ndarray, n_tokens: int, budget: int):
    alphabet = alphabet | {"\u2581", "#"}
    model = spec["model"]
    if model["type"] == "WordPiece":
        pieces = [(piece, i, 0.0) for piece, i in sorted(model["vocab"].items(), key=lambda item: item[1])]
    else:
        pieces = [(piece, i, score) for i, (piece, score) in enumerate(model["vocab"])]
    spelled = [(score, i) for piece, i, score in pieces
               if i < n_tokens and not taken[i] and len(piece) > 1 and set(piece) <= alphabet]
    spelled.sort(key=lambda item: -item[0])
    return np.array([i for _, i in spelled[:budget]], dtype=np.int64)


@pytest.fixture(params=sorted(TOKENIZERS))
def tokenizer(request):
    return TOKENIZERS[request.param]()


@pytest.mark.parametrize("words_kept", [vocab.WORDS_KEPT, 60])
def test_the_count_equals_the_line_by_line_count(tokenizer, words_kept, monkeypatch):
    """Token counts, alphabet and words, over chunks of 50 lines (words recur across chunks; odd lines in
    most chunks) and, with 60 words kept, past the cap on distinct words (the rarest half dropped)."""
    monkeypatch.setattr(vocab, "_CHUNK", 50)
    monkeypatch.setattr(vocab, "WORDS_KEPT", words_kept)
    monkeypatch.setattr(vocab, "_WORDS_PENDING", 40)  # the pass waits for the encoding thread now and then
    texts = corpus(400, seed=1)
    backend = vocab._untruncated(tokenizer.backend_tokenizer)
    n_tokens = len(tokenizer)
    tally = vocab._tally(backend, texts, n_tokens)
    try:
        counts = tally.token_counts().copy()
    finally:
        tally.close()
    expected_counts, alphabet, words = reference_tally(backend, texts, n_tokens, words_kept)
    assert np.array_equal(counts, expected_counts)
    assert tally.alphabet == alphabet
    assert tally.words == words


@pytest.mark.parametrize("name", sorted(TOKENIZERS))
def test_words_left_whole_are_the_pre_tokenizers_own_pieces(name):
    """The pieces the pass writes down for a word without asking the pre-tokenizer are the ones it makes."""
    backend = TOKENIZERS[name]().backend_tokenizer
    whole, pre_tokenize = vocab._whole_word(backend.pre_tokenizer), backend.pre_tokenizer.pre_tokenize_str
    every = [chr(c) for c in range(0x30000) if not 0xD800 <= c < 0xE000]
    words = [w for line in AWKWARD for w in line.split()] + WORDS + every + ["a" + c + "b" for c in every[::5]] + [""]
    taken = [(word, whole(word)) for word in words if whole(word) is not None]
    assert len(taken) > len(words) / 3  # plain words are not asked about
    assert [(word, pieces) for word, pieces in taken if pieces != tuple(p for p, _ in pre_tokenize(word))] == []


def test_which_tokenizers_are_counted_word_by_word():
    assert vocab._Wordwise.of(wordpiece().backend_tokenizer).suspect is not None  # \x1c... are not separators
    assert vocab._Wordwise.of(unigram_tokenizer().backend_tokenizer) is not None
    hub = vocab._Wordwise.of(xlmr_hub_shape().backend_tokenizer)
    assert hub is not None and hub.suspect.search("x ") and not hub.suspect.search("x y")
    assert vocab._Wordwise.of(unigram_first_only().backend_tokenizer) is None
    normalised = unigram_tokenizer()
    normalised.backend_tokenizer.add_tokens([AddedToken("Cat", normalized=True)])
    assert vocab._Wordwise.of(normalised.backend_tokenizer) is None


@pytest.mark.parametrize("family", ["wordpiece", "unigram"])
def test_pieces_inside_words_equal_the_substring_loop(family, monkeypatch):
    tokenizer = wordpiece() if family == "wordpiece" else unigram_tokenizer()
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    if family == "unigram":  # a piece listed twice (the last id counts), one too long to look up, astral ones
        spec["model"]["vocab"] += [["▁the", -1.0], ["▁" + "a" * 17, -1.0], ["\U0001f44d", -1.0], ["x\U0001f44d", -1.0]]
    else:
        spec["model"]["vocab"].update({"##" + "a" * 16: 900, "##\U0001f44d": 901, "##": 902})
    rng = random.Random(3)
    words = Counter({"".join(rng.choices(LETTERS[:6] + "\U0001f44d", k=rng.randint(1, 30))): rng.randint(1, 9)
                     for _ in range(3000)})
    words.update({"▁the": 4, "▁" + "a" * 20: 2, "house": 3, "##ouse": 1, "": 1})
    n_tokens = len(tokenizer) + 4
    assert np.array_equal(vocab._substring_counts(spec, words, n_tokens),
                          reference_substring_counts(spec, words, n_tokens))
    assert np.array_equal(vocab._substring_counts(spec, words, 20), reference_substring_counts(spec, words, 20))
    with monkeypatch.context() as patch:  # words taken a part at a time; abandoned when no longer wanted
        patch.setattr(vocab, "_WORDS_AT_ONCE", 700)
        assert np.array_equal(vocab._substring_counts(spec, words, n_tokens),
                              reference_substring_counts(spec, words, n_tokens))
        calls = []
        assert vocab._substring_counts(spec, words, n_tokens, wanted=lambda: calls.append(1) or len(calls) < 3) is None


@pytest.mark.parametrize("family", ["wordpiece", "unigram"])
def test_spelled_pieces_equal_the_loop(family):
    tokenizer = wordpiece() if family == "wordpiece" else unigram_tokenizer()
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    n_tokens = len(tokenizer)
    taken = np.zeros(n_tokens, dtype=bool)
    taken[::3] = True
    for alphabet in ({"t", "h", "e", "o", "u", "s"}, set(LETTERS), set()):
        for budget in (0, 5, 1000):
            assert np.array_equal(vocab._spelled_ids(spec, alphabet, taken, n_tokens - 2, budget),
                                  reference_spelled_ids(spec, alphabet, taken, n_tokens - 2, budget))


@pytest.mark.parametrize("name", sorted(TOKENIZERS))
@pytest.mark.parametrize("cut", [True, False])
def test_trim_report_equals_the_straightforward_trim(name, cut, monkeypatch):
    """The whole trim (kept ids, every report field, the rebuilt tokenizer) with the fast count and with
    the reference functions in its place: cutting rare tokens, and on a corpus that uses fewer tokens than
    asked (the fill: pieces inside its words, then pieces spelled in its alphabet)."""
    texts = corpus(300, seed=2)
    size = 30 if cut else len(TOKENIZERS[name]())
    results = []
    for reference in (False, True):
        tokenizer = TOKENIZERS[name]()
        family = "bert" if name == "wordpiece" else "xlm-roberta"
        model = tiny_model(family, False, len(tokenizer))
        with monkeypatch.context() as patch:
            patch.setattr(vocab, "_CHUNK", 64)
            if reference:
                patch.setattr(vocab, "_tally", reference_tally_stub)
                patch.setattr(vocab, "_substring_counts", reference_substring_counts)
                patch.setattr(vocab, "_spelled_ids", reference_spelled_ids)
            _, trimmed, report = vocab.trim_vocabulary(model, tokenizer, adapter_for(family), texts, size,
                                                       validation_texts=AWKWARD)
        results.append((report, trimmed.backend_tokenizer.to_str()))
    assert results[0] == results[1]
    report = results[0][0]
    assert report.kept_by_frequency == 30 if cut else 0 < report.kept_to_fill and report.kept_by_frequency < size


class _ReferenceTally:
    def __init__(self, counts, alphabet, words):
        self.counts, self.alphabet, self.words = counts, alphabet, words

    def counting(self) -> bool:
        return False

    def token_counts(self):
        return self.counts

    def close(self) -> None:
        pass


def reference_tally_stub(tokenizer, texts, n_tokens, words=True, progress=None):
    counts, alphabet, found = reference_tally(tokenizer, list(texts), n_tokens, vocab.WORDS_KEPT)
    return _ReferenceTally(counts, alphabet, found if words else Counter())


def test_the_encoding_thread_ends_when_the_count_is_cancelled():
    tokenizer = unigram_tokenizer()
    model = tiny_model("xlm-roberta", False, len(tokenizer))

    def cancel(done: int, total: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        vocab.trim_vocabulary(model, tokenizer, adapter_for("xlm-roberta"), corpus(200, seed=4), 40, progress=cancel)
    assert not [t for t in threading.enumerate() if t.name.startswith("trim-encode")]


def test_python_separators_and_grapheme_joiners_are_complete():
    assert vocab._SPLIT_SPACES == "".join(c for c in map(chr, range(sys.maxunicode + 1)) if c.isspace())
    regex = pytest.importorskip("regex")
    every = "".join(chr(c) for c in range(sys.maxunicode + 1) if not 0xD800 <= c < 0xE000)
    before = regex.findall(r"[\p{Grapheme_Cluster_Break=Extend}\p{Grapheme_Cluster_Break=ZWJ}"
                           r"\p{Grapheme_Cluster_Break=SpacingMark}]", every)
    after = regex.findall(r"\p{Grapheme_Cluster_Break=Prepend}", every)
    assert before and after
    assert [c for c in before if not vocab._joins(c + "a")] == []
    assert [c for c in after if not vocab._joins("a" + c)] == []
