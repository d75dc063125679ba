"""gui.run_follower: the events of a run folder another process writes, read as the file grows."""

from __future__ import annotations

from engine.events import JsonlSink, Log, Metric, RunFinished, RunStarted
from gui.run_follower import RunFollower


def test_follower_reads_a_growing_events_file(qtbot, tmp_path):
    sink = JsonlSink(tmp_path / "events.jsonl")
    sink.emit(RunStarted(run_dir=str(tmp_path), stages=("distill",)))
    follower = RunFollower(tmp_path, interval_ms=20)
    seen: list = []
    follower.event.connect(seen.append)
    follower.start()
    assert [type(e) for e in seen] == [RunStarted] and follower.following

    with (tmp_path / "events.jsonl").open("a") as f:  # half a line: not read until complete
        f.write(Log(message="half").to_json()[:10])
    qtbot.wait(100)
    assert len(seen) == 1
    with (tmp_path / "events.jsonl").open("a") as f:
        f.write(Log(message="half").to_json()[10:] + "\n")
    sink.emit(Metric(index=1, stage="distill", name="distill/total", value=1.5, step=1))
    qtbot.waitUntil(lambda: len(seen) == 3, timeout=5_000)
    assert seen[1].message == "half" and seen[2].value == 1.5

    with qtbot.waitSignal(follower.finished, timeout=5_000):
        sink.emit(RunFinished(status="completed"))
    assert not follower.following and isinstance(seen[-1], RunFinished)
