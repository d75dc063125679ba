"""Benchmark: does a run's memory grow with its corpus? The same recipe on a ~4 MB and a ~400 MB corpus.

The recipe (issue 23's measurement): the packaged MiniLM teacher (`packaged:all-minilm-l6-v2`, English
WordPiece, no MLM head), `trim_vocab` to 8,000 tokens, then a 5-step distillation to 2 layers, lines cut
to 64 tokens. The corpora are made from the Swahili text in `../shared/data/text_swh` (or `--text`): every
line's words shuffled by a seeded generator, over and over, until the file reaches its size; so the lines
are distinct (deduplication keeps them) and the language and vocabulary stay those of the text. They are
written to a temporary folder and deleted afterwards, with the corpus cache the runs build there.

Each corpus runs `engine.pipeline.run` in a child process of its own (this script with `--child`), which
reports its peak resident memory (VmHWM) at the end, the time the corpus took to cache (`open_corpus`)
and the vocabulary count's rate (lines/s, from the stage's Progress events). Small first, then large.

Prints one JSON line (keys: `small_peak_mb`, `large_peak_mb`, `peak_difference_mb`, `peak_ratio`,
`within_budget` (the difference at most `--budget-mb`, 400), `small`/`large` (each child's report:
corpus MB and lines, `peak_mb`, `cache_seconds`, `count_lines_per_second`, `count_seconds`,
`run_seconds`)), then a readable table.

    .venv/bin/python bench/corpus_scale.py                 # ~15-20 min on 2 busy cores
    .venv/bin/python bench/corpus_scale.py --large-mb 40   # a quicker look
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from peak_memory import status_mb

REPO = Path(__file__).resolve().parents[1]
TEACHER = "packaged:all-minilm-l6-v2"
TEXT = REPO.parent / "shared" / "data" / "text_swh"


def main() -> None:
    args = parse_args()
    if args.child:
        child(args)
        return
    sources = sorted(Path(args.text).glob("*.txt")) if Path(args.text).is_dir() else [Path(args.text)]
    base = [line.split() for path in sources for line in path.read_text(encoding="utf-8").splitlines()]
    base = [words for words in base if words]
    if not base:
        raise SystemExit(f"no text in {args.text}")
    work = Path(tempfile.mkdtemp(prefix="miniglot-corpus-scale-"))
    try:
        reports = {}
        for name, megabytes in (("small", args.small_mb), ("large", args.large_mb)):
            corpus = work / f"{name}.txt"
            started = time.perf_counter()
            lines = write_corpus(corpus, base, int(megabytes * 1e6), seed=len(name))
            print(f"[{name}] wrote {corpus.stat().st_size / 1e6:,.1f} MB, {lines:,} lines in "
                  f"{time.perf_counter() - started:.0f}s; running the recipe...", file=sys.stderr, flush=True)
            reports[name] = run_child(corpus, work / f"runs-{name}", work / "cache", args)
            reports[name].update(corpus_mb=corpus.stat().st_size / 1e6, corpus_lines=lines)
            corpus.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    small, large = reports["small"], reports["large"]
    result = {
        "small_peak_mb": small["peak_mb"],
        "large_peak_mb": large["peak_mb"],
        "peak_difference_mb": large["peak_mb"] - small["peak_mb"],
        "peak_ratio": large["peak_mb"] / small["peak_mb"],
        "budget_mb": args.budget_mb,
        "within_budget": large["peak_mb"] - small["peak_mb"] <= args.budget_mb,
        "count_lines_per_second": large["count_lines_per_second"],
        "teacher": TEACHER,
        "text": str(args.text),
        "small": small,
        "large": large,
    }
    print(json.dumps(result), flush=True)
    print(summary(result))


def write_corpus(path: Path, base: list[list[str]], size: int, seed: int) -> int:
    """Lines of `base` with their words shuffled, until `size` bytes; returns the number of lines."""
    rng = random.Random(seed)
    written = lines = 0
    with path.open("w", encoding="utf-8") as f:
        while written < size:
            block = []
            for words in rng.sample(base, len(base)):
                shuffled = rng.sample(words, len(words))
                block.append(" ".join(shuffled))
            text = "\n".join(block) + "\n"
            data = text.encode("utf-8")
            if written + len(data) > size:  # the last block: only the lines that fit
                data = data[: data.rfind(b"\n", 0, size - written) + 1]
                text = data.decode("utf-8")
            f.write(text)
            written += len(data)
            lines += text.count("\n")
            if not data:
                break
    return lines


def run_child(corpus: Path, runs: Path, cache: Path, args: argparse.Namespace) -> dict:
    env = {**os.environ, "MINIGLOT_CORPUS_CACHE": str(cache), "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": os.environ.get("TOKENIZERS_PARALLELISM", "true")}
    command = [sys.executable, __file__, "--child", "--corpus", str(corpus), "--runs", str(runs),
               "--threads", str(args.threads)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"the run on {corpus} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def child(args: argparse.Namespace) -> None:
    """One run of the recipe on `--corpus`; prints its report as the last JSON line."""
    import torch

    torch.set_num_threads(args.threads)
    from engine import pipeline
    from engine.configs import CorpusConfig, RunConfig, TeacherConfig
    from engine.data.corpus import open_corpus
    from engine.events import Collect, Progress
    from engine.recipe import Recipe
    from engine.stages.distill import DistillStage
    from engine.stages.trim_vocab import TrimVocabStage

    started = time.perf_counter()
    open_corpus([args.corpus])  # cached here, so the run opens it at once; timed apart from counting
    cache_seconds = time.perf_counter() - started
    recipe = Recipe(
        teacher=TeacherConfig(source=TEACHER),
        corpus=CorpusConfig(train=(args.corpus,), validation=0.05, max_length=64),
        stages=(TrimVocabStage(size=8000),
                DistillStage(layers=2, layer_selection="first_k", loss="hidden", max_steps=5, batch_size=8,
                             eval_every=5, checkpoint_every=5)),
        run=RunConfig(seed=7, runs_dir=args.runs, name="scale"),
    )
    events = Collect()
    started = time.perf_counter()
    pipeline.run(recipe, events)
    run_seconds = time.perf_counter() - started
    counting = [e for e in events.of(Progress) if e.unit == "line"]
    first, last = (counting[0], counting[-1]) if counting else (None, None)
    print(json.dumps({
        "peak_mb": status_mb("VmHWM"),
        "cache_seconds": cache_seconds,
        "run_seconds": run_seconds,
        "count_lines": last.total if last else 0,
        "count_lines_per_second": last.per_second if last else 0.0,
        "count_seconds": (last.time - first.time + first.step / max(first.per_second, 1e-9)) if last else 0.0,
        "progress_events": len(counting),
    }), flush=True)


def summary(r: dict) -> str:
    rows = [("", "small", "large"),
            ("corpus", f"{r['small']['corpus_mb']:,.1f} MB", f"{r['large']['corpus_mb']:,.1f} MB"),
            ("lines", f"{r['small']['corpus_lines']:,}", f"{r['large']['corpus_lines']:,}"),
            ("peak RSS", f"{r['small_peak_mb']:,.0f} MB", f"{r['large_peak_mb']:,.0f} MB"),
            ("caching the corpus", f"{r['small']['cache_seconds']:.1f} s", f"{r['large']['cache_seconds']:.1f} s"),
            ("counting the vocabulary", f"{r['small']['count_lines_per_second']:,.0f} lines/s",
             f"{r['large']['count_lines_per_second']:,.0f} lines/s"),
            ("whole run", f"{r['small']['run_seconds']:.0f} s", f"{r['large']['run_seconds']:.0f} s")]
    table = "\n".join(f"  {a:<26}{b:>16}{c:>16}" for a, b, c in rows)
    verdict = "within" if r["within_budget"] else "OVER"
    return (f"Corpus scale ({r['teacher']}: trim_vocab 8000 + 5-step 2-layer distillation, max_length 64)\n"
            f"{table}\n  the large corpus peaks {r['peak_difference_mb']:+,.0f} MB above the small one "
            f"(x{r['peak_ratio']:.2f}): {verdict} the {r['budget_mb']:,} MB budget")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--text", default=str(TEXT), help="a text file or a folder of .txt files to build from")
    parser.add_argument("--small-mb", type=float, default=4.0)
    parser.add_argument("--large-mb", type=float, default=400.0)
    parser.add_argument("--budget-mb", type=int, default=400, help="how much more the large run may peak")
    parser.add_argument("--threads", type=int, default=2, help="torch threads in each run")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--corpus", help=argparse.SUPPRESS)
    parser.add_argument("--runs", help=argparse.SUPPRESS)
    return parser.parse_args()


if __name__ == "__main__":
    main()
