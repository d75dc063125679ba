"""Teacher sources and model loading: packaged offline models, hub ids and local folders.

Weights load from safetensors only, unless the user opts in to pickled `pytorch_model.bin`.
Remote code is never trusted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.errors import ModelError, RecipeError
from engine.hub import offline_reason
from engine.models.adapters import FamilyAdapter, adapter_for

if TYPE_CHECKING:
    from engine.shapes import Shape

HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.bin"]
REMOTE_CODE = "auto_map"  # config.json / tokenizer_config.json: classes in the hub repository's own code


@dataclass
class LoadedModel:
    """A model with its tokenizer and family adapter."""

    model: Any
    tokenizer: Any
    adapter: FamilyAdapter
    source: str = ""

    @property
    def has_mlm_head(self) -> bool:
        return self.adapter.mlm_head(self.model) is not None

    @property
    def config(self) -> Any:
        return self.model.config


@dataclass(frozen=True)
class FolderInfo:
    """What a model folder holds, read without loading weights."""

    path: Path
    config: Any
    weight_names: frozenset[str]
    safetensors: bool

    @property
    def mlm_head(self) -> bool:
        return any(n.startswith(("cls.predictions.", "lm_head.")) for n in self.weight_names)

    @property
    def pooler(self) -> bool:
        return any(".pooler." in f".{n}" for n in self.weight_names)

    def shape(self) -> Shape:
        """The folder's architecture shape (no weights loaded)."""
        from engine.shapes import Shape

        return Shape.from_config(self.config, self.mlm_head, self.pooler)


def resolve_source(source: str) -> Path:
    """A local folder for `packaged:<name>`, `hub:<id>[@revision]` or a folder path."""
    if source.startswith("packaged:"):
        from engine.models.packaged import packaged_model_dir

        return packaged_model_dir(source.removeprefix("packaged:"))
    if source.startswith("hub:"):
        return _hub_snapshot(source.removeprefix("hub:"))
    path = Path(source).expanduser()
    if path.is_file():
        raise ModelError(f"{path} is a file: give the model folder that holds it (config.json, weights and "
                         "tokenizer)")
    if not path.is_dir():
        raise ModelError(f"model folder not found: {path} (give a folder with config.json, "
                         "packaged:multilingual-e5-small, or hub:<model id>)")
    if not (path / "config.json").is_file():
        raise ModelError(f"{path} has no config.json: it is not a Hugging Face model folder")
    return path


def _hub_snapshot(spec: str) -> Path:
    from huggingface_hub import snapshot_download

    repo_id, _, revision = spec.partition("@")
    kwargs = {"repo_id": repo_id, "revision": revision or None, "allow_patterns": HUB_PATTERNS}
    try:
        return Path(snapshot_download(local_files_only=True, **kwargs))
    except Exception:
        pass  # not cached: download below
    reason = offline_reason()
    if reason:
        raise ModelError(
            f"cannot download hub:{spec}: the Hugging Face hub is not reachable from here (offline: {reason}). Use "
            "packaged:multilingual-e5-small, packaged:all-minilm-l6-v2 or a local folder, or run where the hub "
            "is reachable once to cache the model."
        )
    try:
        return Path(snapshot_download(**kwargs))
    except Exception as exc:
        raise ModelError(f"cannot download hub:{spec}: {exc}") from None


def inspect_folder(path: Path, allow_pickle: bool = False) -> FolderInfo:
    """Config and weight names of a model folder; refuses unsupported or unsafe folders."""
    from safetensors import safe_open
    from transformers import AutoConfig

    path = Path(path)
    _refuse_unknown_remote_code(path)
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=False)
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path}: cannot read config.json ({exc})") from None
    adapter_for(config.model_type)
    shards = sorted(path.glob("*.safetensors"))
    if shards:
        names: set[str] = set()
        for shard in shards:
            try:
                with safe_open(str(shard), framework="pt") as f:
                    names.update(f.keys())
            except Exception as exc:  # safetensors raises its own SafetensorError for a damaged file
                raise ModelError(f"{shard} is damaged or incomplete ({exc}); copy or download the model "
                                 "again") from None
        return FolderInfo(path, config, frozenset(names), True)
    pickles = sorted(path.glob("pytorch_model*.bin"))
    if not pickles:
        raise ModelError(f"{path} has no weights (*.safetensors or pytorch_model.bin)")
    if not allow_pickle:
        raise ModelError(
            f"{path} has only pickled weights ({pickles[0].name}); loading a pickle can run arbitrary code. "
            "Convert it to safetensors, or set teacher.allow_pickle = true if you trust its origin."
        )
    import torch

    names = set()
    for shard in pickles:
        names.update(torch.load(shard, map_location="meta", weights_only=True).keys())
    return FolderInfo(path, config, frozenset(names), False)


def _refuse_unknown_remote_code(path: Path) -> None:
    """An architecture MiniGlot does not know whose config names its own code: refused before transformers
    reads it, which would advise trusting remote code (MiniGlot never runs a model's own code)."""
    try:
        declared = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return  # AutoConfig says what is wrong
    if isinstance(declared, dict) and REMOTE_CODE in declared:
        adapter_for(str(declared.get("model_type", "")), remote_code=True)


def strip_remote_code(folder: Path) -> None:
    """Drop `auto_map` from a written folder's config.json and tokenizer_config.json: a student keeps stock
    classes, so it must not point at a teacher's own code on the hub."""
    for name in ("config.json", "tokenizer_config.json"):
        file = Path(folder) / name
        data = json.loads(file.read_text(encoding="utf-8")) if file.is_file() else None
        if isinstance(data, dict) and data.pop(REMOTE_CODE, None) is not None:
            file.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def load_model(path: Path, allow_pickle: bool = False, source: str = "") -> LoadedModel:
    """Load a folder as an MLM model when it has an MLM head, else as a bare encoder."""
    from transformers import AutoModel, AutoModelForMaskedLM

    info = inspect_folder(path, allow_pickle)
    adapter = adapter_for(info.config.model_type)
    tokenizer = fast_tokenizer(path)
    kwargs: dict[str, Any] = {"use_safetensors": info.safetensors, "trust_remote_code": False}
    if info.mlm_head:
        model = AutoModelForMaskedLM.from_pretrained(path, **kwargs)
    else:
        model = AutoModel.from_pretrained(path, add_pooling_layer=info.pooler, **kwargs)
    model.eval()
    return LoadedModel(model, tokenizer, adapter, source or str(path))


def fast_tokenizer(path: Path) -> Any:
    """The folder's fast tokenizer (MiniGlot needs its offsets and `tokenizer.json`), or a ModelError."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, use_fast=True, trust_remote_code=False)
    except Exception as exc:
        raise ModelError(f"{path}: no usable tokenizer ({exc}); the folder needs tokenizer files") from None
    if not tokenizer.is_fast:
        raise ModelError(f"{path}: only a slow tokenizer is available; MiniGlot needs a fast tokenizer.json")
    return tokenizer


def source_shape(source: str, allow_pickle: bool = False) -> Shape:
    """The `Shape` of a teacher source, read from its config and weight names (no weights loaded); a
    RecipeError (teacher.source) when its tokenizer has more entries than the model has embedding rows."""
    path = resolve_source(source)
    info = inspect_folder(path, allow_pickle)
    entries = tokenizer_entries(path)
    if entries is not None and entries[1] > info.config.vocab_size:
        raise RecipeError(f"{source}: the tokenizer has {entries[1]:,} entries but the model only "
                          f"{info.config.vocab_size:,} embedding rows, so ids past row {info.config.vocab_size - 1} "
                          "would fail; the tokenizer and the weights do not belong together", "teacher.source")
    return info.shape()


def tokenizer_entries(path: Path) -> tuple[str, int] | None:
    """The type and size (vocabulary plus added tokens) of the folder's tokenizer.json, if it has one."""
    file = Path(path) / "tokenizer.json"
    if not file.is_file():
        return None
    try:
        tokenizer = json.loads(file.read_text(encoding="utf-8"))
        vocab = tokenizer["model"].get("vocab") or []
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, AttributeError) as exc:
        raise ModelError(f"{file} is damaged ({exc}); save the model's tokenizer into the folder again") from None
    ids = set(vocab.values()) if isinstance(vocab, dict) else set(range(len(vocab)))
    ids |= {token["id"] for token in tokenizer.get("added_tokens", [])}  # e.g. <mask> added after training
    return tokenizer["model"].get("type"), len(ids)


def load_teacher(source: str, allow_pickle: bool = False) -> LoadedModel:
    return load_model(resolve_source(source), allow_pickle, source)


def weight_bytes(model: Any) -> int:
    """The bytes of a model's parameters, tied weights counted once (about what its safetensors take)."""
    return sum(p.numel() * p.element_size() for p in {id(p): p for p in model.parameters()}.values())


def max_positions(config: Any) -> int:
    """Longest input the position embeddings allow (RoBERTa-style models offset positions by pad id + 1)."""
    offset = config.pad_token_id + 1 if config.model_type in ("roberta", "xlm-roberta") else 0
    return config.max_position_embeddings - offset
