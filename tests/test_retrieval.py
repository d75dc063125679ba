"""The retrieval task: line-aligned files, rank scores, and evaluation against the teacher's index."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny import sentences, tiny_model_dir

from engine.configs import EvaluationConfig
from engine.data.parallel import load_parallel
from engine.data.tasks import load_task
from engine.errors import TaskDataError
from engine.evaluate.retrieval import rank_scores
from engine.evaluate.runner import EvalPlan, ModelRef, evaluate
from engine.events import FanOut
from engine.models.embedder import Embedder, TeacherMap, write_embedder

REPO = Path(__file__).resolve().parents[1]


def _pairs(folder: Path, queries: list[str], index: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "b_index.dev").write_text("\n".join(index) + "\n", encoding="utf-8")
    (folder / "a_queries.dev").write_text("\n".join(queries) + "\n", encoding="utf-8")
    (folder / "README.md").write_text("not a side\n", encoding="utf-8")
    return folder


def test_the_first_file_in_name_order_is_the_query_side_and_blank_pairs_are_left_out(tmp_path):
    data = load_task("retrieval", _pairs(tmp_path, ["a", "", "c", "d"], ["A", "B", "", "D"]))
    assert data.queries == ("a", "d") and data.index == ("A", "D")
    assert data.files[0].endswith("a_queries.dev")
    other = load_parallel("retrieval", _pairs(tmp_path / "x", ["a", "e"], ["A", "D"]))
    assert data.fingerprint() != other.fingerprint()


@pytest.mark.parametrize(("make", "needle"), [
    (lambda d: _pairs(d, ["a", "b", "c"], ["A", "B"]), "a_queries.dev has 3 lines but "),
    (lambda d: (_pairs(d, ["a", "b"], ["A", "B"]) / "c.txt").write_text("x\n"), "exactly two line-aligned"),
    (lambda d: (d.mkdir(), (d / "one.dev").write_text("a\n")), "found 1: one.dev"),
    (lambda d: (_pairs(d, ["a", "b"], ["A", "B"]) / "b_index.dev").write_bytes(b"\x00\x01"), "is binary"),
    (lambda d: d.write_text("a file\n"), "reads a folder with two line-aligned"),
])
def test_bad_pairings_are_one_line_errors(tmp_path, make, needle):
    target = tmp_path / "pairs"
    make(target)
    with pytest.raises(TaskDataError) as caught:
        load_task("retrieval", target)
    assert needle in str(caught.value) and "\n" not in str(caught.value)


def test_rank_scores_count_the_true_pairs_rank():
    index = torch.eye(4)
    queries = torch.stack([index[0], index[1], 0.9 * index[0] + 0.1 * index[2], index[3]])
    scores = rank_scores(queries, index)  # query 2's translation ranks second
    assert scores == {"top1": 0.75, "mrr": pytest.approx((1 + 1 + 0.5 + 1) / 4)}


@pytest.fixture(scope="module")
def embedders(tmp_path_factory) -> dict[str, Path]:
    """A tiny sentence-embedding teacher and two narrower students that map back into its space."""
    root = tmp_path_factory.mktemp("retrieval")
    teacher = tiny_model_dir(root / "teacher", mlm_head=False, hidden=64)
    write_embedder(teacher, Embedder("mean", teacher, (("Normalize", ""),)), 64)
    out = {"teacher": teacher}
    for name, seed in (("student", 3), ("other", 4)):
        folder = tiny_model_dir(root / name, mlm_head=False, hidden=32, heads=4, seed=seed)
        write_embedder(folder, Embedder("mean", teacher, (("Normalize", ""),)), 32,
                       TeacherMap(torch.randn(32, 64) / 8, torch.randn(64) / 8))
        out[name] = folder
    return out


def test_the_teacher_on_its_own_index_is_the_ceiling_and_results_are_cached(tmp_path, embedders):
    texts = sentences(40, seed=9)
    data = _pairs(tmp_path / "pairs", texts, texts)  # the index holds the queries themselves
    plan = EvalPlan((ModelRef("teacher", embedders["teacher"]), ModelRef("student", embedders["student"])),
                    EvaluationConfig(tasks=("retrieval",), data=(str(data),), seeds=3, speed=False, intrinsic=False))
    summary = evaluate(plan, tmp_path / "eval", FanOut())
    rows = {(r["model"], r["metric"]): r for r in summary["results"]}
    assert rows["teacher", "top1"]["mean"] == 1.0 and rows["teacher", "mrr"]["mean"] == 1.0
    assert rows["teacher", "top1"]["seeds"] == 1  # no training, no seeds
    assert 0 <= rows["student", "top1"]["mean"] < 1.0
    records = sorted((tmp_path / "eval" / "retrieval").rglob("*.json"))
    assert len(records) == 2
    stamps = [p.stat().st_mtime_ns for p in records]
    assert evaluate(plan, tmp_path / "eval", FanOut())["results"] == summary["results"]
    assert [p.stat().st_mtime_ns for p in records] == stamps  # read back, not recomputed
    other = EvalPlan((ModelRef("teacher", embedders["other"]), ModelRef("student", embedders["student"])),
                     plan.config)
    evaluate(other, tmp_path / "eval", FanOut())  # another index: the student's score is computed again
    assert len(list((tmp_path / "eval" / "retrieval" / "student").glob("*.json"))) == 2


def test_a_model_outside_the_teachers_space_is_refused(tmp_path, embedders):
    plain = tiny_model_dir(tmp_path / "plain", mlm_head=False, hidden=32, heads=4)
    texts = sentences(10, seed=2)
    data = _pairs(tmp_path / "pairs", texts, texts)
    done = subprocess.run([sys.executable, "-m", "engine.cli", "eval", "--models", str(embedders["teacher"]),
                           str(plain), "--task", "retrieval", "--data", str(data), "--out", str(tmp_path / "eval"),
                           "--no-speed", "--no-intrinsic", "--quiet"], capture_output=True, text=True, cwd=REPO,
                          timeout=600)
    assert done.returncode == 1
    assert "embeds into 32 dimensions but the teacher's index has 64" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_the_cli_scores_retrieval(tmp_path, embedders):
    texts = sentences(20, seed=4)
    data = _pairs(tmp_path / "pairs", texts, [t.upper() for t in texts])
    done = subprocess.run([sys.executable, "-m", "engine.cli", "eval", "--models", str(embedders["teacher"]),
                           str(embedders["student"]), "--task", "retrieval", "--data", str(data), "--out",
                           str(tmp_path / "eval"), "--no-speed", "--no-intrinsic", "--quiet", "--json"],
                          capture_output=True, text=True, cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)["results"]
    assert {(r["model"], r["metric"]) for r in results} == {(m, k) for m in ("teacher", "student")
                                                             for k in ("top1", "mrr")}
