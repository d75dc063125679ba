"""Sentence embedders: how a sentence-transformers model turns token states into one vector.

A teacher is a sentence embedder when its folder holds sentence-transformers' `modules.json` (the packaged
e5 teacher is written with one): a Transformer at the folder's root, a Pooling module, then optional
Dense and Normalize modules. Every stage folder of a run with such a teacher gets the same layout
(`write_embedder`), so `SentenceTransformer(folder)` loads the student where users load the teacher, and
its embeddings live in the teacher's space: each student gets a Dense module (`TeacherMap`, no activation)
that maps its pooled vector onto the teacher's pooled vector, before the teacher's own Dense and Normalize
modules. The map is fitted by ridge regression on the pooled vectors of both models over training text
(`fit_teacher_map`): a distilled student's states are close to the teacher's only up to a linear map
(fidelity is measured by CKA, which ignores one), and retrieval against the teacher's index needs the map
(README, "Embedding students", gives what it is worth). `embed` computes the same embeddings without
sentence-transformers (an optional extra).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from engine.errors import ModelError

MODULES_FILE = "modules.json"
MAP_DIR = "2_Dense_to_teacher"  # a student's `TeacherMap`
POOLING_MODES = {"mean": "pooling_mode_mean_tokens", "cls": "pooling_mode_cls_token",
                 "max": "pooling_mode_max_tokens"}
_TYPE = "sentence_transformers.models.{}"
_SIDE_FILES = ("sentence_bert_config.json", "config_sentence_transformers.json")


@dataclass(frozen=True)
class Embedder:
    """A sentence embedder's recipe after the encoder: `pooling` (mean, cls or max) of the token states,
    then `after` (module kind, folder relative to the teacher's folder, for Dense) in order. `home`: the
    teacher folder those paths are relative to (and where the side files come from); `prompts`: the
    prefixes the teacher expects per use ("query: ", "passage: ")."""

    pooling: str
    home: Path
    after: tuple[tuple[str, str], ...] = ()
    prompts: dict[str, str] = field(default_factory=dict, hash=False)

    @property
    def normalized(self) -> bool:
        return any(kind == "Normalize" for kind, _ in self.after)


def read_embedder(folder: Path) -> Embedder | None:
    """The sentence embedder described by `folder/modules.json`; None without one. A layout MiniGlot cannot
    carry to a student (no Transformer at the root, no Pooling, other pooling modes or modules) is refused."""
    path = Path(folder) / MODULES_FILE
    if not path.is_file():
        return None
    try:
        modules = sorted(json.loads(path.read_text(encoding="utf-8")), key=lambda m: int(m.get("idx", 0)))
        kinds = [(str(m["type"]).rsplit(".", 1)[-1], str(m.get("path", ""))) for m in modules]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ModelError(f"{path} is not a sentence-transformers module list ({exc})") from None
    if len(kinds) < 2 or kinds[0] != ("Transformer", "") or kinds[1][0] != "Pooling":
        raise ModelError(f"{path}: MiniGlot carries a Transformer at the folder's root followed by Pooling into "
                         f"students, not {[k for k, _ in kinds]}")
    unknown = [k for k, _ in kinds[2:] if k not in ("Dense", "Normalize")]
    if unknown:
        raise ModelError(f"{path}: modules {unknown} after pooling are not supported (Dense and Normalize are)")
    pooling = _pooling_mode(Path(folder) / kinds[1][1] / "config.json")
    prompts = {}
    side = Path(folder) / "config_sentence_transformers.json"
    if side.is_file():
        listed = json.loads(side.read_text(encoding="utf-8")).get("prompts") or {}
        prompts = {str(k): str(v) for k, v in listed.items()}
    return Embedder(pooling, Path(folder), tuple(kinds[2:]), prompts)


@dataclass(frozen=True)
class TeacherMap:
    """An affine map from a student's pooled vectors [.., hidden] onto the teacher's [.., width]."""

    weight: torch.Tensor  # [hidden, width]
    bias: torch.Tensor  # [width]

    def __call__(self, vectors: torch.Tensor) -> torch.Tensor:
        return vectors @ self.weight + self.bias


def fit_teacher_map(student: torch.Tensor, teacher: torch.Tensor, ridge: float = 1e-3) -> TeacherMap:
    """The ridge-regression `TeacherMap` from `student` pooled vectors [n, hidden] onto `teacher`'s [n, width]
    (the penalty is `ridge` × the mean squared centred input)."""
    x, y = student.double(), teacher.double()
    x_mean, y_mean = x.mean(0), y.mean(0)
    xc = x - x_mean
    penalty = ridge * xc.pow(2).sum() / x.shape[0]
    weight = torch.linalg.solve(xc.T @ xc + penalty * torch.eye(x.shape[1], dtype=x.dtype), xc.T @ (y - y_mean))
    return TeacherMap(weight.float(), (y_mean - x_mean @ weight).float())


def write_embedder(folder: Path, embedder: Embedder, hidden: int, to_teacher: TeacherMap | None = None) -> None:
    """Write sentence-transformers' layout into the model folder `folder` (hidden size `hidden`): the
    teacher's side files and pooling, `to_teacher` as a Dense module, then the teacher's modules after
    pooling (Dense folders copied)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    for name in _SIDE_FILES:
        if (embedder.home / name).is_file() and embedder.home.resolve() != folder.resolve():
            shutil.copyfile(embedder.home / name, folder / name)
    pooling = folder / "1_Pooling"
    pooling.mkdir(exist_ok=True)
    config = {"word_embedding_dimension": hidden,
              **{key: mode == embedder.pooling for mode, key in POOLING_MODES.items()}}
    (pooling / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    modules = [("Transformer", ""), ("Pooling", "1_Pooling")]
    if to_teacher is not None:
        dense = folder / MAP_DIR
        dense.mkdir(exist_ok=True)
        rows, width = to_teacher.weight.shape
        if rows != hidden:
            raise ValueError(f"the map onto the teacher has {rows} rows for a hidden size of {hidden}")
        (dense / "config.json").write_text(json.dumps({
            "in_features": hidden, "out_features": width, "bias": True,
            "activation_function": "torch.nn.modules.linear.Identity"}, indent=2) + "\n", encoding="utf-8")
        save_file({"linear.weight": to_teacher.weight.T.contiguous().float().cpu(),
                   "linear.bias": to_teacher.bias.contiguous().float().cpu()}, str(dense / "model.safetensors"))
        modules.append(("Dense", MAP_DIR))
    for kind, path in embedder.after:
        target = f"{len(modules)}_{kind}"
        if kind == "Dense":
            shutil.copytree(embedder.home / path, folder / target, dirs_exist_ok=True)
        else:
            (folder / target).mkdir(exist_ok=True)
        modules.append((kind, target))
    listing = [{"idx": i, "name": str(i), "path": path, "type": _TYPE.format(kind)}
               for i, (kind, path) in enumerate(modules)]
    (folder / MODULES_FILE).write_text(json.dumps(listing, indent=2) + "\n", encoding="utf-8")


@torch.no_grad()
def embed(model: Any, tokenizer: Any, texts: Sequence[str], embedder: Embedder, to_teacher: TeacherMap | None = None,
          prompt: str = "", max_length: int = 512, batch_size: int = 32) -> torch.Tensor:
    """Sentence embeddings [texts, width] of an encoder (its last hidden states) the way `embedder` makes them.
    Texts are batched in order of length (as sentence-transformers does), so a batch pads little."""
    from safetensors.torch import load_file

    denses = [load_file(str(embedder.home / path / "model.safetensors")) for kind, path in embedder.after
              if kind == "Dense"]
    configs = [json.loads((embedder.home / path / "config.json").read_text(encoding="utf-8"))
               for kind, path in embedder.after if kind == "Dense"]
    device = next(model.parameters()).device
    model.eval()
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer([prompt + texts[i] for i in order[start:start + batch_size]], padding=True,
                          truncation=True, max_length=max_length, return_tensors="pt").to(device)
        vectors = pool(model(**batch)[0].float(), batch["attention_mask"], embedder.pooling).cpu()
        if to_teacher is not None:
            vectors = to_teacher(vectors)
        dense = iter(zip(denses, configs, strict=True))
        for kind, _ in embedder.after:
            if kind == "Dense":
                weights, config = next(dense)
                vectors = vectors @ weights["linear.weight"].T + weights.get("linear.bias", 0)
                vectors = _activation(config.get("activation_function", "torch.nn.modules.activation.Tanh"))(vectors)
            else:
                vectors = torch.nn.functional.normalize(vectors, dim=-1)
        out.append(vectors)
    return torch.cat(out)[torch.tensor(order).argsort()] if out else torch.zeros(0)  # back in the texts' order


def pool(states: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Pooled [batch, hidden] vectors of token `states` [batch, tokens, hidden] under attention `mask`."""
    if mode == "cls":
        return states[:, 0]
    weights = mask.unsqueeze(-1).to(states.dtype)
    if mode == "max":
        return states.masked_fill(weights == 0, -1e9).max(1).values
    return (states * weights).sum(1) / weights.sum(1).clamp(min=1e-9)


def _pooling_mode(path: Path) -> str:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: cannot read the pooling configuration ({exc})") from None
    modes = [mode for mode, key in POOLING_MODES.items() if config.get(key)]
    others = [key for key, on in config.items() if key.startswith("pooling_mode") and on
              and key not in POOLING_MODES.values()]
    if len(modes) != 1 or others:
        raise ModelError(f"{path}: MiniGlot carries one of {', '.join(POOLING_MODES)} pooling into students, "
                         f"not {[k for k, on in config.items() if k.startswith('pooling_mode') and on]}")
    return modes[0]


def _activation(name: str) -> Any:
    if name.endswith("Identity"):
        return lambda x: x
    if name.endswith("Tanh"):
        return torch.tanh
    raise ModelError(f"a Dense module's activation {name} is not supported (Identity and Tanh are)")


class _Normalize(torch.nn.Module):
    def forward(self, vectors: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(vectors, dim=-1)


class SentenceHead(torch.nn.Module):
    """`embedder`'s steps after the encoder as one torch module (for export): pooling of token `states`
    [batch, tokens, hidden] under the attention `mask`, then its Dense (Linear and activation) and Normalize
    modules in order; the same embeddings as `embed` and sentence-transformers."""

    def __init__(self, embedder: Embedder) -> None:
        from safetensors.torch import load_file

        super().__init__()
        self.pooling = embedder.pooling
        steps: list[torch.nn.Module] = []
        for kind, path in embedder.after:
            if kind == "Normalize":
                steps.append(_Normalize())
                continue
            config = json.loads((embedder.home / path / "config.json").read_text(encoding="utf-8"))
            weights = load_file(str(embedder.home / path / "model.safetensors"))
            linear = torch.nn.Linear(int(config["in_features"]), int(config["out_features"]),
                                     bias="linear.bias" in weights)
            linear.load_state_dict({k.removeprefix("linear."): v.float() for k, v in weights.items()})
            name = config.get("activation_function", "torch.nn.modules.activation.Tanh")
            _activation(name)  # refuses what `embed` refuses
            steps += [linear, torch.nn.Identity() if name.endswith("Identity") else torch.nn.Tanh()]
        self.after = torch.nn.Sequential(*steps)

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.after(pool(states.float(), mask, self.pooling))
