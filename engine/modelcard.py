"""Model cards: the `README.md` of every stage model, in the Hugging Face model-card format.

YAML front matter (language, the teacher's license, base_model, tags, pipeline tag, and metrics with
a `model-index` once evaluated) built and parsed back by `huggingface_hub.ModelCardData`; a body with
the lineage (teacher, recipe, stages with parameters, label-free fidelity, seeds, library versions)
and the measured scores. The card is not part of a model's identity: `folder_fingerprint` skips it,
so rewriting it after an evaluation keeps cached results valid.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine import __version__
from engine.errors import MiniGlotError
from engine.models.embedder import read_embedder
from engine.recipe import Recipe
from engine.runfolder import MODEL_CARD, Manifest, RunFolder, atomic_write_text
from engine.stages.registry import spec_for
from engine.tasks import TASKS

#: ISO 639-1 codes of the FLORES-200 languages that have one (individual languages of a macrolanguage
#: take its code: swh -> sw, zsm -> ms); the others keep their ISO 639-3 code, which the card spec allows.
ISO_639_1 = dict(pair.split(":") for pair in """
    afr:af aka:ak als:sq amh:am arb:ar asm:as ayr:ay azj:az bak:ba bam:bm bel:be ben:bn bod:bo bos:bs
    bul:bg cat:ca ces:cs cym:cy dan:da deu:de dzo:dz ell:el eng:en epo:eo est:et eus:eu ewe:ee fao:fo
    fij:fj fin:fi fra:fr fuv:ff gaz:om gla:gd gle:ga glg:gl grn:gn guj:gu hat:ht hau:ha heb:he hin:hi
    hrv:hr hun:hu hye:hy ibo:ig ind:id isl:is ita:it jav:jv jpn:ja kan:kn kas:ks kat:ka kaz:kk khk:mn
    khm:km kik:ki kin:rw kir:ky kmr:ku knc:kr kon:kg kor:ko lao:lo lim:li lin:ln lit:lt ltz:lb lug:lg
    lvs:lv mal:ml mar:mr mkd:mk mlt:mt mri:mi mya:my nld:nl nno:nn nob:nb npi:ne nya:ny oci:oc ory:or
    pan:pa pbt:ps pes:fa plt:mg pol:pl por:pt quy:qu ron:ro run:rn rus:ru sag:sg san:sa sin:si slk:sk
    slv:sl smo:sm sna:sn snd:sd som:so sot:st spa:es srd:sc srp:sr ssw:ss sun:su swe:sv swh:sw tam:ta
    tat:tt tel:te tgk:tg tgl:tl tha:th tir:ti tsn:tn tso:ts tuk:tk tur:tr twi:tw uig:ug ukr:uk urd:ur
    uzn:uz vie:vi wol:wo xho:xh ydd:yi yor:yo zho:zh zsm:ms zul:zu
""".split())

METRIC_TYPES = {"macro_f1": "f1"}  # others are their own type (accuracy, f1, precision, recall)
TOKEN_USAGE = ('tagger("Raw text.")  # words split at spaces: "text." is one word, tagged as one',
               '# words as the training data splits them, punctuation tagged apart (what MiniGlot\'s Try it does):',
               'tagger([["Raw", "text", "."]], is_split_into_words=True)')


def iso639(flores_code: str) -> str:
    """The card's language code for a FLORES-200 code: `mlt_Latn` -> `mt`, `ace_Latn` -> `ace`."""
    three = flores_code.split("_")[0]
    return ISO_639_1.get(three, three)


@dataclass(frozen=True)
class Teacher:
    """What a card says about the teacher: a name, its hub id if any, and its license fields."""

    name: str  # packaged:<name>, hub:<id>[@revision], or a local folder's name (no local directories)
    base_model: str | None
    license: dict[str, str]  # license, and license_name / license_link for "other"

    def shown(self) -> str:
        return f"`{self.base_model}` ({self.name})" if self.base_model else f"`{self.name}`"


def teacher_of(source: str) -> Teacher:
    """Name, hub id and license of a teacher source; the license is `unknown` when nothing states it."""
    if source.startswith("packaged:"):
        from engine.models.packaged import PACKAGED_MODELS

        packaged = PACKAGED_MODELS.get(source.removeprefix("packaged:"))
        if packaged is None:
            return Teacher(source, None, {"license": "unknown"})
        return Teacher(source, packaged.hub_id, {"license": packaged.license})
    if source.startswith("hub:"):
        repo_id, _, revision = source.removeprefix("hub:").partition("@")
        return Teacher(source, repo_id, _license(_hub_readme(repo_id, revision)))
    return Teacher(Path(source).name, None, _license(Path(source) / MODEL_CARD))


@functools.cache
def _hub_readme(repo_id: str, revision: str) -> Path | None:
    """The hub model's README.md (the cached copy first; downloaded when the hub is reachable), or None."""
    from huggingface_hub import hf_hub_download

    for local_only in (True, False):
        try:
            return Path(hf_hub_download(repo_id, MODEL_CARD, revision=revision or None, etag_timeout=5,
                                        local_files_only=local_only))
        except Exception:  # offline, not cached, or no README: the license stays unknown
            continue
    return None


def _license(readme: Path | None) -> dict[str, str]:
    """The license fields of a model card's YAML front matter; `unknown` when absent or unreadable."""
    import yaml
    from huggingface_hub.repocard import metadata_load

    try:
        meta = metadata_load(readme) if readme is not None and readme.is_file() else None
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError):
        meta = None
    fields = {key: value for key, value in (meta or {}).items()
              if key in ("license", "license_name", "license_link") and isinstance(value, str)}
    return fields if "license" in fields else {"license": "unknown"}


def render_card(recipe: Recipe, manifest: dict[str, Any], run_name: str, index: int, *, fill_mask: bool,
                params: int | None = None, summary: dict[str, Any] | None = None, evaluated_as: str = "",
                prompts: dict[str, str] | None = None) -> str:
    """The model card of stage `index` of the run `run_name`: YAML front matter and a Markdown body.

    `params` overrides the manifest's count (the pipeline writes the card before it records the stage);
    `summary` is an evaluation summary (`eval/summary.json`) in which this model is named `evaluated_as`;
    `prompts` (the teacher's, possibly empty) when the folder is also a sentence-transformers model.
    """
    from huggingface_hub import ModelCard, ModelCardData

    teacher = teacher_of(recipe.teacher.source)
    stage = recipe.stages[index - 1]
    entry = _entry(manifest, index)
    params = params if params is not None else entry.get("params")
    scores = _scores(summary, evaluated_as) if summary else []
    title = f"{run_name}-{index:02d}-{stage.kind}"
    lineage = {"version": manifest.get("miniglot", __version__), "run": run_name, "stage": index,
               "kind": stage.kind, "params": params, "teacher": teacher.name,
               "teacher_params": (manifest.get("teacher") or {}).get("params"),
               "flores_code": recipe.language.code, "seed": manifest.get("seed", recipe.run.seed),
               "fidelity": (entry.get("quality") or {}).get("fidelity")}
    corpora = [s.removeprefix("hub:").split(":")[0] for s in recipe.corpus.train if s.startswith("hub:")]
    stages = recipe.stages[:index]
    data = ModelCardData(
        language=[iso639(recipe.language.code)], base_model=teacher.base_model, library_name="transformers",
        pipeline_tag="fill-mask" if fill_mask else "feature-extraction" if prompts is None else "sentence-similarity",
        tags=["miniglot", "model-compression", *dict.fromkeys(spec_for(s.kind).tag or s.kind for s in stages),
              *(["sentence-transformers"] if prompts is not None else [])],
        datasets=corpora or None, model_name=title if scores else None,
        metrics=list(dict.fromkeys(METRIC_TYPES.get(r["metric"], r["metric"]) for r in scores)) or None,
        eval_results=[_eval_result(r) for r in scores] or None,
        miniglot={k: v for k, v in lineage.items() if v is not None}, **teacher.license)
    body = [*_intro(recipe, manifest, teacher, title, run_name, index, params),
            *(_sentence_embeddings(teacher, prompts) if prompts is not None else []),
            *_lineage(recipe, manifest, teacher, index, params),
            *(_evaluation(summary, scores) if summary and scores else [])]
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body) + "\n"))  # parsing validates it


def _entry(manifest: dict[str, Any], index: int) -> dict[str, Any]:
    stages = manifest.get("stages") or []
    return stages[index - 1] if index <= len(stages) else {}


def _intro(recipe: Recipe, manifest: dict[str, Any], teacher: Teacher, title: str, run_name: str, index: int,
           params: int | None) -> list[str]:
    size = f"{_millions(params)}-parameter " if params else ""
    lines = [f"# {title}", "",
             f"A {size}student for the language `{recipe.language.code}` (ISO 639 `{iso639(recipe.language.code)}`), "
             f"compressed from the teacher {teacher.shown()} by MiniGlot {manifest.get('miniglot', __version__)}: "
             f"stage {index} of {len(recipe.stages)} of the run `{run_name}`.", ""]
    if teacher.license["license"] == "unknown":
        lines += [f"**License unknown**: MiniGlot found no license for the teacher {teacher.shown()}, from which "
                  "this model is derived. Check the teacher's license before you use or share this model.", ""]
    else:
        lines += [f"License: `{teacher.license['license']}`, inherited from the teacher.", ""]
    return [*lines, "```python", "from transformers import AutoModel, AutoTokenizer",
            'model = AutoModel.from_pretrained("path/to/this/folder")',
            'tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")', "```", ""]


def _sentence_embeddings(teacher: Teacher, prompts: dict[str, str]) -> list[str]:
    lines = ["It is also a sentence-transformers model whose embeddings live in the teacher's space (a fitted "
             "Dense module maps the student's vectors onto the teacher's), so it can query an index built with the "
             "teacher:", "",
             "```python", "from sentence_transformers import SentenceTransformer",
             'model = SentenceTransformer("path/to/this/folder")']
    if prompts:
        name = "query" if "query" in prompts else next(iter(prompts))
        lines += [f'embeddings = model.encode(sentences, prompt_name="{name}")  # prefixes "{prompts[name]}"', "```",
                  "", f"The teacher {teacher.shown()} expects these prefixes: "
                  + ", ".join(f'`{prefix}` ({use})' for use, prefix in prompts.items())
                  + "; `encode(..., prompt_name=…)` adds them."]
    else:
        lines += ["embeddings = model.encode(sentences)", "```"]
    return [*lines, ""]


def _lineage(recipe: Recipe, manifest: dict[str, Any], teacher: Teacher, index: int, params: int | None) -> list[str]:
    import tomli_w

    teacher_params = (manifest.get("teacher") or {}).get("params")
    lines = ["## Lineage", "",
             "| stage | settings | parameters | % of teacher | fidelity | masked-token accuracy |",
             "|---|---|---|---|---|---|",
             f"| teacher | {teacher.shown()} | {_millions(teacher_params)} | 100% | | |"]
    for number, stage in enumerate(recipe.stages[:index], start=1):
        entry = _entry(manifest, number)
        count = params if number == index else entry.get("params")
        quality = entry.get("quality") or {}
        lines.append(f"| {number:02d}-{stage.kind} | {spec_for(stage.kind).describe(stage)} | {_millions(count)} | "
                     f"{_percent(count, teacher_params)} | {_number(quality.get('fidelity'))} | "
                     f"{_number(quality.get('masked_accuracy'))} |")
    corpus = manifest.get("corpus") or {}
    versions = {"miniglot": manifest.get("miniglot", __version__), **(manifest.get("versions") or {})}
    return [*lines, "",
            "Fidelity is label-free, measured by the run on held-out corpus text: for each teacher layer, the best "
            "linear CKA any layer of the model reaches with it, averaged over the teacher's layers (1.0: the "
            "teacher's own representations). Masked-token accuracy where the model has an MLM head.", "",
            f"Corpus: {', '.join(_name(s) for s in recipe.corpus.train)} ({corpus.get('train_lines', 0):,} training "
            f"and {corpus.get('validation_lines', 0):,} validation lines). Seed: "
            f"{manifest.get('seed', recipe.run.seed)}. Versions: {', '.join(f'{k} {v}' for k, v in versions.items())}.",
            "", "<details><summary>Recipe stages</summary>", "", "```toml",
            tomli_w.dumps({"stages": recipe.to_dict()["stages"][:index]}).strip(), "```", "", "</details>"]


def _evaluation(summary: dict[str, Any], scores: list[dict[str, Any]]) -> list[str]:
    reference, mode = summary.get("teacher", "teacher"), summary.get("mode", "")
    lines = ["", "## Evaluation", "",
             f"Test-set scores in percent after model selection on dev: mean ± std over seeds, and % of the score "
             f"of the reference `{reference}`.", "",
             f"| task | data | mode | metric | score | seeds | {reference} | % of {reference} |",
             "|---|---|---|---|---|---|---|---|"]
    for row in scores:
        ref = row["reference"]
        lines.append(f"| {row['task']} | {row['data']} | {mode} | {row['metric']} | "
                     f"{100 * row['mean']:.1f} ± {100 * row['std']:.1f} | {row['seeds']} | "
                     f"{'' if ref is None else f'{100 * ref:.1f}'} | {_percent(row['mean'], ref)} |")
    return lines


def _scores(summary: dict[str, Any], name: str) -> list[dict[str, Any]]:
    """This model's score rows with the reference's mean and the data each task was scored on."""
    reference = summary.get("teacher")
    means = {(r["task"], r["metric"]): r["mean"] for r in summary.get("results") or [] if r["model"] == reference}
    data = {t["label"]: t["data"] for t in summary.get("tasks") or []}
    return [{**row, "data": _name(data.get(row["task"], "")), "hub": data.get(row["task"], "").startswith("hub:"),
             "reference": None if name == reference else means.get((row["task"], row["metric"]))}
            for row in summary.get("results") or [] if row["model"] == name]


def _eval_result(row: dict[str, Any]) -> Any:
    from huggingface_hub import EvalResult

    task = row["task"].split("@")[0]
    dataset, _, config = row["data"].partition(":") if row["hub"] else (row["data"], "", "")  # hub:<id>[:<config>]
    task_type = TASKS[task].pipeline_tag if task in TASKS else "other"
    return EvalResult(task_type=task_type, task_name=row["task"], dataset_type=dataset or task,
                      dataset_name=row["data"] or task, dataset_config=config or None, dataset_split="test",
                      metric_type=METRIC_TYPES.get(row["metric"], row["metric"]), metric_name=row["metric"],
                      metric_value=round(float(row["mean"]), 4))


def _name(source: str) -> str:
    """A data or model source without local directories: `hub:`/`packaged:` ids, else the last path part."""
    if source.startswith(("hub:", "packaged:")):
        return source.removeprefix("hub:")
    return Path(source.rstrip("/")).name


def _millions(count: int | None) -> str:
    return "" if not count else f"{count / 1e6:.2f}M" if count >= 1e5 else f"{count:,}"


def _percent(value: float | None, reference: float | None) -> str:
    return "" if value is None or not reference else f"{100 * value / reference:.1f}%"


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def _fill_mask(model_dir: Path) -> bool:
    """Whether the saved model has an MLM head (its config names a *ForMaskedLM architecture)."""
    try:
        config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return any("ForMaskedLM" in name for name in config.get("architectures") or [])


def write_card(model_dir: Path, recipe: Recipe, manifest: Manifest, index: int, params: int | None = None,
               summary: dict[str, Any] | None = None, evaluated_as: str = "") -> None:
    """Write (atomically) the card of stage `index` of the run that `manifest` belongs to into `model_dir`."""
    embedder = read_embedder(Path(model_dir))
    text = render_card(recipe, manifest.data, manifest.path.parent.name, index, fill_mask=_fill_mask(model_dir),
                       params=params, summary=summary, evaluated_as=evaluated_as,
                       prompts=embedder.prompts if embedder is not None else None)
    atomic_write_text(Path(model_dir) / MODEL_CARD, text)


def refresh_cards(summary: dict[str, Any]) -> list[str]:
    """Rewrite the cards of the run stage models in an evaluation summary with their scores.

    Models that are not a run's stage folder are left alone. Returns one line per card that could not
    be written (a run on a read-only disk, a damaged manifest): an evaluation does not fail on a card.
    """
    problems = []
    for model in summary.get("models") or []:
        path = Path(model["path"]).resolve()
        if path.name != "model" or path.parent.parent.name != "stages":
            continue
        folder = RunFolder(path.parent.parent.parent)
        if not (folder.manifest_file.is_file() and folder.recipe_file.is_file()):
            continue
        try:
            manifest = folder.manifest()
            stage = next((s for s in folder.stage_models(manifest.data) if s.path == path), None)
            if stage is not None:
                write_card(path, Recipe.load(folder.recipe_file), manifest, stage.index, summary=summary,
                           evaluated_as=model["name"])
        except (OSError, MiniGlotError) as exc:
            problems.append(f"could not update the model card of {path}: {exc}")
    return problems


def render_task_card(facts: dict[str, Any]) -> str:
    """The model card of a task model folder (`engine.taskmodel`) from its facts."""
    from huggingface_hub import ModelCard, ModelCardData

    kind = TASKS[facts["task"]]
    origin = facts.get("lineage") or {}
    teacher = teacher_of(origin["teacher"]) if origin.get("teacher") else None
    metric = facts["headline"]
    row = {"task": facts["task"], "metric": metric, "mean": facts["test"][metric], "data": _name(facts["data"]),
           "hub": facts["data"].startswith("hub:")}
    data = ModelCardData(
        base_model=teacher.base_model if teacher else None, library_name="transformers",
        pipeline_tag=kind.pipeline_tag, tags=["miniglot", facts["task"], *(["task-distillation"]
                                                                           if facts["distilled"] else [])],
        model_name=Path(facts["out"]).name, metrics=[METRIC_TYPES.get(metric, metric)],
        eval_results=[_eval_result(row)], **(teacher.license if teacher else {"license": "unknown"}))
    usage = ('pipeline("token-classification", model=FOLDER, aggregation_strategy="first")' if kind.token_level
             else 'pipeline("text-classification", model=FOLDER)')
    scores = ["| split | " + " | ".join(facts["test"]) + " |", "|---" * (len(facts["test"]) + 1) + "|"]
    for split in ("dev", "test"):
        scores.append(f"| {split} | " + " | ".join(_number(facts[split].get(m)) for m in facts["test"]) + " |")
    if facts.get("teacher_test"):
        scores.append("| teacher, test | " + " | ".join(_number(facts["teacher_test"].get(m))
                                                       for m in facts["test"]) + " |")
    how = (f"task-distilled from the fine-tuned teacher `{_name(facts['teacher'])}` (temperature "
           f"{facts['temperature']}, gold weight {facts['alpha']}, {facts['unlabelled']:,} unlabelled texts)"
           if facts["distilled"] else "fine-tuned on the gold labels")
    body = [f"# {Path(facts['out']).name}", "",
            f"A {kind.title} model ({len(facts['labels'])} labels) made with MiniGlot {__version__}: the encoder "
            f"`{_name(facts['encoder'])}` {how}.", "", "```python", "from transformers import pipeline",
            f"tagger = {usage}", *TOKEN_USAGE * kind.token_level, "```", "", "## Scores", "", *scores, "",
            f"Data: `{_name(facts['data'])}` (fingerprint `{facts['data_fingerprint'][:16]}`; "
            f"{facts['sizes']['train']:,} / {facts['sizes']['dev']:,} / {facts['sizes']['test']:,} train / dev / "
            f"test examples). Seed {facts['seed']}, best of {facts['epochs_run']} epochs on dev (epoch "
            f"{facts['best_epoch']}), learning rate {facts['learning_rate']:.2g}.", "", "## Lineage", ""]
    if origin.get("run"):
        body.append(f"Encoder: stage `{origin['stage']}` of the MiniGlot run `{origin['run']}`, compressed from "
                    f"{teacher.shown() if teacher else 'its teacher'}.")
    else:
        body.append(f"Encoder: `{_name(facts['encoder'])}`.")
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body) + "\n"))
