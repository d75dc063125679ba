"""`miniglot-cli run|estimate|plan|eval|finetune|inspect|export|stages`: the engine from a terminal or a GPU server.

Exit codes: 0 done, 1 failed (one-line reason on stderr), 2 invalid recipe or arguments (then
nothing was started), 130 / 143 cancelled by Ctrl-C / SIGTERM (cooperatively, after the current step; the
run can be resumed; a second signal stops at once).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import signal
import sys
from pathlib import Path

from engine.configs import EVAL_MODES, EVAL_TASKS, EvaluationConfig, TaskModelConfig
from engine.cost import SENTENCE_TOKENS, Device
from engine.errors import MiniGlotError, RecipeError
from engine.estimate import estimate, stage_costs
from engine.evaluate.report import markdown
from engine.evaluate.runner import EvalPlan, evaluate, run_models, source_models
from engine.events import CancelToken, ConsoleSink, FanOut
from engine.planner import VOCABULARIES
from engine.resources import load_recipe
from engine.runfolder import RunFolder
from engine.stages.registry import specs
from engine.tasks import TASKS, TRAINABLE


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    parser = argparse.ArgumentParser(prog="miniglot-cli", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="compress a teacher as a recipe says")
    run.add_argument("recipe", nargs="?", help="recipe .toml/.json, or preset:<name> (runs then go to ./runs); "
                                               "not needed with --resume")
    run.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue a killed or cancelled run")
    run.add_argument("--runs-dir", type=Path, metavar="DIR", help="where the run folder goes (default: the recipe's)")
    run.add_argument("--quiet", action="store_true", help="no progress on stderr")

    estimate = commands.add_parser("estimate", help="parameters, bytes, peak memory and time per stage, "
                                                    "without training")
    estimate.add_argument("recipe", help="recipe .toml/.json, or preset:<name> (e.g. preset:offline-default)")
    estimate.add_argument("--device", help="device to estimate for (default: the recipe's run.device)")
    estimate.add_argument("--tokens-per-sentence", type=int,
                          help="typical sentence length in tokens, for the time estimate (default 40)")
    estimate.add_argument("--json", action="store_true")

    planner = commands.add_parser("plan", help="fit a recipe to a size target: candidate allocations tried with "
                                               "short runs on its corpus, the best written as a recipe")
    planner.add_argument("recipe", help="recipe .toml/.json, or preset:<name>: its teacher, language, corpus and "
                                        "stage settings")
    target = planner.add_mutually_exclusive_group(required=True)
    target.add_argument("--target-params", type=int, metavar="N", help="at most N parameters")
    target.add_argument("--target-mb", type=float, metavar="M", help="at most M MB of fp32 weights (10^6 bytes)")
    planner.add_argument("--budget-minutes", type=float, default=20.0, metavar="B",
                         help="no new trial starts once B minutes are spent (default 20; at least one trial runs)")
    planner.add_argument("--probe", metavar="TASK=DATA",
                         help="rank by a linear probe's dev score on labelled data (e.g. ner=path/to/masakhaner) "
                              "instead of label-free fidelity, and try every depth and layer selection (fidelity "
                              "keeps the recipe's own)")
    planner.add_argument("--vocabularies", nargs="+", type=int, default=list(VOCABULARIES), metavar="V",
                         help="vocabulary sizes to try (default 8000 16000 32000)")
    planner.add_argument("--out", required=True, type=Path, metavar="PLANNED.toml",
                         help="the winning recipe; trials and the candidate table go to PLANNED.plan/")
    planner.add_argument("--json", action="store_true", help="print the candidate table as one JSON object")
    planner.add_argument("--quiet", action="store_true", help="no progress on stderr")

    inspect = commands.add_parser("inspect", help="describe a model folder or teacher source")
    inspect.add_argument("model", help="model folder, packaged:<name> or hub:<id>")
    inspect.add_argument("--json", action="store_true")

    evaluate = commands.add_parser("eval", help="fine-tune and score models on a downstream task")
    which = evaluate.add_mutually_exclusive_group(required=True)
    which.add_argument("--models", nargs="+", metavar="M", help="model folders or teacher sources (first = reference)")
    which.add_argument("--run", type=Path, metavar="RUN_DIR", help="the teacher and every stage student of a run")
    evaluate.add_argument("--task", action="append", required=True, choices=EVAL_TASKS,
                          help="repeat --task/--data for several tasks: "
                               + "; ".join(f"{t.name}, {t.title}" for t in TASKS.values()))
    evaluate.add_argument("--data", action="append", required=True, metavar="PATH_OR_HUB_ID")
    evaluate.add_argument("--seeds", type=int, default=3)
    evaluate.add_argument("--epochs", type=int, default=0, help="0: the task's default")
    evaluate.add_argument("--mode", choices=EVAL_MODES, default="full",
                          help="full: fine-tune every model; probe: linear probes on frozen features (minutes)")
    evaluate.add_argument("--text-column", default="", metavar="NAME",
                          help="classification tables: the column holding the text (default: by name)")
    evaluate.add_argument("--label-column", default="", metavar="NAME",
                          help="classification tables: the column holding the label (default: by name)")
    evaluate.add_argument("--learning-rate", type=float, default=0.0, help="0: the task's default")
    evaluate.add_argument("--out", type=Path, help="results folder (default: RUN_DIR/eval, or ./eval)")
    evaluate.add_argument("--no-speed", action="store_true", help="skip the latency/throughput measurement")
    evaluate.add_argument("--no-intrinsic", action="store_true", help="skip teacher–student fidelity")
    evaluate.add_argument("--json", action="store_true", help="print the results as one JSON object")
    evaluate.add_argument("--quiet", action="store_true", help="no progress on stderr")

    finetune = commands.add_parser("finetune", help="train a task model to ship (NER/POS tagger, classifier), "
                                                    "optionally task-distilled from a fine-tuned teacher")
    finetune.add_argument("model", help="the encoder: a stage's model/ folder, packaged:<name>, hub:<id> or a folder")
    finetune.add_argument("--task", required=True, choices=TRAINABLE,
                          help="; ".join(f"{t.name}, {t.title}" for t in TASKS.values() if t.trainable))
    finetune.add_argument("--data", required=True, metavar="PATH_OR_HUB_ID",
                          help="a file, a folder with train/dev/test files, or hub:<dataset>[:<config>]")
    finetune.add_argument("--out", required=True, type=Path, metavar="DIR",
                          help="the task model folder (stock Hugging Face; an earlier task model there is replaced)")
    finetune.add_argument("--teacher", metavar="TASK_MODEL",
                          help="a fine-tuned task model (e.g. made by this command) whose predictions the model "
                               "also learns")
    finetune.add_argument("--unlabelled", nargs="+", default=[], metavar="PATH",
                          help="in-language text files (one text per line) the teacher labels for the model to learn")
    finetune.add_argument("--epochs", type=int, default=0, help="0: the task's default (early stopping on dev)")
    finetune.add_argument("--learning-rate", type=float, default=0.0, help="0: the task's default for the width")
    finetune.add_argument("--seed", type=int, default=0)
    finetune.add_argument("--temperature", type=float, default=TaskModelConfig.temperature,
                          help="softens the teacher's predictions")
    finetune.add_argument("--alpha", type=float, default=TaskModelConfig.alpha,
                          help="weight of the gold labels (1 - alpha on the teacher's predictions)")
    finetune.add_argument("--unlabelled-ratio", type=float, default=TaskModelConfig.unlabelled_ratio, metavar="R",
                          help="unlabelled texts per train text in each epoch")
    finetune.add_argument("--text-column", default="", metavar="NAME")
    finetune.add_argument("--label-column", default="", metavar="NAME")
    finetune.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu or cuda")
    finetune.add_argument("--json", action="store_true", help="print the result as one JSON object")
    finetune.add_argument("--quiet", action="store_true", help="no progress on stderr")

    export = commands.add_parser("export", help="write a model folder (an encoder, or a task model with its "
                                                "head) as ONNX (optionally int8 too), checked against PyTorch")
    export.add_argument("model", help="model folder (e.g. a stage's model/), packaged:<name> or hub:<id>")
    export.add_argument("--onnx", action="store_true", help="export to ONNX (the one format so far)")
    export.add_argument("--int8", action="store_true", help="also write model.int8.onnx (dynamic int8 quantization)")
    export.add_argument("--out", type=Path, metavar="DIR",
                        help="output folder (default: MODEL-onnx beside the model folder); an earlier export "
                             "there is replaced")

    stages = commands.add_parser("stages", help="the stage kinds a recipe can use, with their settings")
    stages.add_argument("--json", action="store_true")

    args = parser.parse_args(argv)
    try:
        handlers = {"run": _run, "estimate": _estimate, "plan": _plan, "inspect": _inspect, "eval": _eval,
                    "finetune": _finetune, "export": _export, "stages": _stages}
        return handlers[args.command](args)
    except MiniGlotError as exc:
        print(f"miniglot-cli: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:  # the reader stopped early (`miniglot-cli stages | head`): nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:
        print(f"miniglot-cli: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return 1


def _run(args) -> int:

    if args.recipe is None and args.resume is None:
        raise RecipeError("give a recipe file, or --resume RUN_DIR to continue a run")
    if args.resume is not None and args.runs_dir is not None:
        raise RecipeError("--runs-dir is for new runs; a resumed run stays in its own folder")
    recipe = load_recipe(args.recipe) if args.recipe else None  # the pipeline checks it before writing
    if recipe is not None and args.runs_dir is not None:
        recipe = recipe.replace(run=dataclasses.replace(recipe.run, runs_dir=str(args.runs_dir.resolve())))

    from engine import pipeline
    token, signals = _cancel_on_signals()
    sink = FanOut() if args.quiet else FanOut(ConsoleSink())
    try:
        run_dir = pipeline.run(recipe, sink, token, resume=args.resume)
    except MiniGlotError as exc:
        if signals:  # cancelled by a signal: 128 + its number, as shells and schedulers expect
            print(f"miniglot-cli: {exc}", file=sys.stderr)
            return 128 + signals[0]
        raise
    print(run_dir)
    return 0


def _plan(args) -> int:
    from engine.models.loading import source_shape
    from engine.planner import Probe, plan

    recipe = load_recipe(args.recipe).resolved()
    probe = None
    if args.probe is not None:
        task, _, data = args.probe.partition("=")
        if task not in EVAL_TASKS or not data:
            raise RecipeError(f"--probe {args.probe}: write TASK=DATA with TASK one of {', '.join(EVAL_TASKS)}")
        probe = Probe(task, data)
    target = args.target_params if args.target_params is not None else int(args.target_mb * 1e6 / 4)
    teacher = source_shape(recipe.teacher.source, recipe.teacher.allow_pickle)
    token, _ = _cancel_on_signals()
    result = plan(recipe, teacher, target, args.out, FanOut() if args.quiet else FanOut(ConsoleSink()), token,
                  args.budget_minutes, probe, tuple(args.vocabularies))
    if args.json:
        print(json.dumps(result))
        return 0
    by = result["ranked_by"]
    print(f"{'candidate':<36}{'parameters':>13}{by:>11}")
    for row in result["candidates"]:
        score = f"{row[by]:.4f}" if row["status"] == "tried" else "not tried"
        print(f"{row['name']:<36}{row['params']:>13,}{score:>11}" + ("  ← winner" if row["name"] == result["winner"]
                                                                    else ""))
    if result["rank_correlation"] is not None:
        print(f"Spearman rank correlation of fidelity with the probe: {result['rank_correlation']:.2f}")
    print(args.out)
    return 0


def _cancel_on_signals():
    """A CancelToken that the first Ctrl-C or SIGTERM sets, and the signals received; a second one stops at once."""

    token, received = CancelToken(), []

    def interrupt(signum, _frame):
        received.append(signum)
        if token.cancelled:
            raise KeyboardInterrupt
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        print(f"miniglot-cli: {name}: cancelling after the current step (again to stop at once); "
              "the run can be resumed", file=sys.stderr)
        token.cancel()

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, interrupt)
    return token, received


def _eval(args) -> int:

    config = EvaluationConfig(tasks=tuple(args.task), data=tuple(args.data), seeds=args.seeds, epochs=args.epochs,
                              mode=args.mode, learning_rate=args.learning_rate, intrinsic=not args.no_intrinsic,
                              speed=not args.no_speed, text_column=args.text_column, label_column=args.label_column)
    models = run_models(args.run) if args.run else source_models(args.models)
    out = args.out or (RunFolder(args.run).eval_dir if args.run else Path("eval"))
    plan = EvalPlan(tuple(models), config)
    token, _ = _cancel_on_signals()
    summary = evaluate(plan, out, FanOut() if args.quiet else FanOut(ConsoleSink()), token)
    if args.json:
        print(json.dumps({"results": summary["results"], "models": summary["models"]}))
    else:
        print(markdown(summary))
        print(f"results: {out}")
    return 0


def _finetune(args) -> int:
    from engine.taskmodel import build_task_model
    from engine.training.precision import pick_device

    if args.unlabelled and not args.teacher:
        raise RecipeError("--unlabelled texts are labelled by a teacher: give --teacher TASK_MODEL too")
    config = TaskModelConfig(task=args.task, data=args.data, distill=args.teacher is not None,
                             unlabelled=tuple(args.unlabelled), epochs=args.epochs, learning_rate=args.learning_rate,
                             seed=args.seed, temperature=args.temperature, alpha=args.alpha,
                             unlabelled_ratio=args.unlabelled_ratio,
                             text_column=args.text_column, label_column=args.label_column)
    token, signals = _cancel_on_signals()
    try:
        sink = FanOut() if args.quiet else FanOut(ConsoleSink())
        facts = build_task_model(args.model, config, args.out.resolve(), sink, teacher=args.teacher,
                                 device=str(pick_device(args.device)), token=token)
    except MiniGlotError as exc:
        if signals:
            print(f"miniglot-cli: {exc}", file=sys.stderr)
            return 128 + signals[0]
        raise
    if args.json:
        print(json.dumps({k: facts[k] for k in ("out", "task", "headline", "dev", "test", "teacher_test", "params",
                                                 "seconds", "distilled") if k in facts}))
    else:
        metric = facts["headline"]
        teacher = f" (teacher {facts['teacher_test'][metric]:.4f})" if facts.get("teacher_test") else ""
        print(f"{facts['out']}\n  {facts['task']}: test {metric} {facts['test'][metric]:.4f}{teacher}, "
              f"dev {facts['dev'][metric]:.4f}; {facts['params']:,} parameters; {facts['seconds'] / 60:.1f} min")
    return 0


def _estimate(args) -> int:
    from engine.models.loading import source_shape

    recipe = load_recipe(args.recipe).resolved()
    teacher = source_shape(recipe.teacher.source, recipe.teacher.allow_pickle)
    rows = estimate(recipe, teacher)
    device = Device.probe(args.device or recipe.run.device, recipe.run.precision)
    sentence_tokens = args.tokens_per_sentence or SENTENCE_TOKENS
    costs = stage_costs(recipe, teacher, device, sentence_tokens)
    if args.json:
        print(json.dumps({"stages": rows, "device": dataclasses.asdict(device), "costs": costs}, indent=2))
        return 0
    print(f"{'stage':<16}{'embeddings':>14}{'encoder':>14}{'head':>12}{'total':>14}{'fp32 MB':>10}"
          f"{'fp16 MB':>10}{'% teacher':>11}")
    for row in rows:
        p = row["params"]
        print(f"{row['name']:<16}{p['embeddings']:>14,}{p['encoder']:>14,}{p['head']:>12,}"
              f"{row['total_params']:>14,}{row['fp32_bytes'] / 1e6:>10.1f}{row['fp16_bytes'] / 1e6:>10.1f}"
              f"{row['percent_of_teacher']:>10.1f}%")
    print(f"\non {device.name}: {device.free_bytes / 2**30:.1f} GiB free, "
          f"{device.matmul_flops / 1e9:.0f} GFLOP/s measured; time assumes ~{sentence_tokens} tokens "
          f"per sentence, memory sentences of {recipe.corpus.max_length}")
    print(f"{'stage':<16}{'peak GiB':>10}{'time':>10}  fits")
    for cost in costs:
        print(f"{cost['name']:<16}{cost['peak_bytes'] / 2**30:>10.2f}{_duration(cost['seconds']):>10}  "
              + ("yes" if cost["fits"] else "NO: lower batch_size or corpus.max_length, or use a larger device"))
    print(f"{'total':<16}{max(c['peak_bytes'] for c in costs) / 2**30:>10.2f}"
          f"{_duration(sum(c['seconds'] for c in costs)):>10}")
    return 0


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _inspect(args) -> int:
    from engine.models.loading import inspect_folder, resolve_source, tokenizer_entries

    path = resolve_source(args.model)
    info = inspect_folder(path, allow_pickle=False)
    shape = info.shape()
    data = {"path": str(path), "model_type": info.config.model_type, "mlm_head": info.mlm_head,
            "pooler": info.pooler, "shape": shape.__dict__, "params": shape.params(),
            "total_params": shape.total_params}
    entries = tokenizer_entries(path)
    if entries is not None:
        data["tokenizer"] = {"type": entries[0], "size": entries[1], "fits": entries[1] <= info.config.vocab_size}
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print(f"{path}\n  {info.config.model_type}: {shape.describe()}\n  parameters {shape.total_params:,} "
              f"(embeddings {data['params']['embeddings']:,}, encoder {data['params']['encoder']:,}, "
              f"head {data['params']['head']:,})\n  MLM head: {'yes' if info.mlm_head else 'no'}; "
              f"pooler: {'yes' if info.pooler else 'no'}"
              + (f"\n  tokenizer: {data['tokenizer']['type']}, {data['tokenizer']['size']:,} entries"
                 if "tokenizer" in data else ""))
    if not data.get("tokenizer", {}).get("fits", True):
        print(f"miniglot-cli: the tokenizer has {entries[1]:,} entries but the model only {info.config.vocab_size:,} "
              "embedding rows: they do not belong together", file=sys.stderr)
        return 1
    return 0


def _stages(args) -> int:
    """Every registered stage: what it does and each setting's default, range and what the paper found."""

    listing = [{"kind": spec.kind, "title": spec.title, "tip": spec.tip,
                "settings": {f.name: dataclasses.asdict(f) | {"default": getattr(spec.template, f.name)}
                             for f in spec.fields}} for spec in specs()]
    if args.json:
        print(json.dumps(listing, indent=2))
        return 0
    for stage in listing:
        print(f"[[stages]] kind = \"{stage['kind']}\" — {stage['title']}\n  " + stage["tip"].replace("\n", "\n  "))
        for name, field in stage["settings"].items():
            number = ",.0f" if field["kind"] in ("int", "optional_int") else "g"
            span = f" ({field['low']:{number}}–{field['high']:{number}})" if field["high"] else ""
            span = f" ({' | '.join(field['choices'])})" if field["choices"] else span
            print(f"    {name} = {field['default']!r}{span}: {_whole_sentences(field['tip'])}")
        print()
    return 0


def _whole_sentences(tip: str) -> str:
    """A tip's first line, carried on to the end of the sentence it breaks off in."""
    line, _, rest = tip.partition("\n")
    if not rest.strip() or line.rstrip().endswith((".", "!", "?")):
        return line
    rest = " ".join(rest.split())
    end = re.search(r"[.!?](\s|$)", rest)
    return f"{line} {rest[:end.start() + 1] if end else rest}"


def _export(args) -> int:
    from engine.export import export_onnx, summary_lines

    if not args.onnx:
        raise RecipeError("choose what to export: --onnx (optionally with --int8)")
    report = export_onnx(args.model, args.out, int8=args.int8)
    print(report["out"])
    for line in summary_lines(report):
        print(f"  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
