"""Vocabulary trimming: keep the tokens a language uses, cut the embedding and MLM-decoder rows, and
rebuild a fast tokenizer that matches the trimmed model id for id.

The new vocabulary keeps the old id order, so every kept token's new id is its rank among the kept
old ids. The tokenizer is rebuilt from its own `tokenizer.json` (WordPiece or Unigram) and wrapped
in the same transformers class without any slow vocabulary file: `save_pretrained` then writes only
`tokenizer.json` + `tokenizer_config.json`, and `AutoTokenizer` reloads from that `tokenizer.json`
(no stale `vocab.txt` / `sentencepiece.bpe.model` can be written or picked up).
"""

from __future__ import annotations

import gc
import json
import re
import unicodedata
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import chain, compress
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer
from torch import nn

from engine.data.corpus import iter_chunks
from engine.errors import CorpusError, ModelError
from engine.models.adapters import FamilyAdapter

_CHUNK = 4096
WORDS_KEPT = 2_000_000  # distinct words counted for filling the budget; past it, the rarest half is dropped
_WORDS_PENDING = 250_000  # new words the encoding thread may be behind the pass (a few seconds of encoding)
_NOT_KEPT = -1
# Constructor arguments that point at (old) vocabulary files or carry old ids: never passed on.
_STALE_KWARGS = frozenset(
    {
        "vocab",
        "merges",
        "vocab_file",
        "merges_file",
        "tokenizer_file",
        "tokenizer_object",
        "added_tokens_decoder",
        "name_or_path",
    }
)


@dataclass(frozen=True)
class TrimReport:
    """What a trim kept and what it did to tokenisation.

    `old_size` is the old number of embedding rows (it may exceed the tokenizer's entries);
    `new_size == kept_by_frequency + kept_to_fill + kept_special + kept_characters == len(kept_ids)`.
    `kept_by_frequency` is at most the requested size (fewer when the corpus uses fewer distinct
    non-special tokens); `kept_to_fill` counts the pieces that fill the rest of the budget (pieces
    the corpus's words contain but its segmentation does not use); `kept_special` counts
    special/added tokens and ids the config or post-processor refers to; `kept_characters` counts
    single-character pieces kept on top of these.
    `resegmentation_rate` is the fraction of validation texts whose token sequence (token strings,
    without special tokens) differs after trimming; `unknown_rate_*` is the fraction of validation
    tokens that are the unknown token. All three are 0.0 when there are no validation texts.
    `kept_ids` lists the old ids in new-id order (new id i is old id kept_ids[i]).
    """

    old_size: int
    new_size: int
    kept_by_frequency: int
    kept_to_fill: int
    kept_special: int
    kept_characters: int
    resegmentation_rate: float
    unknown_rate_before: float
    unknown_rate_after: float
    kept_ids: tuple[int, ...]


def trim_vocabulary(
    model: nn.Module,
    tokenizer: Any,
    adapter: FamilyAdapter,
    texts: Sequence[str],
    size: int,
    validation_texts: Sequence[str] = (),
    fill: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[nn.Module, Any, TrimReport]:
    """Keep the `size` most frequent tokens of `texts` plus special tokens and seen characters.

    When the texts use fewer than `size` distinct tokens and `fill` is set, the rest of the budget
    goes to the pieces that occur most often inside the texts' words (`_substring_counts`): the
    pieces unseen words of the language are likely to need, so held-out text re-segments less.

    The texts are read once, as a stream (`_tally`: token counts, characters and words together), so any
    sequence of str will do, a corpus on disk included; `progress(lines done, lines in all)` is called
    after each chunk of them.

    The model is changed in place (embedding rows, MLM decoder rows and biases, config ids) and
    returned with a new fast tokenizer of the same class and a report.
    """
    if size < 0:
        raise ValueError(f"vocabulary size must be >= 0, got {size}")
    if not len(texts):
        raise CorpusError("vocabulary trimming needs text to count tokens on; the corpus is empty")
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ModelError("vocabulary trimming needs a fast (tokenizers-backed) tokenizer")
    with _gc_paused():
        return _trim(model, tokenizer, backend, adapter, texts, size, validation_texts, fill, progress)


def _trim(model: nn.Module, tokenizer: Any, backend: Tokenizer, adapter: FamilyAdapter, texts: Sequence[str],
          size: int, validation_texts: Sequence[str], fill: bool,
          progress: Callable[[int, int], None] | None) -> tuple[nn.Module, Any, TrimReport]:
    kind = type(backend.model).__name__
    if kind not in ("WordPiece", "Unigram"):
        raise ModelError(f"vocabulary trimming supports WordPiece and Unigram tokenizers, not {kind!r}")

    n_tokens = len(tokenizer)
    word_embeddings = adapter.embeddings(model).word_embeddings
    n_rows = word_embeddings.num_embeddings
    if n_rows < n_tokens:
        raise ModelError(f"the tokenizer has {n_tokens} entries but the model only {n_rows} embedding rows")

    counter = _untruncated(backend)
    tally = _tally(counter, texts, n_tokens, words=fill, progress=progress)
    try:  # while words are still being encoded: parse the tokenizer, and look for pieces to fill the budget
        spec = json.loads(backend.to_str())
        special = _special_ids(tokenizer, spec, model, adapter, n_tokens)

        def unfilled() -> bool:
            counts = tally.token_counts().copy()
            counts[special] = 0
            return np.count_nonzero(counts) < size

        inside = None
        if fill and tally.counting():
            inside = _substring_counts(spec, tally.words, n_tokens, wanted=lambda: tally.counting() or unfilled())
        counts = tally.token_counts()
    finally:
        tally.close()
    counts[special] = 0
    used = np.flatnonzero(counts)
    if used.size > size:
        used = used[np.argsort(-counts[used], kind="stable")[:size]]
    keep = np.zeros(n_tokens, dtype=bool)
    keep[special] = True
    keep[used] = True
    characters = _character_ids(counter, spec, tally.alphabet)
    kept_characters = int(np.count_nonzero(~keep[characters]))
    keep[characters] = True
    filled = np.zeros(0, dtype=np.int64)
    if fill and used.size < size:
        filled = _fill_ids(spec, tally, n_tokens, keep, size - used.size, inside)
        keep[filled] = True

    kept_ids = np.flatnonzero(keep)
    new_id_of = np.full(n_tokens, _NOT_KEPT, dtype=np.int64)
    new_id_of[kept_ids] = np.arange(kept_ids.size)

    new_tokenizer, new_raw = _rebuild_tokenizer(tokenizer, spec, kept_ids, new_id_of)
    _slice_model(model, adapter, kept_ids, new_id_of)
    reseg, unk_before, unk_after = _segmentation_change(
        counter, tokenizer.unk_token_id, lambda: _untruncated(new_raw),
        new_tokenizer.unk_token_id, validation_texts
    )
    report = TrimReport(
        old_size=n_rows,
        new_size=int(kept_ids.size),
        kept_by_frequency=int(used.size),
        kept_to_fill=int(filled.size),
        kept_special=int(special.size),
        kept_characters=kept_characters,
        resegmentation_rate=reseg,
        unknown_rate_before=unk_before,
        unknown_rate_after=unk_after,
        kept_ids=tuple(kept_ids.tolist()),
    )
    return model, new_tokenizer, report


def _untruncated(tokenizer: Tokenizer | str) -> Tokenizer:
    """A tokenizer that neither truncates nor pads: `tokenizer` itself when it does neither (it is only
    read, never changed), else a copy of it (or of the serialised tokenizer given)."""
    if isinstance(tokenizer, Tokenizer):
        if tokenizer.truncation is None and tokenizer.padding is None:
            return tokenizer
        tokenizer = tokenizer.to_str()
    copy = Tokenizer.from_str(tokenizer)
    copy.no_truncation()
    copy.no_padding()
    return copy


@contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic garbage collection inside: parsing a 250k-entry tokenizer and counting a corpus allocate
    millions of small objects and create no cycles, but each allocation burst triggers full collections
    over every object the process holds (json.loads of e5's tokenizer: 1.5 s with, 0.35 s without)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@dataclass
class _Tally:
    """What one pass over the texts gathers: each token's count (`token_counts()`; the words' tokens may still
    be being encoded when the pass ends), the characters of the normalised text and (for filling the budget)
    each pre-tokenised word's count."""

    counts: np.ndarray  # so far: the lines encoded whole and the words dropped
    table: _Words
    alphabet: set[str] = field(default_factory=set)
    words: Counter[str] = field(default_factory=Counter)

    def counting(self) -> bool:
        """Whether words are still being encoded."""
        return self.table.busy()

    def token_counts(self) -> np.ndarray:
        """Each token's count (waits for the encoding to end)."""
        self.table.bill(self.counts)
        self.table.close()
        return self.counts

    def close(self) -> None:
        self.table.close()


def _tally(tokenizer: Tokenizer, texts: Sequence[str], n_tokens: int, words: bool = True,
           progress: Callable[[int, int], None] | None = None) -> _Tally:
    """Count tokens, characters and words of `texts` in one streaming pass of `_CHUNK` lines at a time.

    Each chunk's whitespace-separated words are counted in C (`Counter`) into a table of the distinct words
    seen (`_Words`), where each new word is normalised and pre-tokenised once: its characters, and its
    pieces (the same pieces: the BERT and Metaspace pre-tokenizers split at every space). Tokens are
    counted from that table where `_Wordwise` shows that this gives exactly the line-by-line counts: each
    distinct word's pieces go through the tokenizer's model once (in a second thread, while the pass reads
    on) and its ids are weighted by its count; the lines it cannot vouch for, and every line of a tokenizer
    it does not know, are encoded whole. Past `WORDS_KEPT` distinct words the rarest half is dropped (their
    tokens counted and characters kept), so a huge corpus's long tail of rare words cannot fill memory; it
    only matters for filling the budget, which a corpus that large does not need.
    """
    wordwise = _Wordwise.of(tokenizer)
    table = _Words(tokenizer, encode=wordwise is not None, split=words or wordwise is not None)
    tally = _Tally(np.zeros(n_tokens, dtype=np.int64), table, table.alphabet)
    try:
        done, total = 0, len(texts)
        for chunk in iter_chunks(texts, _CHUNK):
            joined = " ".join(chunk)
            found = Counter(joined.split())
            odd = range(len(chunk)) if wordwise is None else wordwise.odd(chunk, joined, found)
            if odd:
                lines = [chunk[i] for i in odd]
                _add_ids(tally.counts, tokenizer.encode_batch_fast(lines, add_special_tokens=False))
            table.add(found, chain.from_iterable(chunk[i].split() for i in odd) if wordwise is not None else ())
            if len(table) > WORDS_KEPT:
                table.keep(WORDS_KEPT // 2, tally.counts)
            done += len(chunk)
            if progress is not None:
                progress(done, total)
        if words:
            for pieces, n in zip(table.pieces, table.seen.tolist(), strict=False):
                for piece in pieces:
                    tally.words[piece] += n
    except BaseException:
        table.close()
        raise
    tally.alphabet = {c for c in tally.alphabet if not c.isspace()}
    return tally


class _Words:
    """The distinct words seen, in the order first seen: how often each was seen, and, when token counts
    come from words (`tokenizer` given), the occurrences whose tokens are not yet counted ("unbilled";
    words of lines encoded whole are not) and each such word's token ids, encoded once, in a second thread,
    at most `_WORDS_PENDING` words behind the pass."""

    def __init__(self, tokenizer: Tokenizer, encode: bool, split: bool) -> None:
        self.normalizer, self.pre_tokenizer, self.split = tokenizer.normalizer, tokenizer.pre_tokenizer, split
        self.whole = _whole_word(self.pre_tokenizer)
        self.alphabet: set[str] = set()
        self.pieces: list[tuple[str, ...]] = []  # of each word (when `split`)
        self.slots: dict[str, int] = {}
        self.seen = np.zeros(0, dtype=np.int64)
        self.unbilled = np.zeros(0, dtype=np.int64)
        self.submitted = np.zeros(0, dtype=bool)
        self.encoded: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (slots, ids per slot, ids)
        self.pending: deque[tuple[Future, int]] = deque()
        # the model alone (no normaliser, pre-tokenizer or added tokens): words arrive as their pieces
        self.model = Tokenizer(tokenizer.model) if encode else None
        self.worker = ThreadPoolExecutor(1, thread_name_prefix="trim-encode") if encode else None

    def __len__(self) -> int:
        return len(self.slots)

    def add(self, found: Counter[str], unbilled: Iterable[str]) -> None:
        """Count the words `found` (word: occurrences); the `unbilled` occurrences among them (words of lines
        encoded whole) are not counted as tokens."""
        before = len(self.slots)
        slots = np.fromiter((self.slots.setdefault(word, len(self.slots)) for word in found), dtype=np.int64,
                            count=len(found))
        counts = np.fromiter(found.values(), dtype=np.int64, count=len(found))
        self.seen = _grown(self.seen, len(self.slots))
        self.seen[slots] += counts
        if len(self.slots) > before:
            self._split(list(compress(found, (slots >= before).tolist())))
        if self.worker is None:
            return
        self.unbilled = _grown(self.unbilled, len(self.slots))
        self.submitted = _grown(self.submitted, len(self.slots))
        self.unbilled[slots] += counts
        excluded = Counter(unbilled)
        if excluded:
            self.unbilled[[self.slots[word] for word in excluded]] -= list(excluded.values())
        new = (self.unbilled[slots] > 0) & ~self.submitted[slots]
        if new.any():
            self.submitted[slots[new]] = True
            words = [self.pieces[slot] for slot in slots[new].tolist()]
            job = self.worker.submit(_encoded_words, self.model, slots[new], words)
            self.pending.append((job, len(words)))
            while sum(n for _, n in self.pending) > _WORDS_PENDING:
                self._collect_one()

    def _split(self, words: list[str]) -> None:
        """Normalise new words (their characters join the alphabet) and pre-tokenise them."""
        texts = [self.normalizer.normalize_str(word) for word in words] if self.normalizer is not None else words
        self.alphabet.update("".join(texts))
        if self.split:
            if self.pre_tokenizer is None:
                self.pieces.extend((text,) for text in texts)
            else:
                pre_tokenize, whole = self.pre_tokenizer.pre_tokenize_str, self.whole
                self.pieces.extend(whole(text) or tuple(piece for piece, _ in pre_tokenize(text)) for text in texts)

    def keep(self, n: int, counts: np.ndarray) -> None:
        """Keep the `n` most seen words (ties: first seen first) and count the tokens of all so far into
        `counts` (the characters of those dropped stay in the alphabet)."""
        self.bill(counts)
        ranked = np.argsort(-self.seen[: len(self.slots)], kind="stable")
        words = list(self.slots)
        kept = ranked[:n]
        self.slots = {words[i]: slot for slot, i in enumerate(kept.tolist())}
        self.seen = self.seen[kept]
        if self.split:
            self.pieces = [self.pieces[i] for i in kept.tolist()]
        if self.worker is not None:
            slots, lengths, ids = self._ids()
            new_slot = np.full(len(words), -1, dtype=np.int64)
            new_slot[kept] = np.arange(kept.size)
            stay = np.flatnonzero(new_slot[slots] >= 0)
            stay = stay[np.argsort(new_slot[slots[stay]])]
            starts = np.cumsum(lengths) - lengths
            self.encoded = [(new_slot[slots[stay]], lengths[stay], ids[_segments(starts[stay], lengths[stay])])]
            self.unbilled = self.unbilled[kept]
            self.submitted = self.submitted[kept]

    def bill(self, counts: np.ndarray) -> None:
        """Count the tokens of the unbilled occurrences into `counts`."""
        if self.worker is None or not self.slots:
            return
        slots, lengths, ids = self._ids()
        np.add.at(counts, ids, np.repeat(self.unbilled[slots], lengths))
        self.unbilled[:] = 0

    def busy(self) -> bool:
        return any(not future.done() for future, _ in self.pending)

    def close(self) -> None:
        if self.worker is not None:
            for future, _ in self.pending:
                future.cancel()
            self.worker.shutdown(wait=True)

    def _ids(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(slots, number of ids of each, their ids) of every word encoded, in slot order."""
        while self.pending:
            self._collect_one()
        if len(self.encoded) != 1:
            slots, lengths, ids = (np.concatenate(parts) for parts in zip((_NONE, _NONE, _NONE), *self.encoded,
                                                                          strict=True))
            order = np.argsort(slots, kind="stable")
            starts = np.cumsum(lengths) - lengths
            self.encoded = [(slots[order], lengths[order], ids[_segments(starts[order], lengths[order])])]
        return self.encoded[0]

    def _collect_one(self) -> None:
        future, _ = self.pending.popleft()
        self.encoded.append(future.result())


_NONE = np.zeros(0, dtype=np.int64)


def _encoded_words(model: Tokenizer, slots: np.ndarray,
                   words: list[tuple[str, ...]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(`slots`, number of ids of each word, their ids) of `words`, each given as its pieces, encoded by
    `model` (a tokenizer of the model alone) piece by piece."""
    pieces = list(chain.from_iterable(words))
    ids = [e.ids for e in model.encode_batch_fast(pieces, add_special_tokens=False)]
    per_piece = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    word_of = np.repeat(np.arange(len(words)), np.fromiter(map(len, words), dtype=np.int64, count=len(words)))
    lengths = np.bincount(word_of, weights=per_piece, minlength=len(words)).astype(np.int64)
    return slots, lengths, np.fromiter(chain.from_iterable(ids), dtype=np.int64, count=int(per_piece.sum()))


def _whole_word(pre_tokenizer: Any) -> Callable[[str], tuple[str, ...] | None]:
    """The pieces `pre_tokenizer` makes of a normalised word when they are known without asking it (a word it
    leaves whole), else None; asking costs microseconds, which a corpus's many distinct words add up.

    Metaspace (alone or after WhitespaceSplit) leaves a word without whitespace or its replacement mark
    whole, marked unless it never prepends; BertPreTokenizer leaves a word of letters and digits whole.
    Python's whitespace includes all of Rust's, so a word taken for whole is one.
    """
    state = json.loads(pre_tokenizer.__getstate__()) if pre_tokenizer is not None else {}
    steps = state.get("pretokenizers", []) if state.get("type") == "Sequence" else [state]
    kinds = [step.get("type") for step in steps]
    if kinds in (["Metaspace"], ["WhitespaceSplit", "Metaspace"]):
        mark = steps[-1]["replacement"]
        scheme = steps[-1].get("prepend_scheme", "always" if steps[-1].get("add_prefix_space", True) else "never")
        lead = "" if scheme == "never" else mark
        breaks = re.compile(rf"[\s{re.escape(mark)}]")
        return lambda word: None if not word or breaks.search(word) else (lead + word,)
    if kinds == ["BertPreTokenizer"]:
        return lambda word: (word,) if word.isalnum() else None
    return lambda word: None


def _grown(array: np.ndarray, size: int) -> np.ndarray:
    """`array` zero-padded to at least `size` (capacity doubling; callers use the first `size`)."""
    if array.size >= size:
        return array
    grown = np.zeros(max(size, 2 * array.size), dtype=array.dtype)
    grown[: array.size] = array
    return grown


def _segments(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Indices of the segments [start, start + length) one after another."""
    offsets = np.cumsum(lengths) - lengths
    return np.repeat(starts - offsets, lengths) + np.arange(int(lengths.sum()))


def _add_ids(counts: np.ndarray, encodings: Iterable[Any]) -> None:
    counts += np.bincount(_flat_ids(encodings), minlength=counts.size)


def _flat_ids(encodings: Iterable[Any]) -> np.ndarray:
    return np.fromiter(chain.from_iterable(e.ids for e in encodings), dtype=np.int64)


# Python's str.split() separators (every c with c.isspace()); tests/test_trim_vocab_count.py checks the list.
_SPLIT_SPACES = ("\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
                 "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000")
# Components whose output for a line is, separator by separator, the output for its words (checked for
# each separator by `_Wordwise.of`): character-by-character normalisers and splitting pre-tokenizers.
_LOCAL_NORMALIZERS = frozenset({"BertNormalizer", "Precompiled", "NFC", "NFD", "NFKC", "NFKD", "Lowercase",
                                "StripAccents", "Strip"})
_LOCAL_PRE_TOKENIZERS = frozenset({"BertPreTokenizer", "Whitespace", "WhitespaceSplit", "Metaspace",
                                   "Punctuation", "Digits"})
# Characters that join the character before them into one grapheme cluster (Unicode's Grapheme_Cluster_Break
# Extend, ZWJ and SpacingMark; `Precompiled` normalises a cluster at a time), or the one after them
# (Prepend): a word that starts or ends with one may be normalised differently next to a space.
# Format and unassigned (in this Python's Unicode version) characters count as joining either way.
_JOINS_PREVIOUS_CATEGORIES = frozenset({"Mn", "Mc", "Me", "Cf", "Cn"})
_JOINS_NEXT_CATEGORIES = frozenset({"Cf", "Cn"})
_JOINS_PREVIOUS = frozenset("\u0e33\u0eb3\uff9e\uff9f\U0001f3fb\U0001f3fc\U0001f3fd\U0001f3fe\U0001f3ff")
_JOINS_NEXT = frozenset("\u0d4e\U000111c2\U000111c3\U0001193f\U00011941\U00011a3a\U00011a84\U00011a85"
                        "\U00011a86\U00011a87\U00011a88\U00011a89\U00011d46\U00011f02")


class _Wordwise:
    """Token counts of a chunk of lines from its distinct words: each encoded once, its ids weighted by
    how often it occurs, which gives exactly the counts of encoding the lines one by one when:

    - the normaliser and pre-tokenizer are made of `_LOCAL_NORMALIZERS` / `_LOCAL_PRE_TOKENIZERS` (also
      XLM-R's `Replace(" {2,}", " ")`; not Metaspace's `prepend_scheme = "first"`), no added token is
      normalised, and no line contains an added token (those are split off before normalisation);
    - every separator in the line (what `str.split` splits at) is pre-tokenised as a word boundary: checked
      once for each separator on `x<sep>y`; separators that are boundaries inside a line but not at its
      ends or in runs (XLM-R's Metaspace without WhitespaceSplit: `x ` gives `▁x`, `▁`) are allowed
      between words only, one at a time;
    - no word starts with a character that joins the one before it, or ends with one that joins the next
      (grapheme clusters across a space); where separators count at line ends and in runs, no word is
      normalised to something that starts or ends with whitespace (`x<ZWSP>` -> `x `).

    Lines that fail a check are encoded whole (`odd`); their words are not counted as tokens word by word.
    """

    def __init__(self, added: list[str], inner_only: bool, unsafe: str,
                 edged: Callable[[str], bool] | None = None) -> None:
        self.added = added
        alternatives = [f"[{re.escape(unsafe)}]"] if unsafe else []
        if inner_only:
            alternatives.append(r"^\s|\s$|\s\s")
        self.suspect = re.compile("|".join(alternatives)) if alternatives else None
        self.edged = edged  # inner_only: whether a word is normalised with whitespace at an end

    @classmethod
    def of(cls, tokenizer: Tokenizer) -> _Wordwise | None:
        """The word-by-word counter for `tokenizer`, or None when it cannot vouch for it."""
        normalizer = _component(tokenizer.normalizer)
        pre_tokenizer = _component(tokenizer.pre_tokenizer)
        added = list(tokenizer.get_added_tokens_decoder().values())
        if (not _local(normalizer, "normalizers", _local_normalizer)
                or not _local(pre_tokenizer, "pretokenizers", _local_pre_tokenizer)
                or any(token.normalized or not token.content for token in added)):
            return None

        def pieces(text: str) -> list[str]:
            if tokenizer.normalizer is not None:
                text = tokenizer.normalizer.normalize_str(text)
            if tokenizer.pre_tokenizer is None:
                return [text] if text else []
            return [piece for piece, _ in tokenizer.pre_tokenizer.pre_tokenize_str(text)]

        x, y = pieces("x"), pieces("y")
        unsafe, inner_only = [], False
        for space in _SPLIT_SPACES:
            if pieces(f"x{space}y") != x + y:
                unsafe.append(space)
            elif (pieces(space) or pieces(f"{space}x") != x or pieces(f"x{space}") != x
                  or pieces(f"x{space}{space}y") != x + y):
                inner_only = True
        if len(unsafe) == len(_SPLIT_SPACES):
            return None
        edged = None
        if inner_only:
            def edged(word: str) -> bool:
                text = tokenizer.normalizer.normalize_str(word) if tokenizer.normalizer is not None else word
                return text[:1].isspace() or text[-1:].isspace()

            plain = "".join(map(chr, range(0x21, 0x7F)))  # printable ASCII, checked once
            if any(edged(c) for c in plain):
                return None
        return cls([token.content for token in added], inner_only, "".join(unsafe), edged)

    def odd(self, chunk: list[str], joined: str, found: Counter[str]) -> list[int]:
        """Positions of the lines of `chunk` (`joined` with spaces; `found` its words) to encode whole."""
        odd: set[int] = set()
        for content in self.added:
            if content in joined:
                odd.update(i for i, line in enumerate(chunk) if content in line)
        if self.suspect is not None and self.suspect.search(joined):
            odd.update(i for i, line in enumerate(chunk) if self.suspect.search(line))
        if not (joined.isascii() and joined.isprintable()):
            edged = self.edged
            joining = {word for word in found if _joins(word)
                       or (edged is not None and not (word.isascii() and word.isprintable()) and edged(word))}
            if joining:
                odd.update(i for i, line in enumerate(chunk) if not joining.isdisjoint(line.split()))
        return sorted(odd)


def _component(component: Any) -> dict | None:
    return None if component is None else json.loads(component.__getstate__())


def _local(node: dict | None, children: str, allowed: Callable[[dict], bool]) -> bool:
    if node is None:
        return True
    if node.get("type") == "Sequence":
        return all(_local(child, children, allowed) for child in node[children])
    return allowed(node)


def _local_normalizer(node: dict) -> bool:
    # XLM-R's Replace(" {2,}", " ") makes runs of spaces one: it touches separators only.
    xlmr_spaces = node.get("pattern") == {"Regex": " {2,}"} and node.get("content") == " "
    return node.get("type") in _LOCAL_NORMALIZERS or (node.get("type") == "Replace" and xlmr_spaces)


def _local_pre_tokenizer(node: dict) -> bool:
    return node.get("type") in _LOCAL_PRE_TOKENIZERS and node.get("prepend_scheme") != "first"


def _joins(word: str) -> bool:
    """Whether `word` may form a grapheme cluster with a separator before or after it."""
    first, last = word[0], word[-1]
    return (first in _JOINS_PREVIOUS or unicodedata.category(first) in _JOINS_PREVIOUS_CATEGORIES
            or last in _JOINS_NEXT or unicodedata.category(last) in _JOINS_NEXT_CATEGORIES)


def _special_ids(
    tokenizer: Any, spec: dict, model: nn.Module, adapter: FamilyAdapter, n_tokens: int
) -> np.ndarray:
    """Ids that must survive: added/special tokens and every id the pipeline or config refers to.

    RoBERTa-family position ids start after the padding id, so every id up to it is kept too and
    the padding id never moves.
    """
    ids = {token["id"] for token in spec.get("added_tokens", [])}
    ids.update(tokenizer.all_special_ids)
    ids.update(_processor_ids(spec.get("post_processor")))
    if spec["model"].get("unk_id") is not None:
        ids.add(spec["model"]["unk_id"])
    if spec.get("padding"):
        ids.add(spec["padding"]["pad_id"])
    for name, value in _config_token_ids(model.config).items():
        for token_id in value if isinstance(value, list) else [value]:
            if not 0 <= token_id < n_tokens:
                raise ModelError(
                    f"config.{name} = {token_id} is not a token of the tokenizer ({n_tokens} entries)"
                )
            ids.add(token_id)
    padding_idx = getattr(adapter.embeddings(model), "padding_idx", None)
    if isinstance(padding_idx, int):
        ids.update(range(padding_idx + 1))
    return np.array(sorted(ids), dtype=np.int64)


def _config_token_ids(config: Any) -> dict[str, int | list[int]]:
    return {
        name: value
        for name, value in config.to_dict().items()
        if name.endswith("_token_id")
        and (isinstance(value, int) or (isinstance(value, list) and all(isinstance(v, int) for v in value)))
    }


def _processor_ids(node: dict | None) -> list[int]:
    if not node:
        return []
    kind = node.get("type")
    if kind == "Sequence":
        return [i for child in node["processors"] for i in _processor_ids(child)]
    if kind == "TemplateProcessing":
        return [i for token in node["special_tokens"].values() for i in token["ids"]]
    if kind in ("RobertaProcessing", "BertProcessing"):
        return [node["sep"][1], node["cls"][1]]
    return []


def _remap_processor(node: dict | None, new_id_of: np.ndarray) -> None:
    if not node:
        return
    kind = node.get("type")
    if kind == "Sequence":
        for child in node["processors"]:
            _remap_processor(child, new_id_of)
    elif kind == "TemplateProcessing":
        for token in node["special_tokens"].values():
            token["ids"] = [int(new_id_of[i]) for i in token["ids"]]
    elif kind in ("RobertaProcessing", "BertProcessing"):
        for key in ("sep", "cls"):
            node[key] = [node[key][0], int(new_id_of[node[key][1]])]


def _fill_ids(spec: dict, tally: _Tally, n_tokens: int, keep: np.ndarray, budget: int,
              inside: np.ndarray | None = None) -> np.ndarray:
    """Up to `budget` ids not in `keep`: first the pieces found most often inside the texts' words
    (`inside`, when already counted), then pieces written only in the texts' characters, most probable
    first (Unigram scores; WordPiece vocabularies are in frequency order)."""
    if inside is None:
        inside = _substring_counts(spec, tally.words, n_tokens)
    inside[keep] = 0
    candidates = np.flatnonzero(inside)
    first = candidates[np.argsort(-inside[candidates], kind="stable")[:budget]]
    if first.size == budget:
        return first
    taken = keep.copy()
    taken[first] = True
    return np.concatenate([first, _spelled_ids(spec, tally.alphabet, taken, n_tokens, budget - first.size)])


def _spelled_ids(spec: dict, alphabet: set[str], taken: np.ndarray, n_tokens: int, budget: int) -> np.ndarray:
    """Up to `budget` ids not `taken` of pieces of two or more characters, all in `alphabet` (or `▁`, `#`),
    most probable first (Unigram scores; WordPiece vocabularies are in frequency order, so by id)."""
    model = spec["model"]
    if model["type"] == "WordPiece":
        pieces = list(model["vocab"])
        ids = np.fromiter(model["vocab"].values(), dtype=np.int64, count=len(pieces))
        scores = np.zeros(len(pieces))
        order = np.argsort(ids, kind="stable")
    else:
        pieces = [piece for piece, _ in model["vocab"]]
        ids = np.arange(len(pieces), dtype=np.int64)
        scores = np.fromiter((score for _, score in model["vocab"]), dtype=np.float64, count=len(pieces))
        order = ids
    table = _Pieces(pieces)
    allowed = np.isin(table.chars, _code_points("".join(sorted(alphabet | {"\u2581", "#"}))))
    spelled = (table.lengths > 1) & (np.bincount(table.owner, weights=~allowed, minlength=len(pieces)) == 0)
    spelled &= ids < n_tokens
    spelled[spelled] = ~taken[ids[spelled]]
    chosen = order[spelled[order]]
    chosen = chosen[np.argsort(-scores[chosen], kind="stable")]  # stable: WordPiece keeps its id order
    return ids[chosen[:budget]]


def _code_points(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


class _Pieces:
    """Strings as one array of code points: `chars`, each string's `starts` and `lengths`, and the
    string each code point belongs to (`owner`)."""

    def __init__(self, strings: Sequence[str]) -> None:
        self.chars = _code_points("".join(strings))
        self.lengths = np.fromiter(map(len, strings), dtype=np.int64, count=len(strings))
        self.starts = np.cumsum(self.lengths) - self.lengths
        self.owner = np.repeat(np.arange(len(strings)), self.lengths)


_HASH_BASES = (0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0xD6E8FEB86659FD93)
_WORDS_AT_ONCE = 100_000  # words whose substrings `_substring_counts` looks up together (bounds its memory)
_THREADS = 2  # parts of the words `_substring_counts` counts at once


def _substring_counts(spec: dict, words: Counter[str], n_tokens: int, longest: int = 16,
                      wanted: Callable[[], bool] | None = None) -> np.ndarray | None:
    """How often each vocabulary piece occurs inside the texts' `words` (pre-tokenised as the tokenizer
    does, `_tally`), counting every position a piece could stand at: word-initial pieces at the start only
    (`▁ab` for Unigram, `ab` for WordPiece), continuation pieces anywhere after it.

    Every substring of up to `longest` characters is looked up at once per length, in numpy: substrings and
    pieces are hashed (polynomial, mod 2^64), matched by hash and then compared character by character, so
    the counts are exact; a base under which two pieces of one length share a hash is not used. Words are
    taken in parts of at most `_WORDS_AT_ONCE` (bounded memory), `_THREADS` parts at a time; when `wanted()`
    turns false before a part begins, the count is abandoned (None). `wanted` is only called here, in the
    caller's thread.
    """
    vocab = _piece_ids(spec)
    if not vocab or not words:
        return np.zeros(n_tokens, dtype=np.int64)
    pieces = _Pieces(list(vocab))
    ids = np.fromiter(vocab.values(), dtype=np.int64, count=len(vocab))
    usable = ids < n_tokens
    tables: list[tuple[bool | None, np.ndarray, int]] = []  # (at a word's start, pieces, characters skipped)
    prefix = ""
    if spec["model"]["type"] == "WordPiece":
        prefix = spec["model"].get("continuing_subword_prefix") or "##"
    if prefix:
        tables.append((True, np.flatnonzero(usable), 0))
        lead = _code_points(prefix)
        starts_with = usable & (pieces.lengths >= lead.size)
        for offset, char in enumerate(lead.tolist()):
            starts_with[starts_with] = pieces.chars[pieces.starts[starts_with] + offset] == char
        tables.append((False, np.flatnonzero(starts_with), lead.size))
    else:
        tables.append((None, np.flatnonzero(usable), 0))  # the same pieces everywhere
    for base in _HASH_BASES:
        hashed = [(where, _HashTable(pieces, which, skip, ids, longest, base)) for where, which, skip in tables]
        if all(table.unique for _, table in hashed):
            break
    else:  # pragma: no cover - four 64-bit bases, each with a collision among one length's pieces
        raise ModelError("could not hash the vocabulary's pieces without collisions")
    found = list(words.items())
    size = min(_WORDS_AT_ONCE, -(-len(found) // _THREADS))
    counts = np.zeros(n_tokens, dtype=np.int64)
    with ThreadPoolExecutor(_THREADS, thread_name_prefix="trim-substrings") as pool:
        running: deque[Future] = deque()  # numpy lets go of the GIL in its loops: parts counted side by side
        for start in range(0, len(found), size):
            if wanted is not None and not wanted():
                return None
            if len(running) == _THREADS:
                counts += running.popleft().result()
            running.append(pool.submit(_count_part, found[start : start + size], hashed, n_tokens, longest))
        for job in running:
            counts += job.result()
    return counts


def _count_part(part: list[tuple[str, int]], hashed: list[tuple[bool | None, _HashTable]], n_tokens: int,
                longest: int) -> np.ndarray:
    """`_substring_counts` of the words `part` ((word, count) pairs)."""
    counts = np.zeros(n_tokens, dtype=np.int64)
    text = _Pieces([word for word, _ in part])
    weights = np.fromiter((n for _, n in part), dtype=np.int64, count=len(part))[text.owner]
    chars = text.chars.astype(np.uint64)
    everywhere = np.arange(chars.size)
    room = text.starts[text.owner] + text.lengths[text.owner] - everywhere
    at_start = room == text.lengths[text.owner]
    for where, table in hashed:
        positions = everywhere if where is None else np.flatnonzero(at_start == where)
        hashes = np.zeros(positions.size, dtype=np.uint64)
        for length in range(1, longest + 1):
            fits = room[positions] >= length
            positions, hashes = positions[fits], hashes[fits]
            if not positions.size:
                break
            hashes = hashes * np.uint64(table.base) + chars[positions + length - 1]
            ids_found, hits = table.find(length, hashes, chars, positions)
            np.add.at(counts, ids_found, weights[positions[hits]])
    return counts


def _piece_ids(spec: dict) -> dict[str, int]:
    """Each piece of the vocabulary and its id (of a piece listed twice, the last)."""
    model = spec["model"]
    if model["type"] == "WordPiece":
        return model["vocab"]
    pieces = [piece for piece, _ in model["vocab"]]
    return dict(zip(pieces, range(len(pieces)), strict=True))


def _mixed(hashes: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijection of uint64 whose top bits depend on all bits (bucket numbers)."""
    hashes = hashes ^ (hashes >> np.uint64(30))
    hashes = hashes * np.uint64(0xBF58476D1CE4E5B9)
    hashes = hashes ^ (hashes >> np.uint64(27))
    hashes = hashes * np.uint64(0x94D049BB133111EB)
    return hashes ^ (hashes >> np.uint64(31))


class _HashTable:
    """Pieces of each length by polynomial hash (`base`), for `_substring_counts`: the pieces `which` of
    `pieces`, less their first `skip` characters (WordPiece's continuation prefix), of 1 to `longest`
    characters."""

    def __init__(self, pieces: _Pieces, which: np.ndarray, skip: int, ids: np.ndarray, longest: int,
                 base: int) -> None:
        self.base = base
        self.chars = pieces.chars.astype(np.uint64)
        lengths = pieces.lengths[which] - skip
        self.by_length: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]] = {}
        self.unique = True
        for length in range(1, longest + 1):
            chosen = which[lengths == length]
            if not chosen.size:
                continue
            starts = pieces.starts[chosen] + skip
            hashes = np.zeros(chosen.size, dtype=np.uint64)
            for offset in range(length):
                hashes = hashes * np.uint64(base) + self.chars[starts + offset]
            hashes = _mixed(hashes)
            order = np.argsort(hashes, kind="stable")
            hashes = hashes[order]
            self.unique &= bool(np.all(hashes[1:] != hashes[:-1]))
            shift = 64 - max(1, int(chosen.size).bit_length() + 1)  # about two buckets a piece
            buckets = np.searchsorted(hashes >> np.uint64(shift), np.arange((1 << (64 - shift)) + 1, dtype=np.uint64))
            self.by_length[length] = (hashes, starts[order], ids[chosen[order]], buckets, shift)

    def find(self, length: int, hashes: np.ndarray, chars: np.ndarray,
             positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ids, hits): the piece ids of the substrings `chars[positions[k]:positions[k] + length]` that are
        pieces, and which k those are."""
        hits = np.zeros(positions.size, dtype=bool)
        if length not in self.by_length:
            return np.zeros(0, dtype=np.int64), hits
        table, starts, ids, buckets, shift = self.by_length[length]
        hashes = _mixed(hashes)
        bucket = (hashes >> np.uint64(shift)).astype(np.int64)
        slot, end = buckets[bucket], buckets[bucket + 1]
        open_ = np.flatnonzero(slot < end)  # the bucket holds pieces: walk it (sorted; usually one)
        while open_.size:
            equal = table[slot[open_]] == hashes[open_]
            hits[open_[equal]] = True
            open_ = open_[~equal]
            slot[open_] += 1
            open_ = open_[slot[open_] < end[open_]]
        candidates = np.flatnonzero(hits)
        same = np.ones(candidates.size, dtype=bool)
        for offset in range(length):  # a hash match is only a candidate: compare the characters
            same &= chars[positions[candidates] + offset] == self.chars[starts[slot[candidates]] + offset]
        hits[candidates[~same]] = False
        return ids[slot[hits]], hits


def _character_ids(tokenizer: Tokenizer, spec: dict, alphabet: set[str]) -> np.ndarray:
    """Ids of the single-character pieces for every character of the normalised texts.

    WordPiece: `c` and `##c`; Unigram: `c`, `▁c` and `▁` (the metaspace mark). With these every
    seen character stays segmentable, so no text gains unknowns that had none. Only a piece the
    old vocabulary lacks (say `##c` where only `c` exists) can leave a gap; `unknown_rate_after`
    shows it.
    """
    chars = sorted(alphabet)
    if spec["model"]["type"] == "WordPiece":
        prefix = spec["model"].get("continuing_subword_prefix") or "##"
        pieces = chars + [prefix + c for c in chars]
    else:
        metaspace = _find_typed(spec.get("pre_tokenizer"), "Metaspace") or {}
        mark = metaspace.get("replacement", "\u2581")
        pieces = [mark, *chars, *(mark + c for c in chars)]
    found = {tokenizer.token_to_id(piece) for piece in pieces} - {None}
    return np.array(sorted(found), dtype=np.int64)


def _find_typed(node: Any, kind: str) -> dict | None:
    if isinstance(node, dict):
        if node.get("type") == kind:
            return node
        node = list(node.values())
    if isinstance(node, list):
        for child in node:
            found = _find_typed(child, kind)
            if found is not None:
                return found
    return None


def _rebuild_tokenizer(
    tokenizer: Any, spec: dict, kept_ids: np.ndarray, new_id_of: np.ndarray
) -> tuple[Any, str]:
    """The same tokenizer class over the kept entries, and its serialisation."""
    model_spec = spec["model"]
    if model_spec["type"] == "WordPiece":
        vocab = model_spec["vocab"]
        pieces = np.array(list(vocab), dtype=object)
        new_ids = new_id_of[np.fromiter(vocab.values(), dtype=np.int64, count=len(vocab))]
        kept = np.flatnonzero(new_ids != _NOT_KEPT)
        kept = kept[np.argsort(new_ids[kept])]
        model_spec["vocab"] = dict(zip(pieces[kept].tolist(), new_ids[kept].tolist(), strict=True))
    else:
        vocab = model_spec["vocab"]
        model_spec["vocab"] = [vocab[i] for i in kept_ids[kept_ids < len(vocab)].tolist()]
        if model_spec.get("unk_id") is not None:
            model_spec["unk_id"] = int(new_id_of[model_spec["unk_id"]])
    for token in spec.get("added_tokens", []):
        token["id"] = int(new_id_of[token["id"]])
    _remap_processor(spec.get("post_processor"), new_id_of)
    if spec.get("padding"):
        spec["padding"]["pad_id"] = int(new_id_of[spec["padding"]["pad_id"]])

    raw = json.dumps(spec, ensure_ascii=False)
    kwargs = {k: v for k, v in tokenizer.init_kwargs.items() if k not in _STALE_KWARGS}
    kwargs["model_max_length"] = tokenizer.model_max_length
    rebuilt = tokenizer.__class__(tokenizer_object=Tokenizer.from_str(raw), **kwargs)
    if len(rebuilt) != kept_ids.size:
        raise ModelError(
            f"the rebuilt tokenizer has {len(rebuilt)} entries, expected {kept_ids.size}: "
            f"{type(tokenizer).__name__} added tokens of its own"
        )
    return rebuilt, raw


def _slice_model(
    model: nn.Module, adapter: FamilyAdapter, kept_ids: np.ndarray, new_id_of: np.ndarray
) -> None:
    """Cut embedding and decoder rows in place; parameters shared before stay shared."""
    word_embeddings = adapter.embeddings(model).word_embeddings
    index = torch.as_tensor(kept_ids, device=word_embeddings.weight.device)
    cut: dict[int, tuple[nn.Parameter, nn.Parameter]] = {}

    def rows(param: nn.Parameter) -> nn.Parameter:
        if id(param) not in cut:
            sliced = nn.Parameter(param.detach()[index], requires_grad=param.requires_grad)  # indexing copies
            cut[id(param)] = (param, sliced)
        return cut[id(param)][1]

    config = model.config
    new_ids = {name: _remap(value, new_id_of) for name, value in _config_token_ids(config).items()}
    word_embeddings.weight = rows(word_embeddings.weight)
    word_embeddings.num_embeddings = int(kept_ids.size)
    if word_embeddings.padding_idx is not None:
        word_embeddings.padding_idx = int(new_id_of[word_embeddings.padding_idx])
    head = adapter.mlm_head(model)
    if head is not None:
        owner = next(m for m in model.modules() if getattr(m, "decoder", None) is head.decoder)
        head_bias = getattr(owner, "bias", None)
        decoder = head.decoder
        decoder.weight = rows(decoder.weight)
        if decoder.bias is not None:
            decoder.bias = rows(decoder.bias)
        decoder.out_features = int(kept_ids.size)
        if isinstance(head_bias, nn.Parameter):
            owner.bias = rows(head_bias)
    config.vocab_size = int(kept_ids.size)
    for name, value in new_ids.items():
        setattr(config, name, value)


def _remap(value: int | list[int], new_id_of: np.ndarray) -> int | list[int]:
    if isinstance(value, list):
        return [int(new_id_of[v]) for v in value]
    return int(new_id_of[value])


def _segmentation_change(
    before: Tokenizer, unk_before: int | None, rebuilt: Callable[[], Tokenizer], unk_after: int | None,
    texts: Sequence[str],
) -> tuple[float, float, float]:
    """(resegmentation rate, unknown rate before, unknown rate after) over `texts`, streamed in chunks;
    `rebuilt()` gives the trimmed tokenizer (made only when there are texts)."""
    if not len(texts):
        return 0.0, 0.0, 0.0
    after = rebuilt()
    changed = 0
    unknown = {"before": [0, 0], "after": [0, 0]}  # unknown tokens, tokens
    for chunk in iter_chunks(texts, _CHUNK):
        old = before.encode_batch(chunk, add_special_tokens=False)
        new = after.encode_batch(chunk, add_special_tokens=False)
        changed += sum(a.tokens != b.tokens for a, b in zip(old, new, strict=True))
        for name, encodings, unk_id in (("before", old, unk_before), ("after", new, unk_after)):
            ids = _flat_ids(encodings)
            unknown[name][0] += 0 if unk_id is None else int(np.count_nonzero(ids == unk_id))
            unknown[name][1] += ids.size
    return changed / len(texts), *(found / max(tokens, 1) for found, tokens in unknown.values())
