"""Shared fixtures: tiny models built from configs, a made-up corpus, recipes around them."""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

# ./run-tests runs the suite in parallel processes (pytest-xdist): each gets its share of the cores for torch, set
# before torch is imported (and inherited by the subprocesses tests start); more threads than cores make every
# step many times slower
if workers := int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0")):
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# cached corpora (engine.data.corpus.open_corpus) go to a temporary folder of this session, not ~/.cache; set
# before any test module is imported, so the environments that modules build for subprocesses carry it too
os.environ["MINIGLOT_CORPUS_CACHE"] = tempfile.mkdtemp(prefix="miniglot-test-corpora-")
sys.path.insert(0, str(Path(__file__).parent))

from tiny import tiny_model_dir, write_corpus

atexit.register(shutil.rmtree, os.environ["MINIGLOT_CORPUS_CACHE"], True)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The longest tests first (the bundle build, then the end-to-end runs on real models), so that parallel
    workers start them early and finish the short ones around them, instead of waiting on one at the end."""
    rank = {"bundle": 0, "slow": 1}
    items.sort(key=lambda item: min((rank[m.name] for m in item.iter_markers() if m.name in rank), default=2))


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """Tiny random teachers: bert/xlm-roberta, with and without MLM head."""
    root = tmp_path_factory.mktemp("tiny-models")
    return {
        f"{family}{'' if head else '-nohead'}": tiny_model_dir(root / f"{family}-{head}", family, mlm_head=head)
        for family in ("bert", "xlm-roberta") for head in (True, False)
    }


@pytest.fixture(scope="session")
def remote_code_teacher(tiny_models, tmp_path_factory) -> Path:
    """The tiny BERT as a hub repository with its own code would have it: `auto_map` in config.json and
    tokenizer_config.json (its model_type is stock, so it loads without that code)."""
    import json
    import shutil

    folder = tmp_path_factory.mktemp("remote-code") / "bert"
    shutil.copytree(tiny_models["bert"], folder)
    for name, auto_map in (("config.json", {"AutoConfig": "configuration_x.XConfig", "AutoModel": "modeling_x.XModel"}),
                           ("tokenizer_config.json", {"AutoTokenizer": ["tokenization_x.XTokenizer", None]})):
        data = json.loads((folder / name).read_text(encoding="utf-8"))
        (folder / name).write_text(json.dumps({**data, "auto_map": auto_map}), encoding="utf-8")
    return folder


@pytest.fixture()
def swap_runner(monkeypatch):
    """`swap_runner(kind, run)`: the registered stage `kind` runs `run` instead, until the test ends or
    `monkeypatch.undo()`."""
    import dataclasses

    from engine.stages import registry

    def swap(kind: str, run) -> None:
        monkeypatch.setitem(registry._SPECS, kind, dataclasses.replace(registry.spec_for(kind), run=run))

    return swap


@pytest.fixture()
def corpus(tmp_path) -> Path:
    return write_corpus(tmp_path / "corpus.txt", 240, seed=1)


def recipe_toml(teacher: Path | str, corpus: Path | str, stages: str, **run: object) -> str:
    """A recipe around `teacher` and `corpus` with the given [[stages]] TOML."""
    run_lines = "\n".join(f"{k} = {v!r}".replace("'", '"').replace("False", "false").replace("True", "true")
                          for k, v in run.items())
    return (f'[teacher]\nsource = "{teacher}"\n[corpus]\ntrain = ["{corpus}"]\nvalidation = 0.1\n'
            f'max_length = 48\n[run]\nruns_dir = "runs"\n{run_lines}\n{stages}')


FOUR_STAGES = """
[[stages]]
kind = "distill"
layers = 2
layer_selection = "{selection}"
init = "{init}"
loss = "{loss}"
max_steps = 4
batch_size = 8
eval_every = 2
checkpoint_every = 2
[[stages]]
kind = "prune"
ffn = 64
importance_batches = 2
batch_size = 8
[[stages]]
kind = "shrink"
hidden = 32
init = "{shrink_init}"
loss = "{loss}"
max_steps = 3
batch_size = 8
[[stages]]
kind = "trim_vocab"
size = 150
"""


def four_stages(loss: str = "mse", selection: str = "last_k", init: str = "teacher",
                shrink_init: str = "truncation") -> str:
    return FOUR_STAGES.format(loss=loss, selection=selection, init=init, shrink_init=shrink_init)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread, and a busy 2-core machine is not oversubscribed."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
