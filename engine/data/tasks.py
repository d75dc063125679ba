"""Labelled data for the downstream tasks: POS (CoNLL-U), NER (CoNLL/IOB), sentiment and topic
(CSV/TSV/JSONL), from a file, a folder of split files or a Hugging Face dataset id.

Splits. A folder's files are assigned by name: `train`, `dev` / `valid` (also `validation`) and `test`
anywhere in the file name, among files with a suffix the task reads. A split that is missing is held
out from train, deterministically by `seed`: a single file (or a folder with only a train file) is
split 80/10/10; a folder with train and test gets its dev from 10% of train (and likewise for test).

Labels. `labels.txt` in the folder (one label per line) fixes the label order; otherwise the order of
first appearance in train (ClassLabel order for hub datasets). For NER every entity type seen in train
contributes both its B- and I- tag. A dev/test label that train never shows is refused.

Tables with a header find their columns by name (TEXT_COLUMNS, LABEL_COLUMNS) or as `Columns` says
(`--text-column` / `--label-column`); with only the label column known, the text column is inferred
when one column's values are clearly the longest. Tables without a header have two columns,
`label,text` or `text,label`: the label column is the one with fewer distinct values over all such
files of the data set (ties: the first column, `label,text`).
Texts are kept exactly as read (inner and trailing newlines included); labels are stripped strings.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import random
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.data.corpus import HUB_PREFIX, decode_wide, jsonl_records
from engine.data.parallel import ParallelData, load_parallel
from engine.errors import TaskDataError
from engine.hub import offline_reason
from engine.tasks import task as task_kind

SPLITS = ("train", "dev", "test")
SPLIT_KEYS = {"train": ("train",), "dev": ("dev", "valid"), "test": ("test",)}
LABELS_FILE = "labels.txt"
DOCSTART = "-DOCSTART-"
HELD_OUT = 0.1
TEXT_COLUMNS = ("text", "sentence", "content")
LABEL_COLUMNS = ("label", "category", "class", "topic", "sentiment", "polarity")
JSONL_TEXT_FIELDS = ("text", "sentence")
JSONL_LABEL_FIELDS = ("label", "category")
HUB_SPLITS = {"train": ("train",), "dev": ("validation", "dev", "valid"), "test": ("test",)}
HUB_WORD_COLUMNS = ("tokens", "words")

_WORD = re.compile(r"\w+(?:[-'’]\w+|[.,]\d+)*|[^\w\s]")
_NER_TAG = re.compile(r"O|[BI]-\S+")
_FIELD_SEP = re.compile(r"[ \t]+")


@dataclass(frozen=True)
class TokenExample:
    """One sentence of a token task (pos, ner): a tag per word."""

    words: tuple[str, ...]
    tags: tuple[str, ...]


@dataclass(frozen=True)
class TextExample:
    """One text of a classification task (sentiment, topic)."""

    text: str
    label: str


Example = TokenExample | TextExample


@dataclass(frozen=True)
class TaskData:
    """A task's label set and train/dev/test examples, with the folder/file/hub id they came from."""

    task: str
    labels: tuple[str, ...]
    train: tuple[Example, ...]
    dev: tuple[Example, ...]
    test: tuple[Example, ...]
    source: str

    @property
    def is_token_task(self) -> bool:
        return task_kind(self.task).token_level

    def fingerprint(self) -> str:
        """A hash of the task, labels and every split's examples: equal exactly when the data are."""
        digest = hashlib.sha256(json.dumps([self.task, self.labels]).encode())
        for split in SPLITS:
            for example in getattr(self, split):
                digest.update(json.dumps(dataclasses.astuple(example), ensure_ascii=False).encode())
            digest.update(b"\x00" + split.encode())
        return digest.hexdigest()


@dataclass(frozen=True)
class _Part:
    """The examples of one split and where they came from (for error messages)."""

    examples: list[Example]
    origin: str


@dataclass(frozen=True)
class _Table:
    """Rows of one classification file: (text, label, line) if oriented, else (col0, col1, line)."""

    path: Path
    rows: list[tuple[str, str, int]]
    oriented: bool


@dataclass(frozen=True)
class Columns:
    """Which table columns (CSV/TSV header names, JSONL keys, hub columns) hold the text and the label;
    empty = recognise them by name, or infer the text column (see `_pick_columns`)."""

    text: str = ""
    label: str = ""


def load_task(task: str, data: str | Path, seed: int = 0, columns: Columns = Columns()) -> TaskData | ParallelData:
    """Read `task` data from a file, a folder of split files or `hub:<dataset>[:<config>]` (retrieval: a folder
    of two line-aligned files, `engine.data.parallel`)."""
    if task_kind(task).reader == "parallel":  # also a clear error for an unknown task
        return load_parallel(task, data)
    source = str(data)
    if source.startswith(HUB_PREFIX):
        parts, order, order_origin = _load_hub(task, source[len(HUB_PREFIX) :], columns)
    else:
        parts, order, order_origin = _load_local(task, Path(source).expanduser(), columns)
    parts = _complete_splits(parts, seed)
    labels = _label_set(task, parts, order, order_origin)
    return TaskData(task, labels, *(tuple(parts[split].examples) for split in SPLITS), source)


def word_spans(text: str) -> list[tuple[int, int]]:
    """Where raw text's words are, split as labelled token data has them: punctuation outside a word is a word
    of its own; hyphens and apostrophes inside one (l-Italja, ng'ombe) and a number's separators (3.5, 1,000)
    stay. A token task model tags these words (`is_split_into_words`), so punctuation gets its own tag."""
    return [match.span() for match in _WORD.finditer(text)]


def to_iob2(tags: Sequence[str]) -> tuple[str, ...]:
    """IOB1 (or IOB2) tags as IOB2: an I- tag that starts an entity becomes B-."""
    out: list[str] = []
    previous = "O"
    for tag in tags:
        if tag.startswith("I-") and (previous == "O" or previous[2:] != tag[2:]):
            tag = "B-" + tag[2:]
        out.append(tag)
        previous = tag
    return tuple(out)


def _example_labels(examples: Iterable[Example]) -> Iterable[str]:
    for example in examples:
        if isinstance(example, TokenExample):
            yield from example.tags
        else:
            yield example.label


# --- local files ------------------------------------------------------------------------------


def _load_local(task: str, path: Path, columns: Columns) -> tuple[dict[str, _Part], tuple[str, ...] | None, str]:
    if not path.exists():
        raise TaskDataError(f"Task data {path} does not exist: give a file, a folder with train/dev/test files "
                            "or a hub:<dataset>[:<config>] id.")
    if path.is_file():
        return _read_splits(task, {"train": path}, columns), None, ""
    files = _split_files(task, path)
    labels_file = path / LABELS_FILE
    order = _read_labels_file(labels_file) if labels_file.is_file() else None
    return _read_splits(task, files, columns), order, str(labels_file)


def _split_files(task: str, folder: Path) -> dict[str, Path]:
    """The folder's file per split, recognised by `train` / `dev` / `valid(ation)` / `test` in its name."""
    suffixes = task_kind(task).formats
    candidates = sorted(
        p for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.name != LABELS_FILE and p.suffix.lower() in suffixes
    )
    found: dict[str, list[Path]] = {split: [] for split in SPLITS}
    for path in candidates:
        splits = [s for s in SPLITS if any(key in path.name.lower() for key in SPLIT_KEYS[s])]
        if len(splits) > 1:
            raise TaskDataError(f"{path}: the name matches several splits ({', '.join(splits)}); rename it.")
        if splits:
            found[splits[0]].append(path)
    for split, paths in found.items():
        if len(paths) > 1:
            raise TaskDataError(f"{folder}: several {split} files ({', '.join(p.name for p in paths)}); keep one.")
    if found["train"]:
        return {split: paths[0] for split, paths in found.items() if paths}
    if len(candidates) == 1 and not found["dev"] and not found["test"]:
        return {"train": candidates[0]}
    listed = ", ".join(p.name for p in candidates) or "none"
    raise TaskDataError(
        f"{folder}: no train file for task {task}. Name the files with train, dev (or valid/validation) and "
        f"test, with suffix {' / '.join(suffixes)}; files found: {listed}."
    )


def _read_labels_file(path: Path) -> tuple[str, ...]:
    labels = [line.strip() for line in _read_text(path).split("\n") if line.strip()]
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise TaskDataError(f"{path}: labels listed twice: {', '.join(duplicates)}.")
    return tuple(labels)


def _read_text(path: Path) -> str:
    """The file's text (UTF-8, or UTF-16/32 with a byte-order mark; LF line ends); refuses an empty file."""
    try:
        data = path.read_bytes()
        text = decode_wide(path, data)
        if text is None:
            text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise TaskDataError(f"{path} is not UTF-8 text ({exc}).") from exc
    except UnicodeError as exc:
        raise TaskDataError(str(exc)) from None
    except OSError as exc:
        raise TaskDataError(f"Cannot read {path}: {exc.strerror or exc}.") from exc
    if not text.strip():
        raise TaskDataError(f"{path} is empty.")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _read_splits(task: str, files: dict[str, Path], columns: Columns) -> dict[str, _Part]:
    reader = task_kind(task).reader
    if reader == "table":
        parts = _read_text_splits(files, columns)
    else:
        read = {"conllu": _read_conllu, "iob": _read_iob}[reader]
        parts = {split: _Part(read(path), str(path)) for split, path in files.items()}
    for split, part in parts.items():
        if not part.examples:
            raise TaskDataError(f"The {split} split is empty: {part.origin} has no examples.")
    return parts


def _read_blocks(path: Path, parse: Callable[[str, int], tuple[str, str] | None]) -> list[TokenExample]:
    """Sentences ended by blank or -DOCSTART- lines; `parse(line, number)` gives (word, tag) or None to skip."""
    examples: list[TokenExample] = []
    words: list[str] = []
    tags: list[str] = []
    for number, line in enumerate(_read_text(path).split("\n"), 1):
        if line.strip() and not line.startswith(DOCSTART):
            pair = parse(line, number)
            if pair is not None:
                words.append(pair[0])
                tags.append(pair[1])
        elif words:
            examples.append(TokenExample(tuple(words), tuple(tags)))
            words, tags = [], []
    if words:
        examples.append(TokenExample(tuple(words), tuple(tags)))
    return examples


def _read_conllu(path: Path) -> list[TokenExample]:
    """Syntactic words and their UPOS; multiword-token ranges (`3-4`) and empty nodes (`5.1`) skipped."""

    def parse(line: str, number: int) -> tuple[str, str] | None:
        if line.startswith("#"):
            return None
        columns = line.split("\t")
        if len(columns) != 10:
            raise TaskDataError(f"{path}:{number}: expected 10 tab-separated CoNLL-U columns, found {len(columns)}.")
        word_id, form, upos = columns[0], columns[1], columns[3]
        if "-" in word_id or "." in word_id:
            return None
        if not word_id.isdigit():
            raise TaskDataError(f"{path}:{number}: the ID column {word_id!r} is not a word number.")
        if upos in ("", "_"):
            raise TaskDataError(f"{path}:{number}: word {form!r} has no UPOS tag (column 4).")
        return form, upos

    return _read_blocks(path, parse)


def _read_iob(path: Path) -> list[TokenExample]:
    """`token tag` lines (first and last column if more); IOB1 converted to IOB2."""

    def parse(line: str, number: int) -> tuple[str, str] | None:
        fields = _FIELD_SEP.split(line.strip(" \t"))
        if len(fields) < 2:
            raise TaskDataError(f"{path}:{number}: expected 'token tag' (space or tab separated), found {line!r}.")
        tag = fields[-1]
        if not _NER_TAG.fullmatch(tag):
            raise TaskDataError(f"{path}:{number}: tag {tag!r} is not O, B-TYPE or I-TYPE (IOB1/IOB2).")
        return fields[0], tag

    return [TokenExample(ex.words, to_iob2(ex.tags)) for ex in _read_blocks(path, parse)]


def _read_text_splits(files: dict[str, Path], columns: Columns) -> dict[str, _Part]:
    tables = {split: _read_table(path, columns) for split, path in files.items()}
    unoriented = [row for table in tables.values() if not table.oriented for row in table.rows]
    label_first = len({row[0] for row in unoriented}) <= len({row[1] for row in unoriented})
    parts: dict[str, _Part] = {}
    for split, table in tables.items():
        examples: list[Example] = []
        for first, second, line in table.rows:
            text, label = (second, first) if label_first and not table.oriented else (first, second)
            if not text.strip():
                raise TaskDataError(f"{table.path}:{line}: the text is empty.")
            if not label.strip():
                raise TaskDataError(f"{table.path}:{line}: the label is empty.")
            examples.append(TextExample(text, label.strip()))
        parts[split] = _Part(examples, str(table.path))
    return parts


def _read_table(path: Path, columns: Columns) -> _Table:
    text = _read_text(path)
    if path.suffix.lower() == ".jsonl":
        return _read_jsonl(path, text, columns)
    first_line = text.split("\n", 1)[0]
    tab = path.suffix.lower() == ".tsv" or (path.suffix.lower() != ".csv" and "\t" in first_line)
    # strict: a quote that is not closed where its field ends is an error, not a field that swallows rows
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t" if tab else ",", strict=True)
    rows: list[tuple[list[str], int]] = []
    start = 1
    try:
        for row in reader:
            if any(field.strip() for field in row):
                rows.append((row, start))
            start = reader.line_num + 1
    except csv.Error as exc:
        raise TaskDataError(f"{path}:{start}: a quoted field that starts on this line is not closed where it "
                            f"should be ({exc}); is a closing quote missing?") from exc
    header = [name.strip() for name in rows[0][0]] if rows else []
    picked = _pick_columns(path, header, [row for row, _ in rows[1:]], columns)
    if picked is not None:
        text_col, label_col = picked
        for row, line in rows[1:]:
            if len(row) != len(header):
                raise TaskDataError(
                    f"{path}:{line}: expected {len(header)} columns as in the header, found {len(row)}."
                )
        return _Table(path, [(row[text_col], row[label_col], line) for row, line in rows[1:]], oriented=True)
    for row, line in rows:
        if len(row) != 2:
            raise TaskDataError(
                f"{path}:{line}: expected 2 columns (label,text or text,label) without a header, found {len(row)}; "
                f"a header needs a text column ({', '.join(TEXT_COLUMNS)}) and a label column "
                f"({', '.join(LABEL_COLUMNS)}), or name them with --text-column / --label-column."
            )
    return _Table(path, [(row[0], row[1], line) for row, line in rows], oriented=False)


def _pick_columns(path: Path, header: list[str], rows: list[list[str]], columns: Columns) -> tuple[int, int] | None:
    """(text, label) column indices of a table with a header, or None when the first row is data.

    Columns named in `columns` must exist. Otherwise the header names are matched against
    TEXT_COLUMNS / LABEL_COLUMNS; when only the label column is recognised (or named), the text is the
    column with the longest values on average, if it is at least twice as long as the next one.
    """
    lowered = [name.lower() for name in header]
    listed = ", ".join(repr(name) for name in header)
    hint = "name them with --text-column / --label-column (or text_column / label_column in [evaluation])"

    def named(name: str, kind: str) -> int:
        if name.lower() not in lowered:
            raise TaskDataError(f"{path}: no {kind} column {name!r}; the header's columns are {listed}.")
        return lowered.index(name.lower())

    text_col = named(columns.text, "text") if columns.text else next(
        (lowered.index(n) for n in TEXT_COLUMNS if n in lowered), None)
    label_col = named(columns.label, "label") if columns.label else next(
        (lowered.index(n) for n in LABEL_COLUMNS if n in lowered), None)
    if text_col is None and label_col is None:
        if columns.text or columns.label:
            raise TaskDataError(f"{path}: the first row has none of the named columns; columns: {listed}.")
        return None
    if label_col is None:
        raise TaskDataError(f"{path}:1: the header has no label column (columns: {listed}); {hint}.")
    if text_col is None:
        others = [i for i in range(len(header)) if i != label_col]
        mean_length = {i: sum(len(row[i]) for row in rows if i < len(row)) / max(1, len(rows)) for i in others}
        ranked = sorted(others, key=lambda i: -mean_length[i])
        if not ranked or (len(ranked) > 1 and mean_length[ranked[0]] < 2 * mean_length[ranked[1]]):
            raise TaskDataError(f"{path}:1: which column is the text? The header has no text column name "
                                f"({', '.join(TEXT_COLUMNS)}) and no column is clearly the longest "
                                f"(columns: {listed}); {hint}.")
        text_col = ranked[0]
    if text_col == label_col:
        raise TaskDataError(f"{path}: the text and label columns are the same column {header[text_col]!r}.")
    return text_col, label_col


def _read_jsonl(path: Path, text: str, columns: Columns) -> _Table:
    text_fields = (columns.text,) if columns.text else JSONL_TEXT_FIELDS
    label_fields = (columns.label,) if columns.label else JSONL_LABEL_FIELDS
    rows: list[tuple[str, str, int]] = []
    for number, record in jsonl_records(text, lambda line, problem: TaskDataError(f"{path}:{line}: {problem}")):
        record = record if isinstance(record, dict) else {}
        value = next((record[k] for k in text_fields if k in record), None)
        label = next((record[k] for k in label_fields if k in record), None)
        if not isinstance(value, str):
            keys = ", ".join(map(repr, record)) or "none"
            raise TaskDataError(f"{path}:{number}: expected a JSON object with a string "
                                f"{' or '.join(map(repr, text_fields))} (keys: {keys}); "
                                "name the text key with --text-column.")
        rows.append((value, _label_string(label, f"{path}:{number}", label_fields), number))
    return _Table(path, rows, oriented=True)


def _label_string(value: object, where: str, fields: Sequence[str] = JSONL_LABEL_FIELDS) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise TaskDataError(f"{where}: expected a string or integer {' or '.join(map(repr, fields))}, found {value!r}.")


# --- splits and labels ------------------------------------------------------------------------


def _complete_splits(parts: dict[str, _Part], seed: int) -> dict[str, _Part]:
    """Hold out every missing split from train (10% each), chosen by `seed`."""
    missing = [split for split in SPLITS if split not in parts]
    if not missing:
        return parts
    train = parts["train"]
    total = len(train.examples)
    size = max(1, round(total * HELD_OUT))
    if total - size * len(missing) < 1:
        raise TaskDataError(f"{train.origin} has only {total} examples: too few to hold out {' and '.join(missing)}.")
    order = list(range(total))
    random.Random(seed).shuffle(order)
    completed = dict(parts)
    for i, split in enumerate(missing):
        picked = sorted(order[i * size : (i + 1) * size])
        origin = f"{size} examples held out from {train.origin} (seed {seed})"
        completed[split] = _Part([train.examples[j] for j in picked], origin)
    kept = sorted(order[len(missing) * size :])
    completed["train"] = _Part([train.examples[j] for j in kept], train.origin)
    return completed


def _label_set(task: str, parts: dict[str, _Part], order: tuple[str, ...] | None, order_origin: str) -> tuple[str, ...]:
    train = parts["train"]
    seen = list(dict.fromkeys(_example_labels(train.examples)))
    if order is not None:
        extra = [label for label in seen if label not in order]
        if extra:
            raise TaskDataError(f"Label {extra[0]!r} occurs in train ({train.origin}) but not in {order_origin}.")
    known = _with_entity_pairs(seen) if task_kind(task).scoring == "entities" else seen
    for split in ("dev", "test"):
        part = parts[split]
        for label in dict.fromkeys(_example_labels(part.examples)):
            if label not in known:
                raise TaskDataError(
                    f"Label {label!r} occurs in {split} ({part.origin}) but never in train ({train.origin}): "
                    "a model fine-tuned on train cannot predict it. Add training examples of it or remove it."
                )
    if order is None:
        return tuple(known)
    return order + tuple(label for label in known if label not in order)


def _with_entity_pairs(tags: Sequence[str]) -> list[str]:
    """Tags in order, each entity type contributing B- then I- when first seen."""
    out: list[str] = []
    for tag in tags:
        for item in ((f"B-{tag[2:]}", f"I-{tag[2:]}") if tag != "O" else ("O",)):
            if item not in out:
                out.append(item)
    return out


# --- Hugging Face hub ---------------------------------------------------------------------------


def _load_hub(task: str, spec: str, columns: Columns) -> tuple[dict[str, _Part], tuple[str, ...] | None, str]:
    dataset, _, config = spec.partition(":")
    if not dataset:
        raise TaskDataError("A hub task dataset needs an id: hub:<dataset>[:<config>], e.g. hub:wikiann:sw.")
    reason = offline_reason()
    if reason:
        raise TaskDataError(
            f"hub:{spec} needs network access to the Hugging Face hub, but {reason}. Use a local folder "
            "with train/dev/test files instead (e.g. a UD treebank's .conllu files, or train.tsv/dev.tsv/test.tsv)."
        )
    try:
        import datasets

        loaded = datasets.load_dataset(dataset, config or None)
    except Exception as exc:
        raise TaskDataError(f"Could not load hub:{spec}: {exc}") from exc
    parts: dict[str, _Part] = {}
    order: tuple[str, ...] | None = None
    for split, names in HUB_SPLITS.items():
        name = next((n for n in names if n in loaded), None)
        if name is None:
            continue
        origin = f"hub:{spec} [{name}]"
        examples, names_order = _hub_examples(task, loaded[name], origin, columns)
        if not examples:
            raise TaskDataError(f"The {split} split is empty: {origin} has no examples.")
        parts[split] = _Part(examples, origin)
        order = order or names_order
    if "train" not in parts:
        raise TaskDataError(f"hub:{spec} has no train split (splits: {', '.join(loaded)}).")
    return parts, order, f"the ClassLabel names of hub:{spec}"


def _hub_examples(task: str, table: Any, origin: str,
                  columns: Columns) -> tuple[list[Example], tuple[str, ...] | None]:
    """Examples of one hub split and the ClassLabel names of its label column, if any."""
    if task_kind(task).token_level:
        words_col = _hub_column(table, HUB_WORD_COLUMNS, origin)
        tags_col = _hub_column(table, task_kind(task).hub_tags, origin)
        names = _class_names(getattr(table.features[tags_col], "feature", None))
        examples: list[Example] = []
        for row, (words, raw_tags) in enumerate(zip(table[words_col], table[tags_col], strict=True)):
            tags = [names[t] if names and isinstance(t, int) else str(t) for t in raw_tags]
            if len(words) != len(tags):
                raise TaskDataError(f"{origin} row {row}: {len(words)} words but {len(tags)} tags.")
            if task_kind(task).scoring == "entities":  # IOB tags
                bad = next((t for t in tags if not _NER_TAG.fullmatch(t)), None)
                if bad is not None:
                    raise TaskDataError(f"{origin} row {row}: tag {bad!r} is not O, B-TYPE or I-TYPE.")
                tags = list(to_iob2(tags))
            examples.append(TokenExample(tuple(map(str, words)), tuple(tags)))
        return examples, names
    text_col = _hub_column(table, (columns.text,) if columns.text else TEXT_COLUMNS, origin)
    label_col = _hub_column(table, (columns.label,) if columns.label else LABEL_COLUMNS, origin)
    names = _class_names(table.features[label_col])
    examples = []
    for row, (text, label) in enumerate(zip(table[text_col], table[label_col], strict=True)):
        value = names[label] if names and isinstance(label, int) else _label_string(label, f"{origin} row {row}")
        if not str(text).strip():
            raise TaskDataError(f"{origin} row {row}: the text is empty.")
        examples.append(TextExample(str(text), value))
    return examples, names


def _hub_column(table: Any, candidates: Sequence[str], origin: str) -> str:
    column = next((c for c in candidates if c in table.column_names), None)
    if column is None:
        raise TaskDataError(f"{origin} has none of the columns {', '.join(candidates)} "
                            f"(columns: {', '.join(table.column_names)}).")
    return column


def _class_names(feature: Any) -> tuple[str, ...] | None:
    names = getattr(feature, "names", None)
    return tuple(names) if names else None
