"""Benchmark: does the planner's label-free ranking agree with the probes?

For every tried candidate of a finished plan (`PLANNED.plan/plan.json`, written by `miniglot-cli plan` or
`bench/quality.py --plan-params`), the final student of its trial run is scored by linear probe on the
language's `bench/quality.py` tasks, next to the teacher. Prints one JSON line per candidate (fidelity, probe
score and retained fraction per task), then one line with the Spearman rank correlation of the planner's
fidelity with each task's retained score and with their mean, then a readable table.

    bench/plan_ranking.py /tmp/q/planned-swh.plan/plan.json --language swh
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from quality import LANGUAGES, SHARED  # bench/ is the script's folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("plan", type=Path, help="a finished plan's plan.json")
    parser.add_argument("--language", choices=sorted(LANGUAGES), required=True)
    parser.add_argument("--out", type=Path, help="where the probes go (default: probe-ranking beside plan.json)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from engine.configs import EvaluationConfig
    from engine.evaluate.report import headline
    from engine.evaluate.runner import EvalPlan, ModelRef, evaluate, run_models
    from engine.events import FanOut
    from engine.planner import spearman

    trials = json.loads(args.plan.read_text(encoding="utf-8"))["trials"]
    if len(trials) < 3:
        sys.exit(f"{args.plan} has {len(trials)} tried candidates; a rank correlation needs at least 3")
    spec = LANGUAGES[args.language]
    teacher, *_ = run_models(Path(next(iter(trials.values()))["run_dir"]))
    models = [teacher] + [ModelRef(name, run_models(Path(trial["run_dir"]))[-1].path) for name, trial in trials.items()]
    config = EvaluationConfig(tasks=tuple(task for task, _ in spec["tasks"]),
                              data=tuple(str(SHARED / data) for _, data in spec["tasks"]), seeds=1, mode="probe",
                              speed=False, intrinsic=False)
    summary = evaluate(EvalPlan(tuple(models), config), args.out or args.plan.parent / "probe-ranking", FanOut())
    scores = {(r["model"], r["task"]): r["mean"] for r in summary["results"] if r["metric"] == headline(r["task"])}
    tasks = [task for task, _ in spec["tasks"]]
    rows = []
    for name, trial in trials.items():
        kept = {task: scores[name, task] / scores["teacher", task] for task in tasks}
        rows.append({"candidate": name, "params": trial.get("params"), "fidelity": trial["fidelity"],
                     "probe": {task: round(scores[name, task], 4) for task in tasks},
                     "retained": {task: round(value, 4) for task, value in kept.items()},
                     "mean_retained": round(sum(kept.values()) / len(kept), 4)})
        print(json.dumps(rows[-1]), flush=True)
    fidelity = [row["fidelity"] for row in rows]
    correlation = {task: round(spearman(fidelity, [row["retained"][task] for row in rows]), 3) for task in tasks}
    correlation["mean"] = round(spearman(fidelity, [row["mean_retained"] for row in rows]), 3)
    print(json.dumps({"language": args.language, "candidates": len(rows), "spearman_fidelity_vs_probe": correlation}))
    print(f"\n{'candidate':<34}{'fidelity':>9}" + "".join(f"{task:>9}" for task in tasks) + f"{'mean':>9}")
    for row in sorted(rows, key=lambda row: -row["fidelity"]):
        kept = [row["retained"][task] for task in tasks] + [row["mean_retained"]]
        print(f"{row['candidate']:<34}{row['fidelity']:>9.4f}" + "".join(f"{100 * value:>8.1f}%" for value in kept))
    print("Spearman (fidelity vs retained probe score): "
          + ", ".join(f"{task} {value:+.2f}" for task, value in correlation.items()))


if __name__ == "__main__":
    main()
