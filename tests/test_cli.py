"""`miniglot-cli` in a subprocess: one-line messages and exit codes for bad input, estimate vs a real run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import four_stages, recipe_toml

REPO = Path(__file__).resolve().parents[1]
DISTILL = '[[stages]]\nkind = "distill"\nlayers = 2\nmax_steps = 2\nbatch_size = 8\n'


def cli(cwd: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "engine.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def assert_nothing_corrupt(root: Path) -> None:
    assert list(root.rglob("*.tmp")) == []
    assert list(root.glob("runs/*/stages/*/model")) == []


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


def tiny_config(tiny_models) -> str:
    return (tiny_models["bert"] / "config.json").read_text(encoding="utf-8")


# Each case writes its inputs under tmp_path and returns (cli arguments, exit code, needles of the message,
# whether nothing but the message may appear on stderr).
def missing_model(tmp, models, corpus):
    write(tmp / "r.toml", recipe_toml(tmp / "no-such-model", corpus, DISTILL))
    return ["run", "r.toml"], 1, ["model folder not found", "no-such-model"], True


def unsupported_type(tmp, models, corpus):
    write(tmp / "gpt" / "config.json", json.dumps({"model_type": "gpt2"}))
    write(tmp / "r.toml", recipe_toml(tmp / "gpt", corpus, DISTILL))
    return ["run", "r.toml"], 1, ["unsupported architecture 'gpt2'", "bert", "xlm-roberta"], True


def pickle_only(tmp, models, corpus):
    write(tmp / "pickled" / "config.json", tiny_config(models))
    write(tmp / "pickled" / "pytorch_model.bin", b"not really a pickle")
    write(tmp / "r.toml", recipe_toml(tmp / "pickled", corpus, DISTILL))
    return ["run", "r.toml"], 1, ["pytorch_model.bin", "allow_pickle"], True


def hub_offline(tmp, models, corpus):
    write(tmp / "r.toml", recipe_toml("hub:google-bert/bert-base-multilingual-cased", corpus, DISTILL))
    return ["run", "r.toml"], 1, ["hub:google-bert/bert-base-multilingual-cased", "offline"], True


def indivisible_hidden(tmp, models, corpus):
    stages = '[[stages]]\nkind = "shrink"\nhidden = 30\nmax_steps = 2\n'
    write(tmp / "r.toml", recipe_toml(models["bert"], corpus, stages))
    return ["run", "r.toml"], 2, ["stages[1] (shrink)", "not divisible by the 4 attention heads", "28 or 32"], True


def unknown_key(tmp, models, corpus):
    write(tmp / "r.toml", recipe_toml(models["bert"], corpus, DISTILL + "learnin_rate = 1e-4\n"))
    return ["run", "r.toml"], 2, ["unknown key 'learnin_rate'", "[stages[1] (distill)]"], True


def recipe_not_found(tmp, models, corpus):
    return ["run", "missing.toml"], 2, ["recipe file not found", "missing.toml"], True


def invalid_toml(tmp, models, corpus):
    write(tmp / "r.toml", "[teacher\nsource = 1\n")
    return ["estimate", "r.toml"], 2, ["not valid TOML", "line 1"], True


def empty_corpus(tmp, models, corpus):
    write(tmp / "empty.txt", "\n  \n\n")
    write(tmp / "r.toml", recipe_toml(models["bert"], tmp / "empty.txt", DISTILL))
    return ["run", "r.toml"], 1, ["empty.txt", "is empty"], True


def binary_corpus(tmp, models, corpus):
    write(tmp / "weights.txt", bytes(range(256)) * 4)
    write(tmp / "r.toml", recipe_toml(models["bert"], tmp / "weights.txt", DISTILL))
    return ["run", "r.toml"], 1, ["weights.txt", "binary"], True


def missing_corpus(tmp, models, corpus):
    write(tmp / "r.toml", recipe_toml(models["bert"], tmp / "nowhere.txt", DISTILL))
    return ["run", "r.toml"], 1, ["nowhere.txt", "does not exist"], True


def no_gpu(tmp, models, corpus):
    write(tmp / "r.toml", recipe_toml(models["bert"], corpus, DISTILL, device="cuda"))
    return ["run", "r.toml"], 2, ["run.device = 'cuda'", "no CUDA GPU"], True


def runs_dir_is_a_file(tmp, models, corpus):
    write(tmp / "r.toml", recipe_toml(models["bert"], corpus, DISTILL))
    write(tmp / "afile", "x")
    return ["run", "r.toml", "--runs-dir", "afile"], 1, ["afile", "is a file"], True


def runs_dir_impossible(tmp, models, corpus):
    write(tmp / "r.toml", recipe_toml(models["bert"], corpus, DISTILL))
    write(tmp / "afile", "x")
    return ["run", "r.toml", "--runs-dir", "afile/runs"], 1, ["cannot create the runs folder", "afile/runs"], True


def inspect_a_file(tmp, models, corpus):
    return ["inspect", str(models["bert"] / "config.json")], 1, ["config.json is a file", "model folder"], True


def truncated_weights(tmp, models, corpus):
    """A copied teacher whose model.safetensors lost its end (an interrupted copy or download)."""
    import shutil

    teacher = shutil.copytree(models["bert"], tmp / "teacher")
    weights = teacher / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    write(tmp / "r.toml", recipe_toml(teacher, corpus, DISTILL))
    return teacher


def truncated_weights_run(tmp, models, corpus):
    truncated_weights(tmp, models, corpus)
    return ["run", "r.toml"], 1, ["model.safetensors is damaged or incomplete", "again"], True


def truncated_weights_estimate(tmp, models, corpus):
    truncated_weights(tmp, models, corpus)
    return ["estimate", "r.toml"], 1, ["model.safetensors is damaged or incomplete"], True


def truncated_weights_inspect(tmp, models, corpus):
    return ["inspect", str(truncated_weights(tmp, models, corpus))], 1, ["model.safetensors is damaged"], True


def truncated_manifest(tmp, models, corpus):
    run = tmp / "old-run"
    write(run / "recipe.toml", recipe_toml(models["bert"], corpus, DISTILL))
    write(run / "manifest.json", '{"status": "running", "stages": [{"kind": "dis')
    return ["run", "--resume", str(run)], 1, ["manifest.json is damaged", "cannot be resumed", "recipe.toml"], True


CASES = [missing_model, unsupported_type, pickle_only, hub_offline, indivisible_hidden, unknown_key,
         recipe_not_found, invalid_toml, empty_corpus, binary_corpus, missing_corpus, no_gpu, runs_dir_is_a_file,
         runs_dir_impossible, inspect_a_file, truncated_weights_run, truncated_weights_estimate,
         truncated_weights_inspect, truncated_manifest]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__)
def test_bad_input_gets_one_line_and_exit_code(tmp_path, tiny_models, corpus, case):
    args, code, needles, alone = case(tmp_path, tiny_models, corpus)
    start = time.monotonic()
    done = cli(tmp_path, *args)
    elapsed = time.monotonic() - start
    lines = done.stderr.strip().splitlines()
    assert done.returncode == code, done.stderr
    assert "Traceback" not in done.stderr
    assert lines and lines[-1].startswith("miniglot-cli: ")
    for needle in needles:
        assert needle in lines[-1]
    if alone:  # refused before a run started: the message is all there is, and no run folder
        assert len(lines) == 1
        assert not (tmp_path / "runs").exists()
    assert done.stdout == ""
    assert_nothing_corrupt(tmp_path)
    if case is hub_offline:
        assert elapsed < 20


def test_run_then_estimate_matches_real_parameter_counts(tmp_path, tiny_models, corpus):
    teacher = tiny_models["bert"]
    write(tmp_path / "r.toml", recipe_toml(teacher, corpus, four_stages(), verify=False))
    done = cli(tmp_path, "run", "r.toml", "--runs-dir", "elsewhere-runs")
    assert done.returncode == 0, done.stderr
    run_dir = Path(done.stdout.strip())
    assert done.stdout.strip().splitlines() == [str(run_dir)]
    assert run_dir.parent == tmp_path / "elsewhere-runs" and (run_dir / "manifest.json").is_file()
    assert not (tmp_path / "runs").exists()
    assert "run completed" in done.stderr
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "completed"
    assert all((run_dir / s["model_dir"]).is_dir() for s in manifest["stages"])
    assert list(run_dir.rglob("*.tmp")) == []

    # the same recipe elsewhere, teacher and corpus relative to the recipe's folder, estimated from tmp_path
    sub = tmp_path / "elsewhere"
    write(sub / "r.toml", recipe_toml(os.path.relpath(teacher, sub), os.path.relpath(corpus, sub),
                                      four_stages()))
    estimated = cli(tmp_path, "estimate", "--json", "elsewhere/r.toml")
    assert estimated.returncode == 0, estimated.stderr
    rows = json.loads(estimated.stdout)["stages"]
    assert [r["name"] for r in rows] == ["teacher", "01-distill", "02-prune", "03-shrink", "04-trim_vocab"]
    assert rows[0]["total_params"] == manifest["teacher"]["params"]
    real = {f"{i:02d}-{s['kind']}": s["params"] for i, s in enumerate(manifest["stages"], start=1)}
    for row in rows[1:4]:
        assert row["total_params"] == real[row["name"]], row["name"]
    # trimming keeps characters and specials beyond `size`, so the real model may be a little larger
    trimmed = rows[4]["total_params"]
    assert trimmed <= real["04-trim_vocab"] <= 1.3 * trimmed
    assert rows[4]["shape"]["vocab"] == 150
    assert rows[4]["fp32_bytes"] == 4 * trimmed


def test_inspect_json(tmp_path, tiny_models):
    from transformers import AutoModel, AutoTokenizer

    folder = tiny_models["xlm-roberta-nohead"]
    done = cli(tmp_path, "inspect", "--json", str(folder))
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["model_type"] == "xlm-roberta" and data["mlm_head"] is False and data["pooler"] is False
    assert data["shape"]["layers"] == 4 and data["shape"]["hidden"] == 64 and data["shape"]["heads"] == 4
    model = AutoModel.from_pretrained(folder, add_pooling_layer=False)
    assert data["total_params"] == sum(p.numel() for p in model.parameters())
    assert data["shape"]["vocab"] == model.config.vocab_size
    assert data["tokenizer"] == {"type": "Unigram", "size": len(AutoTokenizer.from_pretrained(folder)), "fits": True}
    assert sum(data["params"].values()) == data["total_params"]


def test_full_disk_while_saving_a_stage(tmp_path, tiny_models, corpus, monkeypatch, capsys):
    """In-process: the safetensors write fails part-way as on a full disk; the CLI says in one line which folder
    and how much space it needs, leaves no half model, and the run resumes."""
    import transformers.modeling_utils as modeling_utils
    from safetensors import SafetensorError

    from engine import cli as cli_module

    def full_disk(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 100)  # a partial file, as a real full disk leaves
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(modeling_utils, "safe_save_file", full_disk)
    write(tmp_path / "r.toml", recipe_toml(tiny_models["bert"], corpus, DISTILL, verify=False))
    previous = signal.getsignal(signal.SIGINT)
    try:
        code = cli_module.main(["run", "--quiet", str(tmp_path / "r.toml")])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 1
        (run_dir,) = (tmp_path / "runs").iterdir()
        assert len(err) == 1 and err[0].startswith(
            f"miniglot-cli: the disk is full: saving {run_dir / 'stages' / '01-distill' / 'model'} needs about ")
        assert err[0].endswith(f"free); free some space, then continue with miniglot-cli run --resume {run_dir}")
        assert_nothing_corrupt(tmp_path)
        manifest = json.loads((run_dir / "manifest.json").read_text())
        assert manifest["status"] == "failed" and manifest["stages"][0]["status"] == "failed"
        assert manifest["message"] == err[0].removeprefix("miniglot-cli: ")
        # space freed: the run resumes and completes
        monkeypatch.undo()
        assert cli_module.main(["run", "--quiet", "--resume", str(run_dir)]) == 0
    finally:
        signal.signal(signal.SIGINT, previous)
    assert capsys.readouterr().out.strip() == str(run_dir)
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "completed"
    assert (run_dir / "stages" / "01-distill" / "model" / "model.safetensors").is_file()
    assert list(run_dir.rglob("*.tmp")) == []


def test_an_unknown_architecture_with_its_own_code_is_refused_without_advice_to_trust_it(tmp_path, corpus):
    write(tmp_path / "custom" / "config.json", json.dumps(
        {"model_type": "my-encoder", "auto_map": {"AutoConfig": "configuration_my.MyConfig",
                                                  "AutoModel": "modeling_my.MyModel"}}))
    write(tmp_path / "r.toml", recipe_toml(tmp_path / "custom", corpus, DISTILL))
    for args in (["inspect", "custom"], ["run", "r.toml"]):
        done = cli(tmp_path, *args)
        assert done.returncode == 1, done.stderr
        assert done.stderr.strip().splitlines() == [
            "miniglot-cli: unsupported architecture 'my-encoder' (a model with its own code, which MiniGlot never "
            "runs): MiniGlot compresses bert, xlm-roberta, roberta encoders (mBERT, MiniLM, E5, XLM-R, RoBERTa)"]
    assert not (tmp_path / "runs").exists()


def test_a_tokenizer_larger_than_the_embedding_table_is_refused_before_a_run_starts(tmp_path, tiny_models, corpus):
    import shutil

    teacher = tmp_path / "mismatched"
    shutil.copytree(tiny_models["bert"], teacher)
    config = json.loads((teacher / "config.json").read_text())
    rows = config["vocab_size"] = 20  # the tokenizer keeps its ~100 entries: ids past row 19 would crash
    (teacher / "config.json").write_text(json.dumps(config))
    recipe = write(tmp_path / "r.toml", recipe_toml(teacher, corpus, '[[stages]]\nkind = "prune"\nffn = 64\n'))
    for command in ("run", "estimate"):
        result = cli(tmp_path, command, str(recipe))
        assert result.returncode == 2, result.stderr
        assert f"embedding rows, so ids past row {rows - 1} would fail" in result.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "runs").exists()  # refused before the run folder exists
    inspected = cli(tmp_path, "inspect", str(teacher))
    assert inspected.returncode == 1 and f"only {rows} embedding rows" in inspected.stderr
    assert cli(tmp_path, "inspect", str(tiny_models["bert"])).returncode == 0


def test_stages_lists_each_settings_tip_in_whole_sentences(capsys):
    from engine import cli as cli_module
    from engine.stages.registry import spec_for, specs

    assert cli_module.main(["stages"]) == 0
    settings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("    ")]
    assert len(settings) == sum(len(spec.fields) for spec in specs())
    assert [line for line in settings if not line.endswith((".", "!", "?"))] == []
    fill = " ".join(next(f for f in spec_for("trim_vocab").fields if f.name == "fill").tip.split())
    assert any(line.endswith(": " + fill.split(". ")[0].rstrip(".") + ".") for line in settings)


def test_a_reader_that_stops_early_gets_no_broken_pipe_message():
    # `true` reads nothing and exits long before the listing is written: every write meets a closed pipe
    listing = subprocess.run(f"{sys.executable} -m engine.cli stages | true; echo ${{PIPESTATUS[0]}}", shell=True,
                             executable="/bin/bash", capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parents[1])
    assert listing.stdout.strip() == "0" and listing.stderr == "", listing.stderr
