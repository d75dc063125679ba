"""Size and speed measurement: parameter arithmetic, interleaved timing, ratios (no timing asserts)."""

from __future__ import annotations

import pytest
import torch
from tiny import tiny_model_dir
from transformers import BertConfig, BertForMaskedLM, BertModel

from engine.errors import ModelError
from engine.evaluate.speed import folder_bytes, measure_speed, parameter_breakdown, ratios_to
from engine.models.adapters import BertAdapter
from engine.models.loading import LoadedModel, load_model
from engine.shapes import Shape

CONFIG = {"vocab_size": 300, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
          "intermediate_size": 64, "max_position_embeddings": 64}


@pytest.mark.parametrize("name", ["bert", "xlm-roberta", "bert-nohead", "xlm-roberta-nohead"])
def test_parameter_breakdown_matches_shape_arithmetic(tiny_models, name):
    loaded = load_model(tiny_models[name])
    parts = parameter_breakdown(loaded)
    expected = Shape.from_config(loaded.config, mlm_head=loaded.has_mlm_head, pooler=False).params()
    assert {k: parts[k] for k in expected} == expected
    assert parts["total"] == sum(expected.values()) == sum(p.numel() for p in loaded.model.parameters())


def test_tied_decoder_is_counted_once_and_untied_under_head():
    tied = LoadedModel(BertForMaskedLM(BertConfig(**CONFIG)), None, BertAdapter())
    untied = LoadedModel(BertForMaskedLM(BertConfig(**CONFIG, tie_word_embeddings=False)), None, BertAdapter())
    assert tied.model.cls.predictions.decoder.weight is tied.model.bert.embeddings.word_embeddings.weight
    with_duplicates = sum(p.numel() for _, p in tied.model.named_parameters(remove_duplicate=False))
    t, u = parameter_breakdown(tied), parameter_breakdown(untied)
    assert t["total"] == with_duplicates - 300 * 32 - 300  # decoder weight and bias are shared aliases
    assert t["embeddings"] == u["embeddings"] and t["encoder"] == u["encoder"]
    predictions = untied.model.cls.predictions  # transformers 5 unties the decoder bias as well
    assert u["head"] == t["head"] + 300 * 32 + (0 if predictions.decoder.bias is predictions.bias else 300)
    assert t["embeddings"] + t["encoder"] + t["head"] == t["total"]


def test_pooler_counts_as_head():
    bare = parameter_breakdown(LoadedModel(BertModel(BertConfig(**CONFIG), add_pooling_layer=False), None,
                                           BertAdapter()))
    pooled = parameter_breakdown(LoadedModel(BertModel(BertConfig(**CONFIG)), None, BertAdapter()))
    assert bare["head"] == 0
    assert pooled["head"] == 32 * 32 + 32
    assert pooled["total"] == bare["total"] + 32 * 32 + 32


def test_folder_bytes_sums_the_files(tiny_models):
    folder = tiny_models["bert"]
    assert folder_bytes(folder) == sum(p.stat().st_size for p in folder.iterdir() if p.is_file()) > 0


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> dict[str, LoadedModel]:
    root = tmp_path_factory.mktemp("speed")
    return {"small": load_model(tiny_model_dir(root / "small", "bert", layers=2)),
            "big": load_model(tiny_model_dir(root / "big", "xlm-roberta", layers=4))}


def test_measure_speed_interleaves_models_on_realistic_inputs(pair):
    calls: list[tuple[str, tuple[int, ...], torch.Tensor]] = []
    hooks = [m.adapter.base(m.model).register_forward_pre_hook(
        lambda _module, _args, kwargs, name=name: calls.append((name, tuple(kwargs["input_ids"].shape),
                                                                kwargs["input_ids"])), with_kwargs=True)
        for name, m in pair.items()]
    pair["big"].model.train()
    threads = torch.get_num_threads()
    try:
        result = measure_speed(pair, seq_len=16, latency_repeats=3, warmup=2, throughput_batch=4,
                               throughput_repeats=2, threads=1)
    finally:
        for hook in hooks:
            hook.remove()
    assert torch.get_num_threads() == threads
    assert pair["big"].model.training and not pair["small"].model.training
    assert [name for name, _, _ in calls] == ["small", "big"] * (2 + 3 + 1 + 2)
    assert [shape for _, shape, _ in calls] == [(1, 16)] * 10 + [(4, 16)] * 6
    for name, _, ids in calls:
        tok = pair[name].tokenizer
        assert ids[:, 0].eq(tok.cls_token_id).all() and ids[:, -1].eq(tok.sep_token_id).all()
        inner = ids[:, 1:-1]
        assert not torch.isin(inner, torch.tensor(tok.all_special_ids)).any()
        assert int(inner.max()) < pair[name].config.vocab_size
    assert torch.equal(calls[0][2], calls[2][2])  # the same seeded input at every repeat
    assert set(result) == {"small", "big"}
    for row in result.values():
        assert set(row) == {"latency_ms_median", "latency_ms_p90", "tokens_per_second"}
        assert 0 < row["latency_ms_median"] <= row["latency_ms_p90"]
        assert row["tokens_per_second"] > 0


def test_measure_speed_names_a_list_by_source_and_checks_length(pair):
    small = pair["small"]
    twin = LoadedModel(small.model, small.tokenizer, small.adapter, small.source)
    result = measure_speed([small, twin], seq_len=8, latency_repeats=1, warmup=0, throughput_batch=1,
                           throughput_repeats=1)
    assert list(result) == [f"{small.source}#0", f"{small.source}#1"]
    with pytest.raises(ModelError, match="seq_len"):
        measure_speed([small], seq_len=small.config.max_position_embeddings + 1)


def test_ratios_to_the_reference():
    speed = {"teacher": {"latency_ms_median": 10.0, "latency_ms_p90": 12.0, "tokens_per_second": 100.0},
             "student": {"latency_ms_median": 4.0, "latency_ms_p90": 5.0, "tokens_per_second": 300.0}}
    ratios = ratios_to(speed, "teacher")
    assert ratios["teacher"] == {"speedup_latency": 1.0, "speedup_throughput": 1.0}
    assert ratios["student"] == {"speedup_latency": 2.5, "speedup_throughput": 3.0}
    with pytest.raises(KeyError, match="nobody"):
        ratios_to(speed, "nobody")
