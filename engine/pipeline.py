"""Runs a recipe's stages in order and keeps the run folder (DESIGN.md §2) true at every moment.

Each stage's model is written to a temporary folder, verified by a reload in a fresh process,
and only then renamed into `stages/NN-kind/model/`. Resume skips completed stages and continues
the interrupted one from its last checkpoint.

The recipe's `[[task_models]]` follow the stages as further steps (numbered after them): for a distilled
one, the teacher fine-tuned on the task (`tasks/<task>/teacher/`, kept while its data and seed are the
same), then the last stage's model fine-tuned into `tasks/<task>/model/`. Resume skips completed ones
and redoes an interrupted one (the teacher's predictions are cached in `tasks/<task>/`).
"""

from __future__ import annotations

import dataclasses
import json
import platform
import random
import traceback
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine import __version__
from engine.configs import TaskModelConfig
from engine.data.corpus import derive_seed, long_lines_warning, open_corpus, split_validation, take
from engine.data.parallel import ParallelData, read_pairs
from engine.data.tasks import Columns, TaskData, load_task
from engine.distributed import Distributed
from engine.errors import Cancelled, MiniGlotError, ModelError, RecipeError, TaskDataError
from engine.estimate import stage_shapes
from engine.evaluate.intrinsic import GATED, quality_drops
from engine.evaluate.retrieval import PROMPT as RETRIEVAL_PROMPT
from engine.evaluate.retrieval import rank_scores
from engine.events import (
    Artifact,
    CancelToken,
    EventSink,
    Failure,
    FanOut,
    JsonlSink,
    Log,
    QualityWarning,
    RunFinished,
    RunStarted,
    StageFinished,
    StageStarted,
)
from engine.modelcard import write_card
from engine.models.embedder import Embedder, TeacherMap, embed, fit_teacher_map, read_embedder, write_embedder
from engine.models.loading import (
    LoadedModel,
    load_model,
    load_teacher,
    resolve_source,
    source_shape,
    strip_remote_code,
    weight_bytes,
)
from engine.recipe import Recipe
from engine.runfolder import FULL_DISK, DiskFull, Manifest, RunFolder, atomic_dir, folder_bytes, saving
from engine.seeding import seed_everything
from engine.shapes import Shape
from engine.stages.base import StageContext
from engine.stages.registry import spec_for
from engine.taskmodel import TASK_FILE, build_task_model
from engine.training.checkpoints import Checkpoints
from engine.training.precision import Precision, pick_device
from engine.verify import verify_folder

MAP_TEXTS = 4000  # training lines each stage's map onto the teacher's sentence embeddings is fitted on (README)
HELD_OUT_TEXTS = 1000  # validation lines the reload check and the stage's quality read (they use at most 200)


def run(recipe: Recipe | None, sink: EventSink, token: CancelToken | None = None,
        resume: Path | None = None) -> Path:
    """Run `recipe` (or resume the run folder `resume`); returns the run folder's absolute path.

    With both, `recipe` must equal the run's own recipe. Everything that can be checked without
    training (recipe, teacher, device, corpus) is checked before a new run folder is created; the run
    folder is locked for the whole run, so a second writer is refused. Raises MiniGlotError
    subclasses (Cancelled on cancel) after recording the outcome in the manifest and the event log.
    """
    token = token or CancelToken()
    dist = Distributed.from_env()
    if resume is not None:
        folder = RunFolder.open(resume)
        saved = Recipe.load(folder.recipe_file)
        if recipe is not None and (changed := saved.differences(recipe)):
            raise RecipeError(f"this recipe is not the one {folder.path} was started with "
                              f"(run's -> given: {'; '.join(changed[:5])}); resume with --resume alone")
        recipe, prepared = saved, None
    else:
        assert recipe is not None
        recipe = recipe.resolved()
        stage_shapes(recipe, source_shape(recipe.teacher.source, recipe.teacher.allow_pickle))
        prepared = _prepare(recipe, dist)
        created = RunFolder.create(Path(recipe.base_dir) / recipe.run.runs_dir, recipe.run.name) \
            if dist.is_main else None
        folder = RunFolder(dist.broadcast(str(created.path) if created else None))
    with folder.lock() if dist.is_main else nullcontext():
        if resume is not None:
            if dist.is_main:
                folder.remove_leftovers()
            manifest = folder.manifest()
        else:
            if dist.is_main:
                recipe.save(folder.recipe_file)
            manifest = Manifest(folder.path)
        manifest.writable = dist.is_main
        _run_stages(recipe, folder, manifest, sink, token, dist, prepared)
    return folder.path


def _prepare(recipe: Recipe, dist: Distributed) -> tuple[torch.device, Precision, Sequence[str], Sequence[str]]:
    """Device, precision and corpus: what a run needs before it trains (each may fail with a clear error)."""
    device = pick_device(recipe.run.device, dist)
    precision = Precision.for_run(recipe.run.precision, device)
    train, validation = load_corpus(recipe)
    _parallel(recipe)
    for i, config in enumerate(recipe.task_models, start=1):
        try:
            _task_data(config)
        except TaskDataError as exc:
            raise TaskDataError(f"task_models[{i}] ({config.task}): {exc}") from None
    return device, precision, train, validation


@dataclasses.dataclass(frozen=True)
class TaskStep:
    """A step after the stages: fine-tuning the recipe's teacher on a task (for distillation), or building
    the task model itself from the last stage's model."""

    config: TaskModelConfig
    teacher: bool

    @property
    def name(self) -> str:
        return f"task:{self.config.task}" + (" teacher" if self.teacher else "")


def task_steps(recipe: Recipe) -> list[TaskStep]:
    """The steps of the recipe's task models, in order (each distilled one's teacher first)."""
    return [TaskStep(config, teacher) for config in recipe.task_models
            for teacher in ((True, False) if config.distill else (False,))]


def _run_stages(recipe: Recipe, folder: RunFolder, manifest: Manifest, sink: EventSink, token: CancelToken,
                dist: Distributed, prepared: tuple | None) -> None:
    """The stages in order, each saved, verified and recorded, then the task models; completed ones are skipped."""
    run_dir, resumed = folder.path, prepared is None
    sink = FanOut(sink, JsonlSink(folder.events_file)) if dist.is_main else FanOut()  # only rank 0 writes
    steps = task_steps(recipe)
    names = [s.kind for s in recipe.stages] + [step.name for step in steps]  # indices 1, 2, …: stages, then tasks
    sink.emit(RunStarted(run_dir=str(run_dir), stages=tuple(names), resumed=resumed))
    manifest.update(status="running", message="", **({} if resumed else _provenance(recipe)))
    current_index = 0
    try:
        seed_everything(recipe.run.seed)
        device, precision, train, validation = prepared or _prepare(recipe, dist)
        teacher = load_teacher(recipe.teacher.source, recipe.teacher.allow_pickle)
        teacher_shape = shape_of(teacher)  # the recipe was checked against it before the run folder existed
        sink.emit(Log(message=f"teacher {recipe.teacher.source}: {teacher_shape.describe()}, "
                              f"{count_params(teacher.model):,} parameters; corpus {len(train):,} training "
                              f"and {len(validation):,} validation lines; device {device}, {precision.name}"))
        if warning := long_lines_warning(train, teacher.tokenizer, recipe.corpus.max_length, recipe.run.seed):
            sink.emit(Log(message=warning, level="warning"))
        if not resumed:
            manifest.update(teacher={"source": recipe.teacher.source, "params": count_params(teacher.model),
                                     "shape": dataclasses.asdict(teacher_shape)},
                            corpus={"train_lines": len(train), "validation_lines": len(validation)},
                            stages=[{"kind": s.kind, "status": "pending"} for s in recipe.stages],
                            task_models=[{"task": c.task, "status": "pending"} for c in recipe.task_models])
        current, original, reference = teacher, teacher, teacher
        # a sentence embedder's layout, carried into every stage folder
        embedder = _embedder(recipe, sink) if recipe.run.sentence_layout else None
        # the retrieval scores and the maps onto the teacher's space are computed by the main process alone
        retrieval = _Retrieval.of(recipe, teacher, embedder) if dist.is_main else None
        space = _TeacherSpace.of(recipe, teacher, embedder, train) if (embedder or retrieval) and dist.is_main else None
        if retrieval is not None and not resumed:
            manifest.update(teacher={**manifest.data["teacher"], "retrieval": retrieval.teacher_scores})
        previous = {"fidelity": 1.0} | ({"retrieval_top1": retrieval.teacher_scores["top1"]} if retrieval else {})
        for index, stage in enumerate(recipe.stages, start=1):
            current_index = index
            stage_folder = folder.stage_dir(index, stage.kind)
            if manifest.stage_status(index) == "completed" and (stage_folder / "model").is_dir():
                try:
                    current = load_model(stage_folder / "model", source=str(stage_folder / "model"))
                except ModelError as exc:
                    raise ModelError(f"stage {index} ({stage.kind}) has a damaged model: {exc}. Delete "
                                     f"{stage_folder / 'model'} and resume to train that stage again") from None
                teacher = current if _still_teacher(recipe, index) else teacher
                reference = current if spec_for(stage.kind).reference else reference
                previous = manifest.data["stages"][index - 1].get("quality") or previous
                sink.emit(StageFinished(index=index, stage=stage.kind, status="skipped"))
                continue
            sink.emit(StageStarted(index=index, stage=stage.kind, total_steps=getattr(stage, "max_steps", 0)))
            manifest.set_stage(index, status="running")
            ctx = StageContext(index, stage, recipe, current, teacher, train, validation, device, precision, sink,
                               token, Checkpoints(stage_folder / "checkpoint"), dist, reference)
            output = spec_for(stage.kind).run(ctx)
            token.raise_if_cancelled()
            model_dir, params, check = stage_folder / "model", count_params(output.model.model), {}
            to_teacher = space.fit(output.model) if space is not None else None
            quality = _quality(ctx, original, output.model, retrieval, to_teacher) if dist.is_main else {}
            warnings = _gate(ctx, previous, quality) if dist.is_main else []
            manifest.set_stage(index, quality=quality, warnings=warnings)  # the model card states the fidelity
            previous = quality
            if dist.is_main:
                with atomic_dir(model_dir) as tmp:
                    with saving(model_dir, weight_bytes(output.model.model)):
                        output.model.model.save_pretrained(tmp, safe_serialization=True)
                        output.model.tokenizer.save_pretrained(tmp)
                        strip_remote_code(tmp)
                        if embedder is not None:
                            write_embedder(tmp, embedder, output.model.model.config.hidden_size, to_teacher)
                        write_card(tmp, recipe, manifest, index, params)
                    check = verify_folder(tmp, output.model, validation[:HELD_OUT_TEXTS]) if recipe.run.verify else {}
            dist.barrier()
            size = folder_bytes(model_dir)
            sink.emit(Artifact(index=index, stage=stage.kind, path=str(model_dir), params=params, bytes=size))
            manifest.set_stage(index, status="completed", model_dir=str(model_dir.relative_to(run_dir)), params=params,
                               bytes=size, metrics=_jsonable(output.metrics), verification=check)
            if dist.is_main:
                ctx.checkpoints.clear()
            current = LoadedModel(output.model.model, output.model.tokenizer, output.model.adapter,
                                  str(model_dir))
            teacher = current if _still_teacher(recipe, index) else teacher
            reference = current if spec_for(stage.kind).reference else reference
            sink.emit(StageFinished(index=index, stage=stage.kind, status="completed"))
        final = folder.stage_dir(len(recipe.stages), recipe.stages[-1].kind) / "model"
        if dist.is_main:
            for current_index, step in enumerate(steps, start=len(recipe.stages) + 1):
                _task_step(step, recipe, folder, manifest, final, sink, token, str(device), current_index)
        current_index = 0
        if recipe.evaluation is not None and dist.is_main:
            manifest.update(evaluation=_evaluate(recipe, run_dir, sink, token))
    except BaseException as exc:
        status = "cancelled" if isinstance(exc, (Cancelled, KeyboardInterrupt)) else "failed"
        message = _explain(exc, run_dir)
        if status == "failed":
            sink.emit(Failure(message=message, traceback=traceback.format_exc(), index=current_index,
                              stage=names[current_index - 1] if current_index else ""))
        if current_index > len(recipe.stages):
            manifest.set_task_model(steps[current_index - len(recipe.stages) - 1].config.task, status=status)
        elif current_index:
            manifest.set_stage(current_index, status=status)
        manifest.update(status=status, message=message)
        if current_index:
            sink.emit(StageFinished(index=current_index, stage=names[current_index - 1], status=status))
        sink.emit(RunFinished(status=status, message=message))
        if isinstance(exc, KeyboardInterrupt):
            raise Cancelled("interrupted") from exc
        if isinstance(exc, OSError) and exc.errno in FULL_DISK:
            raise DiskFull(message) from exc
        raise
    finally:
        dist.close()
    manifest.update(status="completed", message="")
    sink.emit(RunFinished(status="completed"))


def _embedder(recipe: Recipe, sink: EventSink) -> Embedder | None:
    """The teacher's sentence-transformers layout, written into every stage folder (None: it has none)."""
    try:
        return read_embedder(resolve_source(recipe.teacher.source))
    except ModelError as exc:
        sink.emit(Log(message=f"the students will not be sentence-transformers models: {exc}", level="warning"))
        return None


def _task_step(step: TaskStep, recipe: Recipe, folder: RunFolder, manifest: Manifest, encoder: Path,
               sink: EventSink, token: CancelToken, device: str, index: int) -> None:
    """One task-model step as stage `index`: the teacher fine-tuned on the task (kept when its folder records
    the same data and seed), or the task model built from `encoder`; both skipped once the task model is."""
    config, home = step.config, folder.task_dir(step.config.task)
    teacher_dir, model_dir = home / "teacher", home / "model"
    token.raise_if_cancelled()
    if manifest.task_model(config.task).get("status") == "completed" and (model_dir / TASK_FILE).is_file():
        sink.emit(StageFinished(index=index, stage=step.name, status="skipped"))
        return
    manifest.set_task_model(config.task, status="running")
    if step.teacher:
        facts = _task_facts(teacher_dir)
        if facts.get("seed") == config.seed and facts.get("data_fingerprint") == _task_data(config).fingerprint():
            sink.emit(StageFinished(index=index, stage=step.name, status="skipped"))
        else:
            facts = build_task_model(recipe.teacher.source, dataclasses.replace(config, distill=False), teacher_dir,
                                     sink, device=device, index=index, name=step.name, token=token)
        manifest.set_task_model(config.task, teacher_dir=str(teacher_dir.relative_to(folder.path)),
                                teacher_test=facts["test"])
        return
    teacher = str(teacher_dir) if config.distill else None
    facts = build_task_model(str(encoder), config, model_dir, sink, teacher=teacher, corpus=recipe.corpus.train,
                             cache=home, device=device, index=index, name=step.name, token=token)
    manifest.set_task_model(config.task, status="completed", model_dir=str(model_dir.relative_to(folder.path)),
                            headline=facts["headline"], dev=facts["dev"], test=facts["test"], params=facts["params"],
                            bytes=folder_bytes(model_dir))


def _task_data(config: TaskModelConfig) -> TaskData:
    return load_task(config.task, config.data, seed=config.seed,
                     columns=Columns(config.text_column, config.label_column))


def _task_facts(model_dir: Path) -> dict[str, Any]:
    """What a task model folder's `miniglot_task.json` records; empty when it has none (not built, or damaged)."""
    try:
        facts = json.loads((model_dir / TASK_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return facts if isinstance(facts, dict) else {}


def _quality(ctx: StageContext, teacher: LoadedModel, student: LoadedModel, retrieval: _Retrieval | None,
             to_teacher: TeacherMap | None) -> dict[str, Any]:
    """The stage's label-free quality on held-out text (`stage_quality`; with `[corpus] parallel` its retrieval
    scores too, `retrieval_top1` and `retrieval_mrr`), also sent as metrics."""
    from engine.evaluate.intrinsic import stage_quality

    teacher.model.to(ctx.device)
    quality = stage_quality(teacher, student, ctx.validation_texts[:HELD_OUT_TEXTS])
    if retrieval is not None:
        quality |= {f"retrieval_{k}": v for k, v in retrieval.scores(student, to_teacher).items()}
    for name in ("fidelity", "masked_accuracy", "retrieval_top1", "retrieval_mrr"):
        if name in quality:
            ctx.metric(name, quality[name], split="validation")
    ctx.log(f"fidelity to the teacher {quality['fidelity']:.3f} (mean best layer CKA over {quality['tokens']:,} "
            "held-out tokens)" + (f", masked-token accuracy {quality['masked_accuracy']:.3f}"
                                  if "masked_accuracy" in quality else "")
            + (f", retrieval top-1 {quality['retrieval_top1']:.3f} (the teacher "
               f"{retrieval.teacher_scores['top1']:.3f})" if retrieval is not None else ""))
    return _jsonable(quality)


def _gate(ctx: StageContext, before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """The stage's quality gate (`StageSpec.allowed_drop`): a QualityWarning for each label-free measure it lost
    too much of against the stage before; their messages."""
    spec = spec_for(ctx.kind)
    if spec.allowed_drop is None:
        return []
    messages = []
    for name, was, now in quality_drops(before, after, spec.allowed_drop):
        message = (f"{GATED[name]} fell from {was:.3f} to {now:.3f}, more than the {spec.allowed_drop:.2f} a "
                   f"{ctx.kind} stage should lose: {spec.remedy}")
        ctx.sink.emit(QualityWarning(index=ctx.index, stage=ctx.kind, metric=name, before=was, after=now,
                                     message=message))
        messages.append(message)
    return messages


@dataclasses.dataclass(frozen=True)
class _Retrieval:
    """`[corpus] parallel`: the validation file's lines find their translations among the teacher's embeddings
    of the parallel file (`engine.evaluate.retrieval`), for each stage as for the teacher."""

    pairs: ParallelData
    embedder: Embedder
    index: torch.Tensor
    teacher_scores: dict[str, float]

    @classmethod
    def of(cls, recipe: Recipe, teacher: LoadedModel, embedder: Embedder | None) -> _Retrieval | None:
        pairs = _parallel(recipe)
        if pairs is None:
            return None
        embedder = embedder or Embedder("mean", resolve_source(recipe.teacher.source))
        prompt = embedder.prompts.get(RETRIEVAL_PROMPT, "")
        base = teacher.adapter.base(teacher.model)
        index = embed(base, teacher.tokenizer, pairs.index, embedder, prompt=prompt)
        own = embed(base, teacher.tokenizer, pairs.queries, embedder, prompt=prompt)
        return cls(pairs, embedder, index, rank_scores(own, index))

    def scores(self, student: LoadedModel, to_teacher: TeacherMap | None) -> dict[str, float]:
        queries = embed(student.adapter.base(student.model), student.tokenizer, self.pairs.queries, self.embedder,
                        to_teacher, self.embedder.prompts.get(RETRIEVAL_PROMPT, ""))
        return rank_scores(queries, self.index)


@dataclasses.dataclass(frozen=True)
class _TeacherSpace:
    """The teacher's pooled vectors of a seeded sample of training lines, onto which each stage's student is
    mapped (`fit_teacher_map`) for its sentence-transformers layout and its retrieval score."""

    texts: list[str]
    embedder: Embedder
    prompt: str
    teacher: torch.Tensor

    @classmethod
    def of(cls, recipe: Recipe, teacher: LoadedModel, embedder: Embedder | None, train: Sequence[str]) -> _TeacherSpace:
        chosen = random.Random(derive_seed(recipe.run.seed, "teacher map")).sample(
            range(len(train)), min(MAP_TEXTS, len(train)))
        texts = take(train, sorted(chosen))
        pooling = Embedder(embedder.pooling if embedder is not None else "mean", Path("."))  # pooling only
        prompt = embedder.prompts.get(RETRIEVAL_PROMPT, "") if embedder is not None else ""
        vectors = embed(teacher.adapter.base(teacher.model), teacher.tokenizer, texts, pooling, prompt=prompt)
        return cls(texts, pooling, prompt, vectors)

    def fit(self, student: LoadedModel) -> TeacherMap:
        vectors = embed(student.adapter.base(student.model), student.tokenizer, self.texts, self.embedder,
                        prompt=self.prompt)
        return fit_teacher_map(vectors, self.teacher)


def _parallel(recipe: Recipe) -> ParallelData | None:
    """The pairs of `[corpus] parallel` with the validation file (None without one); a RecipeError if they do not
    pair up."""
    corpus = recipe.corpus
    if not corpus.parallel:
        return None
    base = Path(recipe.base_dir)
    try:
        return read_pairs(base / corpus.validation[0], base / corpus.parallel)
    except (TaskDataError, OSError) as exc:
        raise RecipeError(f"corpus.parallel: {exc}", "corpus.parallel") from None


def _still_teacher(recipe: Recipe, index: int) -> bool:
    """Whether the output of stage `index` is the (adapted or vocabulary-trimmed) teacher itself."""
    return all(spec_for(stage.kind).keeps_teacher for stage in recipe.stages[:index])


def _evaluate(recipe: Recipe, run_dir: Path, sink: EventSink, token: CancelToken) -> dict[str, Any]:
    """The recipe's [evaluation] over the teacher and every stage student, into the run's evaluation folder."""
    from engine.evaluate.report import SUMMARY_FILE
    from engine.evaluate.runner import EvalPlan, evaluate, run_models

    folder = RunFolder(run_dir)
    summary = evaluate(EvalPlan(tuple(run_models(run_dir)), recipe.evaluation), folder.eval_dir, sink, token)
    return {"summary": (folder.eval_dir / SUMMARY_FILE).relative_to(folder.path).as_posix(),
            "results": summary["results"]}


def _explain(exc: BaseException, run_dir: Path) -> str:
    """One line a user can act on."""
    if isinstance(exc, MiniGlotError):
        return str(exc)
    if isinstance(exc, KeyboardInterrupt):  # a second Ctrl-C / SIGTERM: stopped at once, mid-step
        return f"interrupted at once (a second signal); continue with miniglot-cli run --resume {run_dir}"
    if isinstance(exc, OSError) and exc.errno in FULL_DISK:
        told = str(exc) if isinstance(exc, DiskFull) else \
            f"the disk is full (writing {exc.filename or run_dir}); free some space"
        return f"{told}, then continue with miniglot-cli run --resume {run_dir}"
    return f"{type(exc).__name__}: {exc}"


def load_corpus(recipe: Recipe) -> tuple[Sequence[str], Sequence[str]]:
    """The recipe's training and validation lines, read from the corpus cache on demand (`open_corpus`)."""
    base = Path(recipe.base_dir)
    lines = open_corpus(recipe.corpus.train, base)
    return split_validation(lines, recipe.corpus.validation, recipe.run.seed, base)


def shape_of(model: LoadedModel) -> Shape:
    has_pooler = model.adapter.pooler(model.model) is not None
    return Shape.from_config(model.config, model.has_mlm_head, has_pooler,
                             special_tokens=len(model.tokenizer.all_special_ids))


def count_params(model: torch.nn.Module) -> int:
    """Unique parameters (tied weights counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def _provenance(recipe: Recipe) -> dict[str, Any]:
    import tokenizers
    import transformers

    return {
        "miniglot": __version__, "seed": recipe.run.seed, "language": recipe.language.code,
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__, "tokenizers": tokenizers.__version__},
        **({"plan": recipe.to_dict()["plan"]} if recipe.plan else {}),  # the candidates the planner weighed
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    return value
