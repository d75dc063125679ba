"""The pipeline on tiny models: every stage, loss and layer selection; run folder; cancel; resume."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import four_stages, recipe_toml
from transformers import AutoModel, AutoModelForMaskedLM, AutoTokenizer

from engine import pipeline
from engine.errors import Cancelled
from engine.events import Artifact, CancelToken, Collect, Failure, Progress, RunFinished, StageFinished
from engine.recipe import Recipe
from engine.runfolder import Manifest

REPO = Path(__file__).resolve().parents[1]


def run_recipe(tmp_path: Path, text: str, token: CancelToken | None = None) -> tuple[Path, Collect]:
    sink = Collect()
    run_dir = pipeline.run(Recipe.from_toml(text, tmp_path), sink, token)
    return run_dir, sink


def check_stage_folders(run_dir: Path) -> list[dict]:
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "completed"
    for stage in manifest["stages"]:
        folder = run_dir / stage["model_dir"]
        tokenizer = AutoTokenizer.from_pretrained(folder)
        config = json.loads((folder / "config.json").read_text())
        if "ForMaskedLM" in config["architectures"][0]:
            model, info = AutoModelForMaskedLM.from_pretrained(folder, output_loading_info=True)
        else:  # the pooler is a task head; these tiny encoders have none
            model, info = AutoModel.from_pretrained(folder, add_pooling_layer=False, output_loading_info=True)
        assert info["missing_keys"] == set() or info["missing_keys"] == []
        assert len(tokenizer) <= model.get_input_embeddings().num_embeddings == config["vocab_size"]
        assert stage["params"] == sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    return manifest["stages"]


@pytest.mark.parametrize(("family", "loss", "selection", "init", "shrink_init"), [
    ("bert", "mse", "stride", "teacher", "svd"),
    ("bert", "kl", "first_k", "random", "truncation"),
    ("bert", "kl_unsoft", "last_k", "teacher", "truncation"),
    ("bert", "mse", "first_last_k", "teacher", "truncation"),
    ("xlm-roberta", "kl", "stride", "teacher", "truncation"),
    ("xlm-roberta", "kl_unsoft", "first_k", "teacher", "svd"),
    ("xlm-roberta", "mse", "last_k", "random", "truncation"),
    ("xlm-roberta", "kl", "first_last_k", "teacher", "truncation"),
])
def test_four_stages_every_loss_and_selection(tmp_path, tiny_models, corpus, family, loss, selection, init,
                                              shrink_init):
    text = recipe_toml(tiny_models[family], corpus, four_stages(loss, selection, init, shrink_init),
                       verify=False)
    run_dir, sink = run_recipe(tmp_path, text)
    stages = check_stage_folders(run_dir)
    assert [s["kind"] for s in stages] == ["distill", "prune", "shrink", "trim_vocab"]
    assert stages[0]["metrics"]["loss"] == loss
    teacher_params = json.loads((run_dir / "manifest.json").read_text())["teacher"]["params"]
    assert stages[-1]["params"] < teacher_params / 2
    assert [e.status for e in sink.of(StageFinished)] == ["completed"] * 4
    assert [e.step for e in sink.of(Progress) if e.unit == "step"][-1] == 3
    counted = [e for e in sink.of(Progress) if e.stage == "trim_vocab"]  # its pass over the corpus, in lines
    assert counted and all(e.unit == "line" for e in counted) and counted[-1].step == counted[-1].total


@pytest.mark.parametrize("family", ["bert", "xlm-roberta"])
def test_every_stage_is_verified_in_a_fresh_process(tmp_path, tiny_models, corpus, family):
    run_dir, sink = run_recipe(tmp_path, recipe_toml(tiny_models[family], corpus, four_stages("kl")))
    for stage in check_stage_folders(run_dir):
        assert stage["verification"]["problems"] == []
        assert max(stage["verification"]["max_abs_diff"].values()) <= 1e-4
    trimmed = run_dir / "stages" / "04-trim_vocab" / "model"
    tokenizer = AutoTokenizer.from_pretrained(trimmed)
    model = AutoModelForMaskedLM.from_pretrained(trimmed)
    assert len(tokenizer) == model.get_input_embeddings().num_embeddings
    assert len(sink.of(Artifact)) == 4


def test_headless_teacher_distils_hidden_states_and_says_so(tmp_path, tiny_models, corpus):
    run_dir, sink = run_recipe(tmp_path, recipe_toml(tiny_models["xlm-roberta-nohead"], corpus,
                                                     four_stages("mse"), verify=False))
    stages = check_stage_folders(run_dir)
    assert stages[0]["metrics"]["loss"] == "hidden"
    assert any("loss = \"hidden\"" in e.message for e in sink.events if hasattr(e, "message"))


TRIM_FIRST = """
[[stages]]
kind = "trim_vocab"
size = 150
[[stages]]
kind = "distill"
layers = 2
layer_selection = "first_k"
max_steps = 0
[[stages]]
kind = "prune"
ffn = 64
importance_batches = 2
batch_size = 8
[[stages]]
kind = "shrink"
hidden = 32
init = "activation"
loss = "hidden"
intermediate = true
max_steps = 3
batch_size = 8
"""


def test_trim_first_then_an_untrained_first_k_student_and_a_repaired_cut(tmp_path, tiny_models, corpus):
    """Trimming first keeps the teacher (later stages distil from the trimmed one); first_k with no
    steps is the teacher's lower layers exactly; shrink distils from that unpruned student; every
    stage records its fidelity to the teacher."""
    run_dir, sink = run_recipe(tmp_path, recipe_toml(tiny_models["bert-nohead"], corpus, TRIM_FIRST, verify=False))
    stages = check_stage_folders(run_dir)
    assert [s["kind"] for s in stages] == ["trim_vocab", "distill", "prune", "shrink"]
    fidelity = [s["quality"]["fidelity"] for s in stages]
    assert fidelity[0] == pytest.approx(1.0, abs=1e-6)  # same states on every text the trim left alone
    assert stages[1]["quality"]["by_layer"][:2] == pytest.approx([1.0, 1.0], abs=1e-6)  # the teacher's layers 1-2
    assert all(0 < f < 1 for f in fidelity[1:])  # teacher layers 3-4 are only approximated
    assert all(s["quality"]["tokens"] > 0 and len(s["quality"]["by_layer"]) == 4 for s in stages)
    messages = [e.message for e in sink.events if hasattr(e, "message")]
    assert any("without training" in m for m in messages)
    assert any("distilling from the last distilled student before pruning" in m for m in messages)
    assert len([m for m in sink.events if getattr(m, "name", "") == "fidelity"]) == 4
    trimmed, student = (AutoModel.from_pretrained(run_dir / stages[i]["model_dir"], add_pooling_layer=False)
                        for i in (0, 1))
    tokenizer = AutoTokenizer.from_pretrained(run_dir / stages[1]["model_dir"])
    batch = tokenizer(["kali muto rane."], return_tensors="pt")
    with torch.no_grad():
        expected = trimmed(**batch, output_hidden_states=True).hidden_states[2]
        assert torch.allclose(student(**batch).last_hidden_state, expected, atol=1e-5)


def test_adapt_fits_an_mlm_head_so_logit_losses_work(tmp_path, tiny_models, corpus):
    stages = """
[[stages]]
kind = "adapt"
head_steps = 3
max_steps = 2
batch_size = 8
[[stages]]
kind = "distill"
layers = 2
loss = "kl"
max_steps = 2
batch_size = 8
"""
    run_dir, _ = run_recipe(tmp_path, recipe_toml(tiny_models["bert-nohead"], corpus, stages))
    adapted, student = check_stage_folders(run_dir)
    assert "head_best_validation_loss" in adapted["metrics"]
    assert student["metrics"]["loss"] == "kl"
    config = json.loads((run_dir / adapted["model_dir"] / "config.json").read_text())
    assert config["architectures"] == ["BertForMaskedLM"]


def test_cancel_marks_the_run_cancelled_and_leaves_no_half_model(tmp_path, tiny_models, corpus):
    token = CancelToken()

    class CancelAtStep:
        def __init__(self):
            self.inner = Collect()

        def emit(self, event):
            self.inner.emit(event)
            if isinstance(event, Progress) and event.step == 2:
                token.cancel()

    sink = CancelAtStep()
    recipe = Recipe.from_toml(recipe_toml(tiny_models["bert"], corpus, four_stages()), tmp_path)
    with pytest.raises(Cancelled):
        pipeline.run(recipe, sink, token)
    run_dir = next((tmp_path / "runs").iterdir())
    manifest = Manifest.load(run_dir).data
    assert manifest["status"] == "cancelled"
    assert manifest["stages"][0]["status"] == "cancelled"
    assert not (run_dir / "stages" / "01-distill" / "model").exists()
    assert not list(run_dir.rglob("*.tmp"))
    assert sink.inner.of(RunFinished)[-1].status == "cancelled"


def test_failure_is_recorded_with_traceback(tmp_path, tiny_models, corpus, swap_runner):
    text = recipe_toml(tiny_models["bert"], corpus, four_stages()).replace("learning_rate", "x")
    text = text.replace("max_steps = 4", "max_steps = 4\nlearning_rate = 0.9\nwarmup_ratio = 0.0", 1)
    sink = Collect()

    def explode(ctx):
        raise RuntimeError("boom in the stage")

    swap_runner("prune", explode)
    with pytest.raises(RuntimeError):
        pipeline.run(Recipe.from_toml(text, tmp_path), sink)
    failure = sink.of(Failure)[0]
    assert "boom in the stage" in failure.message and "Traceback" in failure.traceback
    assert failure.stage == "prune"
    run_dir = next((tmp_path / "runs").iterdir())
    manifest = Manifest.load(run_dir).data
    assert manifest["status"] == "failed"
    assert [s["status"] for s in manifest["stages"]] == ["completed", "failed", "pending", "pending"]


RESUME_STAGES = """
[[stages]]
kind = "distill"
layers = 2
loss = "mse"
max_steps = 40
batch_size = 8
eval_every = 5
checkpoint_every = 5
[[stages]]
kind = "prune"
ffn = 64
"""


def test_sigkill_during_distill_then_resume_matches_an_uninterrupted_run(tmp_path, tiny_models, corpus):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(recipe_toml(tiny_models["bert"], corpus, RESUME_STAGES, verify=False))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "engine.cli", "run", str(recipe), "--quiet"]
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    checkpoint = None
    while time.monotonic() < deadline and proc.poll() is None:
        found = list((tmp_path / "runs").glob("*/stages/01-distill/checkpoint/distill/state.pt"))
        if found and torch.load(found[0], weights_only=True)["train_state"]["step"] >= 10:
            checkpoint = found[0]
            break
        time.sleep(0.05)
    assert checkpoint is not None, "no checkpoint appeared before the run ended"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    run_dir = checkpoint.parents[4]
    assert Manifest.load(run_dir).data["status"] == "running"  # killed: nobody could record it
    assert not (run_dir / "stages" / "01-distill" / "model").exists()

    resumed = subprocess.run([sys.executable, "-m", "engine.cli", "run", "--resume", str(run_dir), "--quiet"],
                             env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert Path(resumed.stdout.strip()) == run_dir
    events = (run_dir / "events.jsonl").read_text()
    assert "resumed from step" in events

    fresh_dir, _ = run_recipe(tmp_path / "fresh", recipe.read_text())
    got = Manifest.load(run_dir).data["stages"][0]["metrics"]
    want = Manifest.load(fresh_dir).data["stages"][0]["metrics"]
    assert got["distill_best_step"] == want["distill_best_step"]
    assert got["distill_best_validation_loss"] == pytest.approx(want["distill_best_validation_loss"], abs=1e-5)
    assert got["distill_final_train_loss"] == pytest.approx(want["distill_final_train_loss"], abs=1e-5)


def test_a_teachers_remote_code_is_in_no_student(tmp_path, remote_code_teacher, corpus):
    """A teacher's `auto_map` (its own code on the hub) is dropped from every stage's config and tokenizer."""
    stages = ('[[stages]]\nkind = "distill"\nlayers = 2\nmax_steps = 2\nbatch_size = 8\n'
              '[[stages]]\nkind = "trim_vocab"\nsize = 150\n')
    run_dir, _ = run_recipe(tmp_path, recipe_toml(remote_code_teacher, corpus, stages))
    for stage in check_stage_folders(run_dir):
        for name in ("config.json", "tokenizer_config.json"):
            assert "auto_map" not in json.loads((run_dir / stage["model_dir"] / name).read_text()), (stage, name)


def test_lines_much_longer_than_max_length_are_warned_about(tmp_path, tiny_models, corpus):
    """A corpus of a few paragraph-long lines trains on each line's first tokens only: the run says so; a
    corpus of sentences says nothing."""
    from tiny import sentences

    from engine.events import Log

    text = sentences(400, seed=1)
    paragraphs = tmp_path / "paragraphs.txt"
    paragraphs.write_text("\n".join(" ".join(text[i:i + 40]) for i in range(0, 400, 40)) + "\n", encoding="utf-8")
    stages = '[[stages]]\nkind = "distill"\nlayers = 2\nmax_steps = 1\nbatch_size = 4\n'
    warnings = {}
    for name, lines in (("paragraphs", paragraphs), ("sentences", corpus)):
        _, sink = run_recipe(tmp_path / name, recipe_toml(tiny_models["bert"], lines, stages, verify=False))
        warnings[name] = [e.message for e in sink.of(Log) if e.level == "warning"]
    (warning,) = warnings["paragraphs"]
    assert warning.startswith("the corpus lines are much longer than corpus.max_length = 48 tokens")
    assert "split the text into sentences or short paragraphs, one per line" in warning
    assert warnings["sentences"] == []


def cancel_at(token: CancelToken, step: int):
    """A sink that cancels `token` when the first stage reports `step`."""

    class CancelAtStep(Collect):
        def emit(self, event):
            super().emit(event)
            if isinstance(event, Progress) and event.index == 1 and event.step == step:
                token.cancel()

    return CancelAtStep()


@pytest.mark.parametrize("damaged", ["state.pt", "model.safetensors"])
def test_a_damaged_checkpoint_names_the_file_and_how_to_restart_the_stage(tmp_path, tiny_models, corpus, damaged):
    from engine.errors import RunFolderError

    token = CancelToken()
    recipe = Recipe.from_toml(recipe_toml(tiny_models["bert"], corpus, RESUME_STAGES, verify=False), tmp_path)
    with pytest.raises(Cancelled):
        pipeline.run(recipe, cancel_at(token, 7), token)
    run_dir = next((tmp_path / "runs").iterdir())
    checkpoint = run_dir / "stages" / "01-distill" / "checkpoint"
    file = checkpoint / "distill" / damaged
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])  # a copy cut short
    sink = Collect()
    with pytest.raises(RunFolderError) as caught:
        pipeline.run(None, sink, resume=run_dir)
    message = str(caught.value)
    assert message.startswith(f"the checkpoint {file} is damaged (") and "\n" not in message
    assert message.endswith(f"; delete {checkpoint} to restart this stage from its first step, then resume")
    assert Manifest.load(run_dir).data["message"] == message == sink.of(Failure)[0].message
    shutil.rmtree(checkpoint)
    pipeline.run(None, Collect(), resume=run_dir)
    assert Manifest.load(run_dir).data["status"] == "completed"


def test_full_disk_fails_the_stage_cleanly_and_says_what_to_do(tmp_path, tiny_models, corpus, monkeypatch):
    import errno

    from transformers import PreTrainedModel

    def no_space(self, folder, **kwargs):
        (Path(folder) / "model.safetensors").write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device", str(folder))

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", no_space)
    sink = Collect()
    with pytest.raises(OSError):
        pipeline.run(Recipe.from_toml(recipe_toml(tiny_models["bert"], corpus, four_stages()), tmp_path), sink)
    run_dir = next((tmp_path / "runs").iterdir())
    manifest = Manifest.load(run_dir).data
    assert manifest["status"] == "failed" and "disk is full" in manifest["message"]
    assert "--resume" in sink.of(Failure)[0].message
    assert not (run_dir / "stages" / "01-distill" / "model").exists()
    assert not [p for p in (run_dir / "stages" / "01-distill").iterdir() if p.name != "checkpoint"]


def test_ctrl_c_in_the_cli_cancels_with_exit_130(tmp_path, tiny_models, corpus):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(recipe_toml(tiny_models["bert"], corpus, RESUME_STAGES.replace("40", "400"), verify=False))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "run", str(recipe)], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list((tmp_path / "runs").glob("*/stages/01-distill/checkpoint")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "cancelled" in stderr
    run_dir = next((tmp_path / "runs").iterdir())
    assert Manifest.load(run_dir).data["status"] == "cancelled"
    assert not (run_dir / "stages" / "01-distill" / "model").exists()


def test_a_stage_that_loses_too_much_quality_warns_with_advice(tmp_path, tiny_models, corpus, monkeypatch):
    """The quality gate: a lossless stage is silent; a stage whose label-free quality falls by more than its kind
    allows warns in the events (console included), in the manifest, with the kind's remedy."""
    import dataclasses

    from engine.events import ConsoleSink, QualityWarning
    from engine.stages import registry

    keep_all = '[[stages]]\nkind = "prune"\nffn = 128\nimportance_batches = 2\nbatch_size = 8\n'
    run_dir, sink = run_recipe(tmp_path / "lossless", recipe_toml(tiny_models["bert"], corpus, keep_all, verify=False))
    assert sink.of(QualityWarning) == []
    assert Manifest.load(run_dir).data["stages"][0]["warnings"] == []
    assert Manifest.load(run_dir).data["stages"][0]["quality"]["fidelity"] > 0.99

    real = registry.spec_for
    monkeypatch.setattr(pipeline, "spec_for", lambda kind: dataclasses.replace(real(kind), allowed_drop=-1.0)
                        if kind == "prune" else real(kind))  # every prune "loses too much"
    console = tmp_path / "console.txt"
    with console.open("w") as stream:
        sink = Collect()
        run_dir = pipeline.run(Recipe.from_toml(recipe_toml(tiny_models["bert"], corpus, keep_all, verify=False),
                                                tmp_path / "gated"), pipeline.FanOut(sink, ConsoleSink(stream)))
    (warning,) = sink.of(QualityWarning)
    stage = Manifest.load(run_dir).data["stages"][0]
    assert (warning.index, warning.stage, warning.metric, warning.before) == (1, "prune", "fidelity", 1.0)
    assert warning.after == pytest.approx(stage["quality"]["fidelity"])
    assert warning.message.startswith(f"fidelity fell from 1.000 to {warning.after:.3f}")
    assert warning.message.endswith("keep more FFN neurons (ffn), raise importance_batches, or use importance = "
                                    '"activation", refit = true')
    assert stage["warnings"] == [warning.message]
    assert f"[01 prune] warning: {warning.message}" in console.read_text()
