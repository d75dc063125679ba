"""Benchmark: CPU latency and throughput of a run's teacher and every completed stage's student.

Loads the teacher and each stage model of RUN_DIR (read-only) and measures them side by side with
`engine.evaluate.speed.measure_speed` (encoder only, eval + inference mode, round-robin so machine
noise hits all alike): latency at batch 1 x `--seq-len` (median, p90) and throughput at
`--batch` x `--seq-len`, then ratios to the teacher (> 1: faster than the teacher).

Prints one JSON line, then a readable table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    args = parse_args()
    from engine.evaluate.runner import run_models
    from engine.evaluate.speed import measure_speed, parameter_breakdown, ratios_to
    from engine.models.loading import load_model

    refs = run_models(args.run_dir)
    models = {ref.name: load_model(ref.path, source=ref.name) for ref in refs}
    speed = measure_speed(models, seq_len=args.seq_len, latency_repeats=args.latency_repeats,
                          warmup=args.warmup, throughput_batch=args.batch,
                          throughput_repeats=args.throughput_repeats, threads=args.threads)
    reference = refs[0].name
    ratios = ratios_to(speed, reference)
    rows = {}
    for name, model in models.items():
        sizes = parameter_breakdown(model)
        rows[name] = {**speed[name], **ratios[name], "parameters": sizes["total"],
                      "encoder_parameters": sizes["encoder"], "layers": model.config.num_hidden_layers,
                      "hidden": model.config.hidden_size, "vocabulary": model.config.vocab_size}
    result = {"run_dir": str(args.run_dir), "reference": reference, "seq_len": args.seq_len,
              "throughput_batch": args.batch, "latency_repeats": args.latency_repeats,
              "threads": args.threads, "models": rows}
    print(json.dumps(result), flush=True)
    print(summary(result))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a MiniGlot run folder (only read)")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32, help="throughput batch size")
    parser.add_argument("--latency-repeats", type=int, default=30)
    parser.add_argument("--throughput-repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, help="torch threads during measurement (default: torch's)")
    return parser.parse_args()


def summary(r: dict) -> str:
    lines = [
        f"CPU speed of {r['run_dir']}: latency batch 1 x {r['seq_len']} (median / p90 of "
        f"{r['latency_repeats']}), throughput batch {r['throughput_batch']} x {r['seq_len']}; "
        f"ratios to {r['reference']}",
        f"{'model':20} {'layers':>6} {'hidden':>6} {'vocab':>8} {'params':>8} {'lat ms':>8} {'p90 ms':>8} "
        f"{'tokens/s':>9} {'x lat':>6} {'x tput':>6}",
    ]
    for name, m in r["models"].items():
        lines.append(
            f"{name:20} {m['layers']:6d} {m['hidden']:6d} {m['vocabulary']:8d} {m['parameters'] / 1e6:7.1f}M "
            f"{m['latency_ms_median']:8.1f} {m['latency_ms_p90']:8.1f} {m['tokens_per_second']:9.0f} "
            f"{m['speedup_latency']:6.2f} {m['speedup_throughput']:6.2f}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
