"""The training loop's speed features: the teacher's validation outputs computed once, mixed precision."""

from __future__ import annotations

import pytest
import torch
from conftest import recipe_toml
from safetensors import safe_open

from engine import pipeline
from engine.errors import RecipeError
from engine.events import Collect, Metric
from engine.recipe import Recipe
from engine.training import losses
from engine.training.loop import LoopSettings, TrainBatch, train
from engine.training.precision import Precision, autocast_dtype

DISTILL = """
[[stages]]
kind = "distill"
layers = 2
loss = "{loss}"
intermediate = true
cache_teacher = {cache}
max_steps = 4
batch_size = 8
eval_every = 1
eval_batches = 2
"""


def _run(tmp_path, teacher, corpus, loss="mse", cache=True, precision="fp32"):
    text = recipe_toml(teacher, corpus, DISTILL.format(loss=loss, cache=str(cache).lower()),
                       verify=False, precision=precision)
    sink = Collect()
    run_dir = pipeline.run(Recipe.from_toml(text, tmp_path / f"{loss}-{cache}-{precision}"), sink)
    curves = {(e.name, e.split, e.step): e.value for e in sink.events if isinstance(e, Metric)}
    return run_dir, curves


@pytest.mark.parametrize("loss", ["mse", "hidden"])
def test_cached_validation_targets_give_the_same_curves_with_fewer_teacher_passes(
        tmp_path, tiny_models, corpus, monkeypatch, loss):
    calls = []
    original = losses.DistillLoss.targets
    monkeypatch.setattr(losses.DistillLoss, "targets", lambda self, batch: calls.append(1) or original(self, batch))

    _, cached = _run(tmp_path, tiny_models["bert"], corpus, loss, cache=True)
    cached_calls, calls[:] = len(calls), []
    _, recomputed = _run(tmp_path, tiny_models["bert"], corpus, loss, cache=False)

    assert cached_calls == 4 + 2  # one per training step, one per validation batch for the whole run
    assert len(calls) == 4 + 2 * 4  # validation after each of the 4 steps recomputes both batches
    assert any(split == "validation" for _, split, _ in cached)
    assert cached == recomputed


def test_precision_rules():
    cpu = torch.device("cpu")
    assert autocast_dtype("fp32", cpu) is None
    assert autocast_dtype("bf16", cpu) is torch.bfloat16
    with pytest.raises(RecipeError, match=r"fp16.*needs a GPU"):
        autocast_dtype("fp16", cpu)
    assert not Precision.for_run("bf16", cpu).scaler().is_enabled()
    with pytest.raises(RecipeError, match=r"run\.precision"):
        Recipe.from_dict({"corpus": {"train": ["x.txt"]}, "run": {"precision": "int8"}})


def test_bf16_autocast_trains_close_to_fp32_and_saves_fp32_weights(tmp_path, tiny_models, corpus):
    _, fp32 = _run(tmp_path, tiny_models["bert"], corpus, precision="fp32")
    run_dir, bf16 = _run(tmp_path, tiny_models["bert"], corpus, precision="bf16")

    key = ("distill/total", "validation", 4)
    assert bf16[key] == pytest.approx(fp32[key], rel=0.05)
    assert bf16[key] != fp32[key]  # the forward passes really ran in bf16
    with safe_open(next(run_dir.glob("stages/01-distill/model/model.safetensors")), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float32}


def test_hidden_loss_matches_mapped_layers_and_sentence_embeddings(tiny_models):
    """Each student layer is compared with the teacher layer `layer_map` names; `sentence` adds the
    distance between mean-pooled last states, and a student equal to the teacher's mapped layers has
    zero loss."""
    import dataclasses

    from engine.models.loading import LoadedModel, load_model
    from engine.stages.distill import DistillStage
    from engine.surgery.layers import reduce_layers

    teacher = load_model(tiny_models["bert-nohead"])
    net = reduce_layers(teacher.model, teacher.adapter, [0, 1])
    student = LoadedModel(net, teacher.tokenizer, teacher.adapter, "")
    batch = teacher.tokenizer(["kali muto rane.", "sipo hawu ka li mu!"], return_tensors="pt", padding=True)
    batch = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
             "labels": torch.full_like(batch["input_ids"], -100)}
    config = DistillStage(loss="hidden", intermediate=True, sentence=1.0)
    own = losses.DistillLoss(student, teacher, config, "hidden", layer_map=[1, 2])(batch)
    assert set(own) == {"hidden", "sentence", "total"} and float(own["total"].detach()) == pytest.approx(0.0, abs=1e-6)
    top = {k: v.detach() for k, v in losses.DistillLoss(student, teacher, config, "hidden", layer_map=[1, 4])(batch)
           .items()}
    assert float(top["sentence"]) > 0 and float(top["total"]) == pytest.approx(
        float(top["hidden"]) + float(top["sentence"]))
    plain = losses.DistillLoss(student, teacher, dataclasses.replace(config, sentence=0.0), "hidden",
                               layer_map=[1, 4])(batch)
    assert "sentence" not in plain and float(plain["total"].detach()) == pytest.approx(float(top["hidden"]))


class _Recorder:
    def __init__(self) -> None:
        self.steps: list[int] = []
        self.validations: list[tuple[int, float]] = []

    def stepped(self, state, losses, learning_rate, tokens_per_second, eta_seconds) -> None:
        self.steps.append(state.step)

    def validated(self, state, values) -> None:
        self.validations.append((state.step, values.get("score")))

    def resumed(self, state) -> None:
        raise AssertionError("nothing to resume")


def _linear_problem():
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 1)
    x, y = torch.randn(32, 4), torch.randn(32, 1)

    def batch(index):
        rows = slice(8 * (index % 4), 8 * (index % 4) + 8)
        return TrainBatch({"x": x[rows], "y": y[rows]}, 8)

    def objective(inputs):
        return {"total": torch.nn.functional.mse_loss(net(inputs["x"]), inputs["y"])}

    return net, batch, objective


def test_the_loop_stops_early_and_restores_the_best_validated_state():
    net, batch, objective = _linear_problem()
    scores = iter([0.5, 0.7, 0.6, 0.65, 0.9])  # best at the second validation, then two without improvement
    snapshots = {}

    def validate():
        snapshots[len(snapshots) + 1] = {k: v.clone() for k, v in net.state_dict().items()}
        return {"score": next(scores)}

    recorder = _Recorder()
    settings = LoopSettings(max_steps=50, learning_rate=0.1, eval_every=3, patience=2, select="score", maximize=True)
    state = train(net, objective, batch, validate, settings, recorder, precision=Precision(torch.device("cpu"), None))
    assert recorder.validations == [(3, 0.5), (6, 0.7), (9, 0.6), (12, 0.65)]  # stopped: two stale validations
    assert (state.step, state.best_step, state.best, state.stale) == (12, 6, 0.7, 2)
    assert recorder.steps == list(range(1, 13))
    for name, value in net.state_dict().items():
        assert torch.equal(value, snapshots[2][name]), name  # the weights of the best validation, not the last


@pytest.mark.filterwarnings("ignore:Detected call of:UserWarning")  # the schedule advances over skipped steps
def test_a_batch_with_nothing_to_learn_skips_the_update_but_not_the_schedule():
    net, batch, objective = _linear_problem()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    settings = LoopSettings(max_steps=4, learning_rate=0.1, warmup_ratio=0.0, eval_every=4)
    state = train(net, lambda inputs: None, batch, lambda: {"total": 0.0}, settings, _Recorder(),
                  precision=Precision(torch.device("cpu"), None))
    assert state.step == 4 and all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    train(net, objective, batch, lambda: {"total": 0.0}, settings, _Recorder(),
          precision=Precision(torch.device("cpu"), None))
    assert not torch.equal(net.weight, before["weight"])


def test_a_full_disk_while_a_checkpoint_is_saved_names_the_folder_and_the_space(tmp_path, monkeypatch):
    """torch.save tells a full disk as `unexpected pos`: with less space free than the checkpoint needs, it is
    one line naming the folder and the space, and nothing half-written stays; other failures pass through."""
    from pathlib import Path

    from engine import runfolder
    from engine.runfolder import DiskFull
    from engine.training.checkpoints import Checkpoints

    def cut_short(state, path):
        Path(path).write_bytes(b"PK")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")

    monkeypatch.setattr(torch, "save", cut_short)
    monkeypatch.setattr(runfolder, "free_bytes", lambda path: 300_000)
    checkpoints = Checkpoints(tmp_path / "checkpoint")
    tensors = {"student": {"weight": torch.zeros(500_000)}}  # 2 MB
    with pytest.raises(DiskFull) as caught:
        checkpoints.save("distill", tensors, {"step": 3, "optimizer": {"exp_avg": [torch.zeros(250_000)]}})
    assert str(caught.value) == (f"the disk is full: saving {tmp_path / 'checkpoint'} needs about 3.0 MB "
                                 "(0.3 MB free); free some space")
    assert list(tmp_path.rglob("*")) == [tmp_path / "checkpoint"]
    monkeypatch.setattr(runfolder, "free_bytes", lambda path: 10**12)
    with pytest.raises(RuntimeError, match="unexpected pos"):
        checkpoints.save("distill", tensors, {"step": 3})


@pytest.mark.parametrize(("damaged", "keep"), [("state.pt", 100), ("state.pt", 0), ("model.safetensors", 100),
                                             ("model.safetensors", 4)])
def test_a_damaged_checkpoint_is_one_line_naming_the_file(tmp_path, damaged, keep):
    from engine.errors import RunFolderError
    from engine.training.checkpoints import Checkpoints

    checkpoints = Checkpoints(tmp_path / "checkpoint")
    checkpoints.save("distill", {"model": {"weight": torch.ones(64, 64)}}, {"step": 3, "rng": torch.arange(9)})
    file = tmp_path / "checkpoint" / "distill" / damaged
    file.write_bytes(file.read_bytes()[:keep])
    with pytest.raises(RunFolderError) as caught:
        checkpoints.load("distill")
    assert str(caught.value).startswith(f"the checkpoint {file} is damaged (")
    assert str(caught.value).endswith(f"delete {tmp_path / 'checkpoint'} to restart this stage from its first step, "
                                      "then resume")
