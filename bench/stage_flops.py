"""Benchmark: achieved GFLOP/s of the default recipe's distill and shrink stages, against the matmul peak.

Runs the embedded default recipe (packaged multilingual-e5-small; corpus: the recipe's, or `--text`) with
each training stage cut to `--steps` steps and validated once, at its end, and reads each training stage's
last Progress event: the real tokens a second over all its steps, before that validation. Achieved GFLOP/s
is that rate times the FLOPs a token costs by the engine's cost model (`engine.cost.step_flops`, what
`distill_step.py` counts too: the student's forward and backward and the teaching model's forward; this
recipe's teacher has no MLM head, so no vocabulary rows), at the corpus's mean line length in tokens. The
teaching model is the one the engine uses: for distill the stage's input, for shrink the last distilled
student. The fp32 and bf16 matrix-multiply peaks (`engine.training.precision.matmul_rate`) are measured in
the same process after the run (fp32: the median of three). The run folder is deleted at the end.

Prints one JSON line (`achieved_gflops` and `matmul_peak_gflops` first), then a readable table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TRAINING = ("distill", "shrink")


def main() -> None:
    args = parse_args()
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from engine import pipeline
    from engine.configs import CorpusConfig
    from engine.cost import step_flops
    from engine.events import Collect, Progress
    from engine.models.loading import source_shape
    from engine.recipe import Recipe
    from engine.resources import DEFAULT_RECIPE
    from engine.runfolder import RunFolder
    from engine.training.precision import Precision, matmul_rate

    recipe = Recipe.load(DEFAULT_RECIPE)
    stages = tuple(dataclasses.replace(s, max_steps=args.steps, eval_every=args.steps, checkpoint_every=args.steps)
                   if s.kind in TRAINING else s for s in recipe.stages)
    corpus = recipe.corpus if not args.text else CorpusConfig(
        train=tuple(args.text), validation=recipe.corpus.validation, max_length=recipe.corpus.max_length)
    out = Path(tempfile.mkdtemp(prefix="stage-flops-"))
    recipe = recipe.replace(corpus=corpus, stages=stages, evaluation=None, run=dataclasses.replace(
        recipe.run, runs_dir=str(out), name="stage-flops", verify=False, sentence_layout=False))
    events = Collect()
    run_dir = pipeline.run(recipe, events)
    last = {event.index: event for event in events.of(Progress) if event.unit == "step"}  # each stage's last step

    folder = RunFolder(run_dir)
    manifest = folder.manifest().data
    models = [ref.path for ref in folder.stage_models(manifest)]  # stage i's model is models[i - 1]
    kinds = [stage.kind for stage in recipe.stages]
    length = mean_line_tokens(models[0], recipe.resolved().corpus.train, recipe.corpus.max_length)
    rows = {}
    last_distilled = None
    for index, kind in enumerate(kinds, start=1):
        if kind not in TRAINING:
            continue
        teaching = models[index - 2] if kind == "distill" else last_distilled
        student, teacher = source_shape(str(models[index - 1])), source_shape(str(teaching))
        per_token = step_flops(student, 1, round(length), 0, teacher)
        rate = last[index].tokens_per_second
        rows[kind] = {"index": index, "tokens_per_second": rate, "gflop_per_token": per_token / 1e9,
                      "achieved_gflops": rate * per_token / 1e9, "steps": last[index].step}
        if kind == "distill":
            last_distilled = models[index - 1]
    device = torch.device("cpu")
    fp32 = [matmul_rate(device, torch.float32) / 1e9 for _ in range(3)]
    peaks = {"fp32": statistics.median(fp32), "bf16": matmul_rate(device, torch.bfloat16) / 1e9}
    used = Precision.for_run(recipe.run.precision, device).name
    result = {
        "achieved_gflops": {kind: row["achieved_gflops"] for kind, row in rows.items()},
        "matmul_peak_gflops": peaks,
        "peak_fraction": {kind: row["achieved_gflops"] / peaks[used] for kind, row in rows.items()},
        "precision": used, "stages": rows, "mean_line_tokens": length, "steps": args.steps,
        "threads": torch.get_num_threads(), "matmul_peak_gflops_all": {"fp32": fp32},
        "load_average": os.getloadavg()[0],
    }
    shutil.rmtree(out)
    print(json.dumps(result), flush=True)
    print(f"Default recipe, {args.steps} steps a training stage, {result['threads']} threads, precision {used}, "
          f"lines of {length:.1f} tokens on average")
    print(f"{'stage':<9}{'tokens/s':>10}{'GFLOP/token':>13}{'GFLOP/s':>9}{'of peak':>9}")
    for kind, row in rows.items():
        print(f"{kind:<9}{row['tokens_per_second']:>10.0f}{row['gflop_per_token']:>13.4f}"
              f"{row['achieved_gflops']:>9.1f}{result['peak_fraction'][kind]:>9.0%}")
    print(f"Matmul peak measured after the run: fp32 {peaks['fp32']:.1f}, bf16 {peaks['bf16']:.1f} GFLOP/s")


def mean_line_tokens(model: Path, train: tuple[str, ...], max_length: int, lines: int = 2000) -> float:
    """Tokens per line (with the special tokens, at most `max_length`) over the corpus's first `lines` lines,
    by the tokenizer of `model` (the trimmed teacher's, which every later stage shares)."""
    from itertools import islice

    from transformers import AutoTokenizer

    from engine.data.corpus import open_corpus

    tokenizer = AutoTokenizer.from_pretrained(str(model))
    texts = list(islice(iter(open_corpus(list(train))), lines))
    ids = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    return statistics.mean(map(len, ids))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=60, help="steps of each training stage (default 60)")
    parser.add_argument("--text", action="append", help="corpus files or folders (default: the recipe's)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own choice)")
    return parser.parse_args()


if __name__ == "__main__":
    main()
