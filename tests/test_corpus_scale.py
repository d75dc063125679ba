"""Corpora of any size (issue 23, Scale): read as a stream into a keyed cache, split and batched by index,
counted in one streaming pass with progress, never held in memory whole."""

from __future__ import annotations

import os
import random
import tracemalloc
from pathlib import Path

import pytest
import torch
from tiny import sentences

from engine.data import corpus as corpus_module
from engine.data.batches import BatchStream
from engine.data.corpus import Corpus, Lines, Subset, corpus_stats, open_corpus, read_corpus, split_validation
from engine.errors import CorpusError


def write_lines(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def repeated(n: int, seed: int = 0) -> list[str]:
    """`n` lines of the made-up language, some repeated (deduplication has work to do)."""
    base = sentences(max(n // 2, 1), seed)
    rng = random.Random(seed)
    return [rng.choice(base) if i % 3 == 0 else f"{base[i % len(base)]} {i}" for i in range(n)]


def test_streamed_corpus_gives_the_same_lines_and_split_as_a_list(tmp_path: Path) -> None:
    lines = repeated(3000)
    write_lines(tmp_path / "a.txt", lines[:1700])
    write_lines(tmp_path / "b.txt", ["  padded   line  ", "", *lines[1700:]])
    corpus = open_corpus(["a.txt", "b.txt"], tmp_path)
    listed = corpus_module.clean_lines([*lines[:1700], "padded line", *lines[1700:]])
    assert isinstance(corpus, Corpus) and len(corpus) == len(listed) and list(corpus) == listed
    for seed in (0, 7):
        train, val = split_validation(corpus, 0.05, seed)
        expected_train, expected_val = split_validation(listed, 0.05, seed)
        assert isinstance(train, Subset) and isinstance(val, Subset)
        assert list(train) == expected_train and list(val) == expected_val
        assert [train[i] for i in (0, 5, len(train) - 1, -1)] == [expected_train[i] for i in (0, 5, -1, -1)]
        assert train[10:20] == expected_train[10:20] and val.take([3, 0, 3]) == [expected_val[i] for i in (3, 0, 3)]
        assert [len(c) for c in train.chunks(1000)][:-1] == [1000] * (len(train) // 1000)
    # validation files: training lines found there are dropped, by the lines' hashes
    write_lines(tmp_path / "val.txt", [listed[4], listed[100], "only in validation"])
    train, val = split_validation(corpus, ["val.txt"], 0, tmp_path)
    assert list(train) == split_validation(listed, ["val.txt"], 0, tmp_path)[0]
    assert list(val) == [listed[4], listed[100], "only in validation"]


def test_small_blocks_decode_the_same_and_errors_keep_their_position(tmp_path: Path, monkeypatch) -> None:
    text = "Moni dziko ċaw ħafna\r\nżebbuġ għasfur\n\n" * 40 + "last line without newline"
    write_lines(tmp_path / "utf8.txt", [text])
    (tmp_path / "utf16.txt").write_bytes(text.encode("utf-16"))
    expected = read_corpus(["utf8.txt"], tmp_path)
    monkeypatch.setattr(corpus_module, "_BLOCK_BYTES", 5)  # characters and lines cut across reads
    monkeypatch.setenv("MINIGLOT_CORPUS_CACHE", str(tmp_path / "cache"))
    assert read_corpus(["utf8.txt"], tmp_path) == read_corpus(["utf16.txt"], tmp_path) == expected
    (tmp_path / "latin1.txt").write_bytes(b"good line\n" + "caf\u00e9 ok".encode("latin-1"))
    with pytest.raises(CorpusError, match=r"latin1\.txt is not valid UTF-8 \(line 2, byte offset 13\)"):
        read_corpus(["latin1.txt"], tmp_path)
    (tmp_path / "nul.txt").write_bytes(b"one\ntwo\nthr\x00ee\n")
    with pytest.raises(CorpusError, match=r"looks binary \(NUL byte at line 3, byte offset 11\)"):
        read_corpus(["nul.txt"], tmp_path)


def test_not_a_regular_file_is_refused_before_reading(tmp_path: Path) -> None:
    if Path("/dev/zero").exists():
        with pytest.raises(CorpusError, match="not a regular file or a folder"):
            open_corpus(["/dev/zero"])
    fifo = tmp_path / "pipe.txt"
    if hasattr(os, "mkfifo"):
        os.mkfifo(fifo)  # reading it would wait forever
        with pytest.raises(CorpusError, match="not a regular file or a folder"):
            open_corpus([str(fifo)])


def test_cache_is_keyed_by_the_files_identity_and_the_reader_version(tmp_path: Path, monkeypatch) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("MINIGLOT_CORPUS_CACHE", str(cache))
    path = write_lines(tmp_path / "c.txt", ["alpha one", "beta two"])
    first = open_corpus([str(path)])
    assert list(first) == ["alpha one", "beta two"] and first.folder.parent == cache
    assert open_corpus([str(path)]).folder == first.folder  # unchanged: the same cache, not read again
    write_lines(path, ["gamma six", "delta two"])  # same size: the modification time tells
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    changed = open_corpus([str(path)])
    assert changed.folder != first.folder and list(changed) == ["gamma six", "delta two"]
    monkeypatch.setattr(corpus_module, "CORPUS_CACHE_VERSION", corpus_module.CORPUS_CACHE_VERSION + 1)
    assert open_corpus([str(path)]).folder not in (first.folder, changed.folder)
    (changed.folder / "offsets.u64").write_bytes(b"")  # damaged: never read, rebuilt
    monkeypatch.undo()
    monkeypatch.setenv("MINIGLOT_CORPUS_CACHE", str(cache))
    assert list(open_corpus([str(path)])) == ["gamma six", "delta two"]
    assert not list(cache.glob(".*.partial"))  # built beside the cache, renamed into place


def test_a_corpus_far_larger_than_memory_use_is_never_materialised(tmp_path: Path) -> None:
    """Caching, splitting, counting and batching a ~11 MB corpus (60k lines) take Python allocations that
    hardly grow from those of a corpus four times smaller: a chunk's worth of lines, plus a few bytes a line
    (the deduplication's hashes, the epoch's order). All its lines as str would take over 13 MB."""
    from transformers import BertTokenizerFast

    words = [f"w{i}" for i in range(5000)]
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]))
    tokenizer = BertTokenizerFast.from_pretrained(tmp_path / "tok")

    def peak_for(lines: int) -> tuple[int, int]:
        rng = random.Random(lines)
        path = tmp_path / f"{lines}.txt"
        with path.open("w", encoding="utf-8") as f:
            for i in range(lines):
                f.write(" ".join(rng.choices(words, k=30)) + f" {i}\n")
        tracemalloc.start()
        try:
            corpus = open_corpus([str(path)])
            train, val = split_validation(corpus, 0.05, seed=3)
            stats = corpus_stats(train)
            stream = BatchStream(tokenizer, train, 32, 8, seed=5, mlm_probability=0.15)
            batches = [stream.batch(step) for step in (0, 1, stream.batches_per_epoch + 3)]
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert len(corpus) == lines and len(train) + len(val) == lines and stats.lines == len(train)
        assert all(b.input_ids.shape[0] == 8 for b in batches)
        return peak, path.stat().st_size

    small, small_size = peak_for(15_000)
    large, large_size = peak_for(60_000)
    assert large < 0.75 * large_size, f"{large / 1e6:.1f} MB allocated for a {large_size / 1e6:.1f} MB corpus"
    assert large - small < (large_size - small_size) / 4, f"peak {small / 1e6:.1f} → {large / 1e6:.1f} MB"


def test_batches_from_a_corpus_on_disk_equal_those_from_its_list(tmp_path: Path, tiny_models) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_models["bert"])
    corpus = open_corpus([str(write_lines(tmp_path / "c.txt", repeated(1500)))])
    train, _ = split_validation(corpus, 0.1, seed=2)
    listed = list(train)
    on_disk = BatchStream(tokenizer, train, 32, 4, seed=9, mlm_probability=0.15)
    in_memory = BatchStream(tokenizer, listed, 32, 4, seed=9, mlm_probability=0.15)
    for step in (0, 17, on_disk.batches_per_epoch - 1, on_disk.batches_per_epoch + 5):
        a, b = on_disk.batch(step), in_memory.batch(step)
        assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.labels, b.labels)


@pytest.mark.parametrize("family", ["bert", "xlm-roberta"])
def test_vocabulary_count_streams_with_progress_and_counts_the_same(tmp_path: Path, tiny_models, family) -> None:
    from engine.models.loading import load_model
    from engine.surgery import vocab

    teacher = load_model(tiny_models[family])
    lines = repeated(vocab._CHUNK * 2 + 1500, seed=4)
    corpus = open_corpus([str(write_lines(tmp_path / "c.txt", lines))])
    assert isinstance(corpus, Lines) and len(corpus) > 2 * vocab._CHUNK
    calls: list[tuple[int, int]] = []
    reports = []
    for texts, progress in ((corpus, lambda done, total: calls.append((done, total))), (list(corpus), None)):
        model = load_model(tiny_models[family]).model
        reports.append(vocab.trim_vocabulary(model, teacher.tokenizer, teacher.adapter, texts, 120,
                                             corpus[:200], progress=progress)[2])
    assert reports[0] == reports[1]
    assert [done for done, _ in calls] == [vocab._CHUNK, 2 * vocab._CHUNK, len(corpus)]
    assert {total for _, total in calls} == {len(corpus)}


def test_counting_progress_events_say_lines_rate_and_eta(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from engine.events import CancelToken, Collect, ConsoleSink, Progress
    from engine.stages.trim_vocab import _CountingProgress

    sink, token = Collect(), CancelToken()
    progress = _CountingProgress(SimpleNamespace(index=1, kind="trim_vocab", sink=sink, token=token))
    progress(4096, 10_000)
    progress(8192, 10_000)  # within the interval: skipped
    progress(10_000, 10_000)  # the last always comes
    events = sink.of(Progress)
    assert [e.step for e in events] == [4096, 10_000] and all(e.unit == "line" for e in events)
    assert events[0].per_second > 0 and events[0].eta_seconds > 0 and events[-1].eta_seconds == 0
    assert events[0].text.startswith("line 4,096/10,000 · ") and events[0].text.endswith(" lines/s")
    assert ConsoleSink._format(events[-1]).startswith("[01 trim_vocab] line 10,000/10,000 · ")
    token.cancel()
    with pytest.raises(Exception, match="cancelled"):
        progress(10_000, 10_000)
