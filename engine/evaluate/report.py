"""Summary tables: rows = models, columns = task scores, drop vs the teacher, size and speed-up."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from engine.runfolder import atomic_write_text
from engine.tasks import TASKS
from engine.tasks import task as task_kind

SUMMARY_FILE = "summary.json"  # an evaluation's results in its output folder (`<run>/eval/` for a run)


def headline(task: str) -> str:
    """The headline metric of a task column (`topic` or `topic@sib200_swh_Latn`)."""
    return task_kind(task).headline


def is_headline(task: str, metric: str) -> bool:
    """Whether `metric` is the headline of the task column `task` (False for a task MiniGlot does not know)."""
    kind = TASKS.get(str(task).split("@")[0])
    return kind is not None and kind.headline == metric


def table_rows(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the summary table, as display strings."""
    results = {(r["model"], r["task"], r["metric"]): r for r in summary["results"]}
    tasks = list(dict.fromkeys(r["task"] for r in summary["results"]))
    teacher = summary["teacher"]
    header = ["model"]
    for task in tasks:
        metric = headline(task)
        header += [f"{task} {metric}", f"{task} drop (pts)", f"{task} drop (%)"]
    header += ["params (M)", "size (MB)", "speed-up (latency)", "speed-up (throughput)"]
    rows = []
    for model in summary["models"]:
        row = [model["name"]]
        for task in tasks:
            metric = headline(task)
            own, ref = results.get((model["name"], task, metric)), results.get((teacher, task, metric))
            if own is None:
                row += ["", "", ""]
                continue
            row.append(f"{100 * own['mean']:.1f} ± {100 * own['std']:.1f}")
            if ref is None or model["name"] == teacher:
                row += ["", ""]
            else:
                drop = 100 * (ref["mean"] - own["mean"])
                row += [f"{drop:+.1f}", f"{100 * drop / (100 * ref['mean']):+.1f}" if ref["mean"] else ""]
        row += [f"{model['params'] / 1e6:.1f}", f"{model['bytes'] / 1e6:.1f}",
                _ratio(model.get("speedup_latency")), _ratio(model.get("speedup_throughput"))]
        rows.append(row)
    return header, rows


def _ratio(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}×"


def markdown(summary: dict[str, Any]) -> str:
    header, rows = table_rows(summary)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    note = ("Scores are test-set percentages, mean ± std over seeds; drop is the teacher's score minus the "
            "model's (points, and percent of the teacher's score).")
    return "\n".join(lines) + "\n\n" + note + "\n"


def csv_text(summary: dict[str, Any]) -> str:
    header, rows = table_rows(summary)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


def write_summary(summary: dict[str, Any], out_dir: Path) -> None:
    out_dir = Path(out_dir)
    atomic_write_text(out_dir / SUMMARY_FILE, json.dumps(summary, indent=2))
    atomic_write_text(out_dir / "summary.md", markdown(summary))
    atomic_write_text(out_dir / "summary.csv", csv_text(summary))
