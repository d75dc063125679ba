"""Benchmark: how much of the teacher each stage keeps, on real data, on a CPU budget.

Compresses the teacher of a recipe (default: the embedded offline recipe, multilingual-e5-small)
twice — on Swahili and on Maltese running text from `../shared/data` — then scores the teacher and
every stage's student by linear probe (`miniglot-cli eval --mode probe`) on Swahili NER
(MasakhaNER 2.0), Swahili SIB-200 topic, Maltese UD POS (MUDT) and Maltese SIB-200 topic.

The recipe's stages are used as they are; its corpus and language are replaced per language:
Swahili `text_swh/*.txt`; Maltese `text_mlt/*.txt` plus the texts of the Maltese SIB-200 train
split (the Maltese running text is tiny; no dev or test text is used anywhere). `--corpus-mb M` keeps
only the first M MB of that corpus (the small-corpus case); `--plan-params N` first runs the planner
(`miniglot-cli plan`) on each language's corpus and compresses with its planned recipe instead.

Prints one JSON line per language and stage (params, % of teacher, score and retained fraction per
task, compression CPU and wall minutes), then one summary line, then a readable table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
LANGUAGES = {
    "swh": {"code": "swh_Latn", "corpus": ["text_swh/*.txt"], "extra_train_texts": [],
            "tasks": [("ner", "ner_swh_masakhaner2"), ("topic", "sib200_swh_Latn")]},
    "mlt": {"code": "mlt_Latn", "corpus": ["text_mlt/*.txt"], "extra_train_texts": [("topic", "sib200_mlt_Latn")],
            "tasks": [("pos", "ud_mlt_mudt"), ("topic", "sib200_mlt_Latn")]},
}


class StageClock:
    """An event sink that records each stage's wall and process-CPU seconds."""

    def __init__(self) -> None:
        self.started: dict[int, tuple[float, float]] = {}
        self.seconds: dict[int, dict[str, float]] = {}

    def emit(self, event) -> None:
        from engine.events import StageFinished, StageStarted

        if isinstance(event, StageStarted):
            self.started[event.index] = (time.monotonic(), time.process_time())
        elif isinstance(event, StageFinished) and event.index in self.started:
            wall, cpu = self.started.pop(event.index)
            self.seconds[event.index] = {"wall": time.monotonic() - wall, "cpu": time.process_time() - cpu}


def main() -> None:
    args = parse_args()
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # as miniglot-cli: no weight-loading bars
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from engine.events import ConsoleSink, FanOut

    if not SHARED.is_dir():
        sys.exit(f"bench/quality.py needs the developer data in {SHARED}")
    out = args.out or REPO / "bench" / "out" / time.strftime("quality-%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    rows = []
    for language in args.languages:
        rows += compress_and_score(args, language, out, FanOut(ConsoleSink()) if args.verbose else FanOut())
    result = summarise(rows, time.monotonic() - began)
    print(json.dumps(result), flush=True)
    print(table(rows, result))


def compress(args: argparse.Namespace, language: str, out: Path, sink) -> Path:
    """Run the recipe's stages (or the planned ones) on `language`'s text (see the module docstring); the run
    folder."""
    from engine import pipeline
    from engine.configs import CorpusConfig, LanguageConfig
    from engine.recipe import Recipe

    spec = LANGUAGES[language]
    corpus = [str(SHARED / pattern) for pattern in spec["corpus"]]
    if args.corpus_mb:
        corpus = [str(head_bytes(corpus, int(args.corpus_mb * 1e6), out / f"{language}-{args.corpus_mb}mb.txt"))]
    corpus += [str(train_texts(task, SHARED / data, out / f"{language}-{data}-train.txt"))
               for task, data in spec["extra_train_texts"]]
    recipe = Recipe.load(args.recipe)
    recipe = recipe.replace(
        language=LanguageConfig(spec["code"]),
        corpus=CorpusConfig(train=tuple(corpus), validation=recipe.corpus.validation,
                            max_length=recipe.corpus.max_length),
        run=dataclasses.replace(recipe.run, runs_dir=str(out / "runs"), name=f"quality-{language}"),
        evaluation=None)
    if args.plan_params:
        recipe = planned(recipe, args, out / f"planned-{language}.toml", sink)
    return pipeline.run(recipe, sink)


def planned(recipe, args: argparse.Namespace, target: Path, sink):
    """The planner's recipe for `recipe`'s corpus at `args.plan_params` parameters; its minutes are printed."""
    from engine.models.loading import source_shape
    from engine.planner import plan
    from engine.recipe import Recipe

    began = (time.monotonic(), time.process_time())
    result = plan(recipe.resolved(), source_shape(recipe.teacher.source), args.plan_params, target, sink,
                  budget_minutes=args.plan_minutes)
    print(json.dumps({"plan": str(target), "winner": result["winner"], "trials": sum(
        row["status"] == "tried" for row in result["candidates"]), "wall_minutes": round(
        (time.monotonic() - began[0]) / 60, 2), "cpu_minutes": round((time.process_time() - began[1]) / 60, 2),
        "candidates": [{k: row.get(k) for k in ("name", "params", "fidelity")} for row in result["candidates"]]}),
        flush=True)
    return Recipe.load(target)


def head_bytes(files: list[str], size: int, target: Path) -> Path:
    """The first `size` bytes (whole lines) of the files matched by `files`, in name order, as one file."""
    import glob

    names = sorted(path for pattern in files for path in glob.glob(pattern))
    kept, total = [], 0
    for line in (line for name in names for line in Path(name).read_text(encoding="utf-8").splitlines()):
        total += len(line.encode("utf-8")) + 1
        if total > size:
            break
        kept.append(line)
    target.write_text("\n".join(kept) + "\n", encoding="utf-8")
    return target


def compress_and_score(args: argparse.Namespace, language: str, out: Path, console) -> list[dict]:
    from engine.configs import EvaluationConfig
    from engine.evaluate.report import headline
    from engine.evaluate.runner import EvalPlan, evaluate, run_models
    from engine.events import FanOut
    from engine.runfolder import RunFolder

    spec = LANGUAGES[language]
    clock = StageClock()
    run_dir = compress(args, language, out, FanOut(console, clock))
    config = EvaluationConfig(tasks=tuple(task for task, _ in spec["tasks"]),
                              data=tuple(str(SHARED / data) for _, data in spec["tasks"]), seeds=1, mode="probe",
                              speed=False, intrinsic=False)
    plan = EvalPlan(tuple(run_models(run_dir)), config)
    began = time.monotonic()
    summary = evaluate(plan, out / f"eval-{language}", console)
    probe_minutes = (time.monotonic() - began) / 60
    folder = RunFolder(run_dir)
    manifest = folder.manifest().data
    scores = {(r["model"], r["task"]): r["mean"] for r in summary["results"] if r["metric"] == headline(r["task"])}
    teacher_params = manifest["teacher"]["params"]
    rows = []
    names = ["teacher", *(stage.name for stage in folder.stage_models(manifest))]
    for index, name in enumerate(names):
        stage = manifest["stages"][index - 1] if index else {}
        params = stage.get("params", teacher_params)
        task_scores = {f"{task}@{language}": scores[name, task] for task, _ in spec["tasks"]}
        retained = {key: value / scores["teacher", key.split("@")[0]] for key, value in task_scores.items()}
        seconds = clock.seconds.get(index, {"wall": 0.0, "cpu": 0.0})
        row = {"language": language, "stage": name, "params": params,
               "percent_of_teacher": round(100 * params / teacher_params, 2), "scores": task_scores,
               "retained": retained, "fidelity": (stage.get("quality") or {}).get("fidelity"),
               "cpu_minutes": round(seconds["cpu"] / 60, 2), "wall_minutes": round(seconds["wall"] / 60, 2),
               "run_dir": str(run_dir)}
        if index == len(names) - 1:
            row["probe_minutes"] = round(probe_minutes, 2)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def train_texts(task: str, data: Path, target: Path) -> Path:
    """The texts of a classification data set's train split as a corpus file (labels dropped)."""
    from engine.data.tasks import load_task

    texts = [example.text.replace("\n", " ") for example in load_task(task, data).train]
    target.write_text("\n".join(texts) + "\n", encoding="utf-8")
    return target


def summarise(rows: list[dict], seconds: float) -> dict:
    final = {}
    for language in dict.fromkeys(r["language"] for r in rows):
        own = [r for r in rows if r["language"] == language]
        final[language] = own[-1]
    retained = [v for row in final.values() for v in row["retained"].values()]
    first_stage = {lang: next(r for r in rows if r["language"] == lang and r["stage"].endswith("distill"))
                   for lang in final}
    first_retained = [v for row in first_stage.values() for v in row["retained"].values()]
    compression = {lang: round(sum(r["cpu_minutes"] for r in rows if r["language"] == lang), 2) for lang in final}
    return {"summary": True,
            "final_params": {lang: row["params"] for lang, row in final.items()},
            "final_percent_of_teacher": {lang: row["percent_of_teacher"] for lang, row in final.items()},
            "final_retained_mean": sum(retained) / len(retained), "final_retained_min": min(retained),
            "first_distilled_stage_retained_mean": sum(first_retained) / len(first_retained),
            "compression_cpu_minutes": compression,
            "compression_wall_minutes": {lang: round(sum(r["wall_minutes"] for r in rows if r["language"] == lang),
                                                     2) for lang in final},
            "total_wall_minutes": round(seconds / 60, 2)}


def table(rows: list[dict], result: dict) -> str:
    tasks = list(dict.fromkeys(t for r in rows for t in r["scores"]))
    header = f"{'stage':<22}{'params':>12}{'% teacher':>10}" + "".join(f"{t:>22}" for t in tasks) + f"{'CPU min':>9}"
    lines = [header]
    for r in rows:
        cells = "".join(f"{100 * r['scores'][t]:>12.1f} ({100 * r['retained'][t]:5.1f}%)" if t in r["scores"]
                        else f"{'':>22}" for t in tasks)
        lines.append(f"{r['language'] + ' ' + r['stage']:<22}{r['params']:>12,}{r['percent_of_teacher']:>9.1f}%"
                     f"{cells}{r['cpu_minutes']:>9.1f}")
    lines.append(f"final students keep {100 * result['final_retained_mean']:.1f}% of the teacher on average "
                 f"(lowest task {100 * result['final_retained_min']:.1f}%); the first distilled stage keeps "
                 f"{100 * result['first_distilled_stage_retained_mean']:.1f}%; compression CPU minutes "
                 f"{result['compression_cpu_minutes']}; {result['total_wall_minutes']:.1f} min in all")
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    from engine.resources import DEFAULT_RECIPE

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", type=Path, default=DEFAULT_RECIPE,
                        help="the stages to benchmark (its corpus and language are replaced)")
    parser.add_argument("--languages", nargs="+", choices=tuple(LANGUAGES), default=list(LANGUAGES))
    parser.add_argument("--corpus-mb", type=float, default=0, metavar="M",
                        help="compress on the first M MB of each language's running text only")
    parser.add_argument("--plan-params", type=int, default=0, metavar="N",
                        help="plan the stages for at most N parameters on each language's corpus first")
    parser.add_argument("--plan-minutes", type=float, default=20.0, metavar="B", help="the planner's time budget")
    parser.add_argument("--out", type=Path, help="where runs and probe results go (default bench/out/quality-*)")
    parser.add_argument("--verbose", action="store_true", help="training progress on stderr")
    return parser.parse_args()


if __name__ == "__main__":
    main()
