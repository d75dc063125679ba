"""Events: JSON round trip, tailing events.jsonl while it is written, and the console/JSONL sinks."""

from __future__ import annotations

import io
import json

import pytest

from engine.errors import Cancelled
from engine.events import (
    EVENT_TYPES,
    Artifact,
    CancelToken,
    Collect,
    ConsoleSink,
    EvalDevScore,
    EvalProgress,
    EvalResult,
    Failure,
    FanOut,
    JsonlSink,
    Log,
    Metric,
    Progress,
    QualityWarning,
    RunFinished,
    RunStarted,
    StageFinished,
    StageStarted,
    event_from_json,
    read_events,
)

SAMPLES = [
    RunStarted(run_dir="/runs/ħelu", stages=("distill", "prune"), resumed=True),
    RunFinished(status="failed", message="Corpus file x.txt is empty"),
    StageStarted(index=1, stage="distill", total_steps=200),
    StageFinished(index=2, stage="prune", status="skipped"),
    Progress(index=1, stage="distill", step=5, total=200, tokens_per_second=1234.5, eta_seconds=None),
    Progress(index=3, stage="shrink", step=200, total=200, tokens_per_second=10.0, eta_seconds=0.0),
    Metric(index=1, stage="distill", name="distill/total", value=3.25, step=50, split="validation"),
    EvalResult(model="04-trim_vocab", task="pos", seed=1, metrics={"accuracy": 0.8, "macro_f1": 0.6}),
    Artifact(index=4, stage="trim_vocab", path="/runs/r/stages/04-trim_vocab/model", params=22_771_752,
             bytes=91_000_000),
    Log(message="teacher has no MLM head: distilling hidden states", level="warning"),
    Failure(message="boom", traceback="Traceback ...\nValueError: boom", index=2, stage="prune"),
    EvalProgress(done=2, total=6, task="topic@sib200_mlt_Latn", model="01-distill", seed=1, eta_seconds=41.6),
    EvalProgress(done=6, total=6, eta_seconds=0.0),
    EvalDevScore(task="pos", model="teacher", seed=0, metric="accuracy", value=0.8125, epoch=3),
    EvalDevScore(task="pos", model="02-shrink", seed=2, metric="accuracy", value=0.75, layer=4, l2=1e-3),
    QualityWarning(index=3, stage="prune", metric="retrieval_top1", before=0.91, after=0.84,
                   message="retrieval top-1 fell from 0.910 to 0.840, more than the 0.03 a prune stage should lose"),
]


def test_samples_cover_every_event_type():
    assert {type(e) for e in SAMPLES} == set(EVENT_TYPES.values())


@pytest.mark.parametrize("event", SAMPLES, ids=lambda e: e.kind)
def test_round_trip(event):
    line = event.to_json()
    assert "\n" not in line
    assert json.loads(line)["event"] == event.kind
    again = event_from_json(line)
    assert type(again) is type(event)
    assert again == event


def test_non_finite_numbers_are_written_as_strict_json_null():
    line = Metric(index=1, stage="distill", name="loss", value=float("inf"), step=1).to_json()
    assert json.loads(line, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))["value"] is None
    assert event_from_json(line).value is None


def test_unknown_fields_are_ignored_for_forward_compatibility():
    line = json.dumps({"event": "log", "message": "hi", "level": "info", "time": 1.0, "new_field": 3})
    assert event_from_json(line) == Log(message="hi", time=1.0)


def test_read_events_stops_at_a_partial_line_and_resumes(tmp_path):
    path = tmp_path / "events.jsonl"
    first, second, third = SAMPLES[0], SAMPLES[2], SAMPLES[8]
    whole = third.to_json().encode("utf-8") + b"\n"
    cut = 17
    path.write_bytes((first.to_json() + "\n" + second.to_json() + "\n").encode("utf-8") + whole[:cut])
    events, offset = read_events(path)
    assert events == [first, second]
    assert offset == len((first.to_json() + "\n" + second.to_json() + "\n").encode("utf-8"))
    assert read_events(path, offset) == ([], offset)  # still partial: nothing, same offset
    with path.open("ab") as f:
        f.write(whole[cut:])
    events, end = read_events(path, offset)
    assert events == [third]
    assert end == path.stat().st_size
    assert read_events(path, end) == ([], end)


def test_jsonl_sink_appends(tmp_path):
    path = tmp_path / "events.jsonl"
    JsonlSink(path).emit(SAMPLES[0])
    JsonlSink(path).emit(SAMPLES[1])  # a second sink (a resumed run) appends, never truncates
    sink = JsonlSink(path)
    for event in SAMPLES[2:]:
        sink.emit(event)
    events, _ = read_events(path)
    assert events == SAMPLES
    assert len(path.read_text(encoding="utf-8").splitlines()) == len(SAMPLES)


def test_console_sink_formats_every_event_type():
    stream = io.StringIO()
    sink = ConsoleSink(stream, interval=0.0)
    for event in SAMPLES:
        sink.emit(event)
    text = stream.getvalue()
    for needle in ("[01 distill] started", "[02 prune] skipped", "step 5/200", "eta 0s",
                   "validation distill/total = 3.25", "22,771,752 params", "warning: teacher has no MLM head",
                   "error: boom", "run failed", "[eval] 2/6 done eta 42s: topic@sib200_mlt_Latn 01-distill seed 1",
                   "[eval] 6/6 done eta 0s\n", "[eval] pos teacher seed 0: dev accuracy 0.812 (epoch 3)",
                   "[eval] pos 02-shrink seed 2: dev accuracy 0.750 (layer 4, L2 0.001)"):
        assert needle in text
    assert "loss = inf" not in text  # training metrics are not printed
    assert all(line for line in text.splitlines())


def test_console_sink_throttles_progress_but_prints_the_last_step():
    stream = io.StringIO()
    sink = ConsoleSink(stream, interval=60.0)
    for step in range(1, 11):
        sink.emit(Progress(index=1, stage="distill", step=step, total=10))
    lines = stream.getvalue().splitlines()
    assert lines == ["[01 distill] step 1/10", "[01 distill] step 10/10"]  # no rate is known: none shown
    stream.truncate(0)
    stream.seek(0)
    for done in range(4):
        sink.emit(EvalProgress(done=done, total=3, task="pos", model="teacher", seed=done) if done < 3
                  else EvalProgress(done=3, total=3))
    assert stream.getvalue().splitlines() == ["[eval] 3/3 done"]  # throttled since the last line, but the end


def test_fan_out_collect_and_cancel_token():
    a, b = Collect(), Collect()
    FanOut(a, b).emit(SAMPLES[0])
    assert a.events == b.events == [SAMPLES[0]]
    assert a.of(RunStarted) == [SAMPLES[0]] and a.of(Log) == []
    token = CancelToken()
    token.raise_if_cancelled()
    token.cancel()
    assert token.cancelled
    with pytest.raises(Cancelled):
        token.raise_if_cancelled()
