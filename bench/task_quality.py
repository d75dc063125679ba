"""Benchmark: how much of the fine-tuned teacher a task model from the compressed student keeps.

On the four tasks of `bench/quality.py` (Swahili NER, Swahili SIB-200 topic, Maltese UD POS, Maltese
SIB-200 topic) and for each seed: the teacher fine-tuned, the student fine-tuned on the gold labels
(plain), and the student task-distilled from that seed's fine-tuned teacher on the train texts and the
language's unlabelled running text (the corpus `bench/quality.py` compresses on), all through
`engine.taskmodel.build_task_model`, i.e. what `miniglot-cli finetune` does. The students are the final
models of runs of the recipe (default: the embedded one), compressed here unless `--runs` names them.

Prints one JSON line per task (test scores per variant and seed, means, retained fractions of the
teacher's mean, CPU minutes per variant), one summary line, then a readable table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality import LANGUAGES, REPO, SHARED, compress, train_texts

TASKS = {f"{task}-{language}": (language, task, data) for language, spec in LANGUAGES.items()
         for task, data in spec["tasks"]}
VARIANTS = ("teacher", "plain", "distilled")


def main() -> None:
    args = parse_args()
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from engine.events import ConsoleSink, FanOut

    if not SHARED.is_dir():
        sys.exit(f"bench/task_quality.py needs the developer data in {SHARED}")
    out = args.out or REPO / "bench" / "out" / time.strftime("task-quality-%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    sink = FanOut(ConsoleSink()) if args.verbose else FanOut()
    runs = dict(pair.split("=", 1) for pair in args.runs)
    began = time.monotonic()
    rows = []
    for name in args.tasks:
        language = TASKS[name][0]
        if language not in runs:
            plain = argparse.Namespace(recipe=args.recipe, corpus_mb=None, plan_params=None)  # the whole corpus
            runs[language] = str(compress(plain, language, out, sink))
        rows.append(score_task(args, name, Path(runs[language]), out, sink))
        print(json.dumps(rows[-1]), flush=True)
    summary = {"summary": True, "retained_distilled": {r["task"]: r["retained"]["distilled"] for r in rows},
               "retained_plain": {r["task"]: r["retained"]["plain"] for r in rows},
               "min_retained_distilled": min(r["retained"]["distilled"] for r in rows),
               "seeds": args.seeds, "runs": runs, "wall_minutes": round((time.monotonic() - began) / 60, 1)}
    print(json.dumps(summary), flush=True)
    print(table(rows))


def score_task(args: argparse.Namespace, name: str, run_dir: Path, out: Path, sink) -> dict:
    """Teacher, plain student and distilled student on one task for every seed."""
    from engine.configs import TaskModelConfig
    from engine.runfolder import RunFolder
    from engine.taskmodel import build_task_model

    language, task, data = TASKS[name]
    folder = RunFolder(run_dir)
    manifest = folder.manifest().data
    student = str(folder.stage_models(manifest)[-1].path)
    teacher_source = manifest["teacher"]["source"]
    unlabelled = unlabelled_text(language, out)
    scores: dict[str, list[float]] = {v: [] for v in VARIANTS}
    minutes: dict[str, float] = dict.fromkeys(VARIANTS, 0.0)
    headline = ""
    for seed in range(args.seeds):
        base = TaskModelConfig(task=task, data=str(SHARED / data), distill=False, seed=seed,
                               temperature=args.temperature, alpha=args.alpha,
                               unlabelled_ratio=args.unlabelled_ratio)
        jobs = {"teacher": (teacher_source, base, None),
                "plain": (student, base, None),
                "distilled": (student, dataclasses.replace(base, distill=True, unlabelled=tuple(unlabelled)),
                              str(out / name / f"teacher-{seed}"))}
        for variant, (encoder, config, teacher) in jobs.items():
            settings = (f"-a{args.alpha:g}-t{args.temperature:g}-r{args.unlabelled_ratio:g}"
                        if variant == "distilled" else "")
            target = out / name / f"{variant}{settings}-{seed}"
            # an interrupted benchmark reruns with --out and continues (not with_suffix: the settings hold dots);
            # a record is reused only for the same encoder, so another student is never scored by an old one
            record = target.parent / f"{target.name}.json"
            row = json.loads(record.read_text()) if record.is_file() else {}
            if row.get("encoder") != encoder:
                cpu = time.process_time()
                facts = build_task_model(encoder, config, target, sink, teacher=teacher, cache=out / name)
                row = {"task": name, "variant": variant, "seed": seed, "encoder": encoder, "metric": facts["headline"],
                       "test": facts["test"][facts["headline"]],
                       "dev": facts["dev"][facts["headline"]], "epochs": facts["epochs_run"],
                       "cpu_minutes": round((time.process_time() - cpu) / 60, 2)}
                record.write_text(json.dumps(row))
            print(json.dumps(row), file=sys.stderr, flush=True)
            minutes[variant] += row["cpu_minutes"]
            headline = row["metric"]
            scores[variant].append(row["test"])
    means = {v: statistics.mean(s) for v, s in scores.items()}
    return {"task": name, "metric": headline, "scores": scores, "mean": means,
            "distillation": {"alpha": args.alpha, "temperature": args.temperature,
                             "unlabelled_ratio": args.unlabelled_ratio},
            "retained": {v: means[v] / means["teacher"] for v in ("plain", "distilled")},
            "cpu_minutes": {v: round(m / args.seeds, 2) for v, m in minutes.items()},
            "student": student, "unlabelled": unlabelled}


def unlabelled_text(language: str, out: Path) -> list[str]:
    """The language's running text that `bench/quality.py` compresses on (the teacher labels it)."""
    spec = LANGUAGES[language]
    return [str(SHARED / pattern) for pattern in spec["corpus"]] + [
        str(train_texts(task, SHARED / data, out / f"{language}-{data}-train.txt"))
        for task, data in spec["extra_train_texts"]]


def table(rows: list[dict]) -> str:
    lines = [f"{'task':<12}{'metric':>10}{'teacher':>10}{'plain':>16}{'distilled':>16}   CPU min (t/p/d, per seed)"]
    for r in rows:
        m, kept = r["mean"], r["retained"]
        lines.append(f"{r['task']:<12}{r['metric']:>10}{100 * m['teacher']:>10.1f}"
                     f"{100 * m['plain']:>9.1f} ({100 * kept['plain']:4.1f}%)"
                     f"{100 * m['distilled']:>9.1f} ({100 * kept['distilled']:4.1f}%)   "
                     + " / ".join(f"{r['cpu_minutes'][v]:.1f}" for v in VARIANTS))
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    from engine.resources import DEFAULT_RECIPE

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", type=Path, default=DEFAULT_RECIPE, help="compresses the students (see quality.py)")
    parser.add_argument("--runs", nargs="*", default=[], metavar="LANG=RUN_DIR",
                        help="use these runs' final students (swh=…, mlt=…) instead of compressing")
    parser.add_argument("--tasks", nargs="+", choices=tuple(TASKS), default=list(TASKS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--temperature", type=float, default=None, help="default: TaskModelConfig's")
    parser.add_argument("--alpha", type=float, default=None, help="default: TaskModelConfig's")
    parser.add_argument("--unlabelled-ratio", type=float, default=None, help="default: TaskModelConfig's")
    parser.add_argument("--out", type=Path, help="where everything goes (default bench/out/task-quality-*)")
    parser.add_argument("--verbose", action="store_true", help="training progress on stderr")
    args = parser.parse_args()
    from engine.configs import TaskModelConfig

    args.temperature = TaskModelConfig.temperature if args.temperature is None else args.temperature
    args.alpha = TaskModelConfig.alpha if args.alpha is None else args.alpha
    if args.unlabelled_ratio is None:
        args.unlabelled_ratio = TaskModelConfig.unlabelled_ratio
    return args


if __name__ == "__main__":
    main()
