"""Size and CPU speed of models, measured side by side so ratios to a reference are fair.

Speed is that of the encoder (embeddings + layers, and the pooler if present), which is what a
fine-tuned or embedding model runs; the MLM head is pre-training machinery and is not timed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import numpy as np
import torch

from engine.errors import ModelError
from engine.evaluate.intrinsic import device_of, evaluating
from engine.models.loading import LoadedModel, max_positions
from engine.runfolder import folder_bytes

__all__ = ["folder_bytes", "measure_speed", "parameter_breakdown", "ratios_to"]


def parameter_breakdown(model: LoadedModel) -> dict[str, int]:
    """Unique parameters by component: `embeddings`, `encoder` (the layers), `head` (everything else:
    pooler and MLM head) and `total`. A decoder weight tied to the word embeddings counts once, under
    embeddings; an untied decoder counts under head."""
    unique = {id(p): p.numel() for p in model.model.parameters()}
    base = model.adapter.base(model.model)
    embeddings = sum({id(p): p.numel() for p in model.adapter.embeddings(model.model).parameters()}.values())
    encoder = sum({id(p): p.numel() for p in base.encoder.parameters()}.values())
    total = sum(unique.values())
    return {"embeddings": embeddings, "encoder": encoder, "head": total - embeddings - encoder, "total": total}


def _inputs(model: LoadedModel, batch: int, seq_len: int, seed: int) -> dict[str, torch.Tensor]:
    """`batch` rows of `seq_len` ids: random non-special ids inside the tokenizer's own special tokens
    (those it puts around an empty text, e.g. [CLS] … [SEP] or <s> … </s>)."""
    tokenizer = model.tokenizer
    template = list(tokenizer("", add_special_tokens=True)["input_ids"])
    if not len(template) < seq_len <= max_positions(model.config):
        raise ModelError(f"{model.source or 'model'}: seq_len {seq_len} must be between {len(template) + 1} "
                         f"and {max_positions(model.config)} tokens")
    allowed = torch.arange(min(len(tokenizer), model.config.vocab_size))
    allowed = allowed[~torch.isin(allowed, torch.tensor(sorted(set(tokenizer.all_special_ids))))]
    generator = torch.Generator().manual_seed(seed)
    picks = allowed[torch.randint(len(allowed), (batch, seq_len - len(template)), generator=generator)]
    start, end = (torch.tensor(part, dtype=torch.long).expand(batch, -1) for part in (template[:1], template[1:]))
    ids = torch.cat([start, picks, end], dim=1)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


@contextmanager
def _threads(threads: int | None) -> Iterator[None]:
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _names(models: Sequence[LoadedModel]) -> list[str]:
    names = [m.source or f"model-{i}" for i, m in enumerate(models)]
    if len(set(names)) == len(names):
        return names
    return [f"{name}#{i}" for i, name in enumerate(names)]


def _round_robin(runs: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list[float]]:
    """Seconds per call of each zero-argument callable, taking turns so noise hits all alike."""
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - start)
    return seconds


def measure_speed(models: Sequence[LoadedModel] | Mapping[str, LoadedModel], *, seq_len: int = 128,
                  latency_repeats: int = 30, warmup: int = 5, throughput_batch: int = 32,
                  throughput_repeats: int = 5, threads: int | None = None, seed: int = 0) -> dict[str, dict]:
    """CPU latency (batch 1 × `seq_len`) and throughput (`throughput_batch` × `seq_len`) per model.

    Models run in eval mode under inference mode on ids drawn (seeded) from each tokenizer's
    non-special range, wrapped in its start/end tokens. Every measurement is taken round-robin over
    the models (a, b, a, b, …), after `warmup` interleaved latency calls and one interleaved
    throughput call, so machine noise hits all models alike. A list is keyed by each model's
    `source`. Returns, per name, `latency_ms_median`, `latency_ms_p90` and `tokens_per_second`
    (from the median batch time). `threads` sets torch's thread count for the measurement only.
    """
    if min(latency_repeats, throughput_repeats, throughput_batch) < 1 or warmup < 0:
        raise ValueError("repeats and throughput_batch must be >= 1 and warmup >= 0")
    named = dict(models) if isinstance(models, Mapping) else dict(zip(_names(models), models, strict=True))
    for name, loaded in named.items():
        if device_of(loaded.model).type != "cpu":
            raise ModelError(f"{name}: speed is measured on the CPU; move the model to the CPU first")
    with ExitStack() as stack:
        stack.enter_context(_threads(threads))
        for loaded in named.values():
            stack.enter_context(evaluating(loaded.model))
        single = {name: _forward(m, _inputs(m, 1, seq_len, seed)) for name, m in named.items()}
        _round_robin(single, warmup)
        latency = _round_robin(single, latency_repeats)
        batched = {name: _forward(m, _inputs(m, throughput_batch, seq_len, seed)) for name, m in named.items()}
        _round_robin(batched, 1)
        batch_seconds = _round_robin(batched, throughput_repeats)
    results = {}
    for name in named:
        milliseconds = np.array(latency[name]) * 1000.0
        results[name] = {
            "latency_ms_median": float(np.median(milliseconds)),
            "latency_ms_p90": float(np.percentile(milliseconds, 90)),
            "tokens_per_second": throughput_batch * seq_len / float(np.median(batch_seconds[name])),
        }
    return results


def _forward(model: LoadedModel, inputs: dict[str, torch.Tensor]) -> Callable[[], Any]:
    base = model.adapter.base(model.model)
    return lambda: base(**inputs)


def ratios_to(speed: Mapping[str, Mapping[str, float]], reference: str) -> dict[str, dict[str, float]]:
    """Speed-ups of each model over `reference` from `measure_speed` results of the same run:
    `speedup_latency` = reference median latency / model median latency, `speedup_throughput` =
    model tokens/s / reference tokens/s (both > 1 when the model is faster)."""
    if reference not in speed:
        raise KeyError(f"reference {reference!r} is not among the measured models: {', '.join(speed)}")
    ref = speed[reference]
    return {
        name: {
            "speedup_latency": ref["latency_ms_median"] / row["latency_ms_median"],
            "speedup_throughput": row["tokens_per_second"] / ref["tokens_per_second"],
        }
        for name, row in speed.items()
    }
