"""Benchmark: a fine-tuning step with the whole input embedding versus the embedding cut to the task's rows.

`engine.evaluate.finetune` cuts a model's input embedding to the rows the task's texts use
(`compact_vocabulary`); rows no input uses get no gradient, so training is the same, but backward,
gradient clipping and AdamW no longer sweep the whole vocabulary. This times both on the packaged
multilingual-e5-small (250,037 rows) with a token-classification head, on the same length-grouped batches
of real NER sentences (`../shared/data/ner_swh_masakhaner2`, else `--data`), interleaved (full, compact,
full, …) so machine noise hits both alike, and checks that the two models' logits stay equal.

Prints one JSON line (`full_step_seconds`, `compact_step_seconds`, `speedup`, `embedding_rows`,
`max_logit_difference`, ...), then a one-line summary.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHARED_NER = Path(__file__).resolve().parents[2] / "shared" / "data" / "ner_swh_masakhaner2"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=SHARED_NER, help="NER data folder (train/dev/test)")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per variant")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if not args.data.is_dir():
        sys.exit(f"bench/finetune_step.py needs NER data: {args.data} is absent (give --data)")

    import torch

    from engine.data.batches import length_grouped_batches, pad_batch
    from engine.data.tasks import load_task
    from engine.evaluate.encoding import batch_targets, compact_vocabulary, encode
    from engine.evaluate.finetune import WEIGHT_DECAY, load_for_task
    from engine.models.loading import resolve_source
    from engine.training.optim import adamw

    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_task("ner", args.data)
    torch.manual_seed(0)
    tokenizer, full = load_for_task(resolve_source("packaged:multilingual-e5-small"), data)
    compact = copy.deepcopy(full)
    pad = tokenizer.pad_token_id
    encoded = [encode(tokenizer, data, split, 128) for split in (data.train, data.dev, data.test)]
    renumbered, _ = compact_vocabulary(compact, encoded, pad)
    batches = length_grouped_batches(encoded[0].input_ids, 16, 0)[: args.steps + 1]
    variants = {"full": (full, encoded[0]), "compact": (compact, renumbered[0])}
    optimizers = {name: adamw(model.named_parameters(), 1e-4, WEIGHT_DECAY)
                  for name, (model, _) in variants.items()}
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    logits: dict[str, torch.Tensor] = {}
    for i, indices in enumerate(batches):
        for name, (model, enc) in variants.items():
            model.train()
            torch.manual_seed(i)  # the same dropout for both
            start = time.perf_counter()
            batch = pad_batch(enc.input_ids, indices, pad)
            out = model(**batch).logits
            loss = torch.nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]),
                                                     batch_targets(enc, indices, out.shape[1]).reshape(-1))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizers[name].step()
            optimizers[name].zero_grad(set_to_none=True)
            if i:  # the first step warms up
                seconds[name].append(time.perf_counter() - start)
            logits[name] = out.detach()
    full_s, compact_s = (statistics.median(seconds[name]) for name in variants)
    result = {"model": "packaged:multilingual-e5-small", "data": str(args.data), "batch_size": 16,
              "steps": args.steps, "threads": torch.get_num_threads(),
              "embedding_rows": {"full": full.get_input_embeddings().num_embeddings,
                                 "compact": compact.get_input_embeddings().num_embeddings},
              "full_step_seconds": full_s, "compact_step_seconds": compact_s, "speedup": full_s / compact_s,
              "max_logit_difference": float((logits["full"] - logits["compact"]).abs().max())}
    print(json.dumps(result), flush=True)
    print(f"fine-tuning step (batch 16, median of {args.steps}): whole embedding {full_s:.2f} s, "
          f"{result['embedding_rows']['compact']:,} task rows {compact_s:.2f} s ({result['speedup']:.1f}x); "
          f"logits after {args.steps + 1} steps differ by {result['max_logit_difference']:.1e}")


if __name__ == "__main__":
    main()
