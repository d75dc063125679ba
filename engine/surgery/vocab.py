"""Vocabulary trimming: keep the tokens a language uses, cut the embedding and MLM-decoder rows, and
rebuild a fast tokenizer that matches the trimmed model id for id.

The new vocabulary keeps the old id order, so every kept token's new id is its rank among the kept
old ids. The tokenizer is rebuilt from its own `tokenizer.json` (WordPiece or Unigram) and wrapped
in the same transformers class without any slow vocabulary file: `save_pretrained` then writes only
`tokenizer.json` + `tokenizer_config.json`, and `AutoTokenizer` reloads from that `tokenizer.json`
(no stale `vocab.txt` / `sentencepiece.bpe.model` can be written or picked up).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import chain
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
    raw = backend.to_str()
    spec = json.loads(raw)
    kind = spec["model"].get("type")
    if kind not in ("WordPiece", "Unigram"):
        raise ModelError(f"vocabulary trimming supports WordPiece and Unigram tokenizers, not {kind!r}")

    n_tokens = len(tokenizer)
    word_embeddings = adapter.embeddings(model).word_embeddings
    n_rows = word_embeddings.num_embeddings
    if n_rows < n_tokens:
        raise ModelError(f"the tokenizer has {n_tokens} entries but the model only {n_rows} embedding rows")

    counter = _untruncated(raw)
    tally = _tally(counter, texts, n_tokens, words=fill, progress=progress)
    counts = tally.counts
    special = _special_ids(tokenizer, spec, model, adapter, n_tokens)
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
        filled = _fill_ids(counter, spec, tally, n_tokens, keep, size - used.size)
        keep[filled] = True

    kept_ids = np.flatnonzero(keep)
    new_id_of = np.full(n_tokens, _NOT_KEPT, dtype=np.int64)
    new_id_of[kept_ids] = np.arange(kept_ids.size)

    new_tokenizer, new_raw = _rebuild_tokenizer(tokenizer, spec, kept_ids, new_id_of)
    _slice_model(model, adapter, kept_ids, new_id_of)
    reseg, unk_before, unk_after = _segmentation_change(
        counter, tokenizer.unk_token_id, _untruncated(new_raw), new_tokenizer.unk_token_id, validation_texts
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


def _untruncated(raw: str) -> Tokenizer:
    """A copy of a serialised tokenizer that neither truncates nor pads."""
    tokenizer = Tokenizer.from_str(raw)
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


@dataclass
class _Tally:
    """What one pass over the texts gathers: each token's count, the characters of the normalised text and
    (for filling the budget) each pre-tokenised word's count."""

    counts: np.ndarray
    alphabet: set[str] = field(default_factory=set)
    words: Counter[str] = field(default_factory=Counter)


def _tally(tokenizer: Tokenizer, texts: Sequence[str], n_tokens: int, words: bool = True,
           progress: Callable[[int, int], None] | None = None) -> _Tally:
    """Count tokens, characters and words of `texts` in one streaming pass of `_CHUNK` lines at a time.

    Tokens are counted by encoding each chunk (one batched call). Characters and words come from the
    chunk's whitespace-separated words, counted in C (`Counter.update`); each distinct word is then
    normalised and pre-tokenised once, not once per line (the same pieces: the BERT and Metaspace
    pre-tokenizers split at every space). Past `WORDS_KEPT` distinct words the rarest half is dropped
    (their characters kept), so a huge corpus's long tail of rare words cannot fill memory; it only
    matters for filling the budget, which a corpus that large does not need.
    """
    tally = _Tally(np.zeros(n_tokens, dtype=np.int64))
    normalizer, pre_tokenizer = tokenizer.normalizer, tokenizer.pre_tokenizer

    def normalized(word: str) -> str:
        return normalizer.normalize_str(word) if normalizer is not None else word

    raw: Counter[str] = Counter()
    done, total = 0, len(texts)
    for chunk in iter_chunks(texts, _CHUNK):
        ids = _flat_ids(tokenizer.encode_batch_fast(chunk, add_special_tokens=False))
        tally.counts += np.bincount(ids, minlength=n_tokens)
        raw.update(" ".join(chunk).split())
        if len(raw) > WORDS_KEPT:
            ranked = raw.most_common()
            for word, _ in ranked[WORDS_KEPT // 2 :]:
                tally.alphabet.update(normalized(word))
            raw = Counter(dict(ranked[: WORDS_KEPT // 2]))
        done += len(chunk)
        if progress is not None:
            progress(done, total)
    for word, n in raw.items():
        text = normalized(word)
        tally.alphabet.update(text)
        if words:
            pieces = pre_tokenizer.pre_tokenize_str(text) if pre_tokenizer is not None else [(text, None)]
            for piece, _ in pieces:
                tally.words[piece] += n
    tally.alphabet = {c for c in tally.alphabet if not c.isspace()}
    return tally


def _flat_ids(encodings: Iterable[Any]) -> np.ndarray:
    return np.fromiter(chain.from_iterable(e.ids for e in encodings), dtype=np.int64)


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


def _fill_ids(tokenizer: Tokenizer, spec: dict, tally: _Tally, n_tokens: int, keep: np.ndarray,
              budget: int) -> np.ndarray:
    """Up to `budget` ids not in `keep`: first the pieces found most often inside the texts' words,
    then pieces written only in the texts' characters, most probable first (Unigram scores;
    WordPiece vocabularies are in frequency order)."""
    inside = _substring_counts(spec, tally.words, n_tokens)
    inside[keep] = 0
    candidates = np.flatnonzero(inside)
    first = candidates[np.argsort(-inside[candidates], kind="stable")[:budget]]
    if first.size == budget:
        return first
    taken = keep.copy()
    taken[first] = True
    alphabet = tally.alphabet | {"\u2581", "#"}
    model = spec["model"]
    if model["type"] == "WordPiece":
        ranked = sorted(model["vocab"].items(), key=lambda item: item[1])
        pieces = [(piece, i, 0.0) for piece, i in ranked]
    else:
        pieces = [(piece, i, score) for i, (piece, score) in enumerate(model["vocab"])]
    spelled = [(score, i) for piece, i, score in pieces
               if i < n_tokens and not taken[i] and len(piece) > 1 and set(piece) <= alphabet]
    spelled.sort(key=lambda item: -item[0])  # stable: WordPiece keeps its frequency order
    second = np.array([i for _, i in spelled[: budget - first.size]], dtype=np.int64)
    return np.concatenate([first, second])


def _substring_counts(spec: dict, words: Counter[str], n_tokens: int, longest: int = 16) -> np.ndarray:
    """How often each vocabulary piece occurs inside the texts' `words` (pre-tokenised as the tokenizer
    does, `_tally`), counting every position a piece could stand at: word-initial pieces at the start only
    (`▁ab` for Unigram, `ab` for WordPiece), continuation pieces anywhere after it."""
    model = spec["model"]
    if model["type"] == "WordPiece":
        prefix = model.get("continuing_subword_prefix") or "##"
        vocab = model["vocab"]
    else:
        prefix = ""
        vocab = {piece: i for i, (piece, _) in enumerate(model["vocab"])}
    counts = np.zeros(n_tokens, dtype=np.int64)
    for word, n in words.items():
        for start in range(len(word)):
            lead = prefix if start else ""
            for end in range(start + 1, min(len(word), start + longest) + 1):
                token_id = vocab.get(lead + word[start:end])
                if token_id is not None and token_id < n_tokens:
                    counts[token_id] += n
    return counts


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
            sliced = nn.Parameter(param.detach()[index].clone(), requires_grad=param.requires_grad)
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
    before: Tokenizer, unk_before: int | None, after: Tokenizer, unk_after: int | None, texts: Sequence[str]
) -> tuple[float, float, float]:
    """(resegmentation rate, unknown rate before, unknown rate after) over `texts`, streamed in chunks."""
    if not len(texts):
        return 0.0, 0.0, 0.0
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
