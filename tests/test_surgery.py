"""FFN/head importance, FFN pruning and hidden-size reduction on tiny BERT and XLM-R models."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertForMaskedLM, BertModel, XLMRobertaConfig, XLMRobertaForMaskedLM

from engine.models.adapters import adapter_for
from engine.surgery.ffn import prune_ffn, prune_ffn_refit
from engine.surgery.hidden import activation_basis, residual_moment, shrink_hidden, svd_basis, truncation_basis
from engine.surgery.importance import ffn_activation_importance, ffn_importance, head_importance

D, LAYERS, HEADS, FFN, VOCAB = 64, 4, 4, 128, 1000
SIZES = {
    "vocab_size": VOCAB,
    "hidden_size": D,
    "num_hidden_layers": LAYERS,
    "num_attention_heads": HEADS,
    "intermediate_size": FFN,
    "max_position_embeddings": 64,
}
KINDS = ("bert-mlm", "xlmr-mlm", "bert-base")


def build(kind: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    if kind == "bert-mlm":
        model = BertForMaskedLM(BertConfig(**SIZES))
    elif kind == "xlmr-mlm":
        model = XLMRobertaForMaskedLM(
            XLMRobertaConfig(**SIZES, pad_token_id=1, bos_token_id=0, eos_token_id=2)
        )
    else:
        model = BertModel(BertConfig(**SIZES), add_pooling_layer=True)
    # Untrained LayerNorms are identity maps; perturb them so their surgery is exercised.
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.add_(0.1 * torch.randn_like(module.weight))
                module.bias.add_(0.1 * torch.randn_like(module.bias))
    return model.eval()


def make_batches(model: torch.nn.Module, count: int = 3, seed: int = 1) -> list[dict]:
    generator = torch.Generator().manual_seed(seed)
    pad = model.config.pad_token_id
    batches = []
    for _ in range(count):
        ids = torch.randint(5, VOCAB, (3, 12), generator=generator)
        mask = torch.ones_like(ids)
        mask[1, 9:] = 0
        mask[2, 5:] = 0
        ids[mask == 0] = pad
        batches.append({"input_ids": ids, "attention_mask": mask})
    return batches


def loss_fn(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    if hasattr(out, "logits"):
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        return torch.nn.functional.cross_entropy(out.logits.flatten(0, 1), labels.flatten())
    return out.last_hidden_state.pow(2).mean() + out.pooler_output.sum()


def outputs(model: torch.nn.Module, batch: dict) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    if hasattr(out, "logits"):
        return {"logits": out.logits}
    return {"last_hidden_state": out.last_hidden_state, "pooler_output": out.pooler_output}


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[key] - b[key]).abs().max().item() for key in a)


RELOAD = r"""
import json, sys, torch
from transformers import AutoModel, AutoModelForMaskedLM
results = []
for job in json.load(open(sys.argv[1])):
    auto = AutoModelForMaskedLM if job["mlm"] else AutoModel
    model, info = auto.from_pretrained(job["dir"], output_loading_info=True)
    model.eval()
    io = torch.load(job["io"])
    with torch.no_grad():
        out = model(input_ids=io["input_ids"], attention_mask=io["attention_mask"])
    diff = max((getattr(out, key) - value).abs().max().item() for key, value in io["expected"].items())
    tied = None
    if job["mlm"]:
        tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    results.append({"diff": diff, "tied": tied, "config": model.config.to_dict(),
                    "info": {k: [str(x) for x in v] for k, v in info.items()}})
print(json.dumps(results))
"""


def reload_in_fresh_process(tmp_path: Path, models: dict[str, torch.nn.Module], batch: dict) -> list[dict]:
    """Save each model, reload all in one new interpreter; assert clean loading, return results."""
    jobs = []
    for kind, model in models.items():
        folder = tmp_path / kind
        model.save_pretrained(folder)
        io = {**batch, "expected": outputs(model, batch)}
        torch.save(io, tmp_path / f"{kind}.pt")
        jobs.append({"dir": str(folder), "io": str(tmp_path / f"{kind}.pt"), "mlm": kind.endswith("mlm")})
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    proc = subprocess.run(
        [sys.executable, "-c", RELOAD, str(tmp_path / "jobs.json")],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    assert "newly initialized" not in proc.stderr, proc.stderr
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    for kind, result in zip(models, results, strict=True):
        assert all(not keys for keys in result["info"].values()), (kind, result["info"])
        assert result["diff"] <= 1e-5, (kind, result["diff"])
        if kind.endswith("mlm"):
            assert result["tied"], kind
    return results


def assert_clean(model: torch.nn.Module) -> None:
    assert all(p.grad is None for p in model.parameters())
    for module in model.modules():
        assert not module._forward_hooks
        assert not module._forward_pre_hooks


# ---------------------------------------------------------------- importance + FFN pruning


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("zeroed_side", ["ffn_in", "ffn_out"])
def test_zeroed_neurons_score_zero_and_are_the_ones_pruned(kind: str, zeroed_side: str) -> None:
    model = build(kind)
    adapter = adapter_for(model.config.model_type)
    batches = make_batches(model)
    dead = torch.tensor([3, 17, 40, 41, 99, 127])
    originals = []
    with torch.no_grad():
        for layer in adapter.layers(model):
            parts = adapter.layer_parts(layer)
            if zeroed_side == "ffn_in":
                parts.ffn_in.weight[dead] = 0
                parts.ffn_in.bias[dead] = 0
            else:
                parts.ffn_out.weight[:, dead] = 0
            originals.append((parts.ffn_in.weight.clone(), parts.ffn_out.weight.clone()))
    frozen = adapter.embeddings(model).word_embeddings.weight
    frozen.requires_grad_(False)  # a frozen parameter must stay frozen
    before = outputs(model, batches[0])

    scores = ffn_importance(model, adapter, batches, loss_fn)

    assert len(scores) == LAYERS
    alive = torch.ones(FFN, dtype=torch.bool)
    alive[dead] = False
    for layer_scores in scores:
        assert layer_scores.shape == (FFN,)
        assert layer_scores[dead].max() < 1e-9
        assert layer_scores[alive].min() > 0
    assert_clean(model)
    assert not model.training
    assert all(p.requires_grad == (p is not frozen) for p in model.parameters())

    prune_ffn(model, adapter, scores, FFN - len(dead))

    assert model.config.intermediate_size == FFN - len(dead)
    for layer, (ffn_in, ffn_out) in zip(adapter.layers(model), originals, strict=True):
        parts = adapter.layer_parts(layer)
        assert torch.equal(parts.ffn_in.weight, ffn_in[alive])
        assert torch.equal(parts.ffn_out.weight, ffn_out[:, alive])
        assert parts.ffn_in.out_features == parts.ffn_out.in_features == FFN - len(dead)
    assert max_diff(outputs(model, batches[0]), before) <= 1e-5


def test_ffn_importance_is_abs_of_summed_signed_taylor_terms() -> None:
    model = build("xlmr-mlm")
    adapter = adapter_for(model.config.model_type)
    batches = make_batches(model, count=2)
    scores = ffn_importance(model, adapter, batches, loss_fn)
    ffn_in = adapter.layer_parts(adapter.layers(model)[2]).ffn_in
    total = loss_fn(model, batches[0]) + loss_fn(model, batches[1])
    grad_w, grad_b = torch.autograd.grad(total, [ffn_in.weight, ffn_in.bias])
    expected = ((ffn_in.weight * grad_w).sum(dim=1) + ffn_in.bias * grad_b).abs()
    assert torch.allclose(scores[2], expected.detach(), rtol=1e-4, atol=1e-8)


@pytest.mark.parametrize("kind", KINDS)
def test_activation_importance_is_the_norm_of_each_neurons_contribution(kind: str) -> None:
    model = build(kind)
    adapter = adapter_for(model.config.model_type)
    batches = make_batches(model, count=2)
    dead = torch.tensor([5, 60])
    with torch.no_grad():
        for layer in adapter.layers(model):
            adapter.layer_parts(layer).ffn_out.weight[:, dead] = 0
    layer = adapter.layers(model)[2]
    seen = []  # the intermediate module's output (act(ffn_in(x))) at real tokens: what the score must use
    handle = layer.intermediate.register_forward_hook(lambda _m, _i, out: seen.append(out[mask["now"]]))
    mask = {}
    for batch in batches:
        mask["now"] = batch["attention_mask"].bool()
        outputs(model, batch)
    handle.remove()
    expected = torch.cat(seen).norm(dim=0) * adapter.layer_parts(layer).ffn_out.weight.norm(dim=0)

    scores = ffn_activation_importance(model, adapter, batches)

    assert [s.shape for s in scores] == [(FFN,)] * LAYERS
    assert torch.allclose(scores[2], expected, rtol=1e-4, atol=1e-7)
    assert all(s[dead].max() == 0 and s.min() >= 0 for s in scores)
    assert_clean(model)


@pytest.mark.parametrize("kind", KINDS)
def test_refitted_pruning_reproduces_the_unpruned_outputs_better_than_slicing(kind: str) -> None:
    model = build(kind)
    reference = copy.deepcopy(model)
    adapter = adapter_for(model.config.model_type)
    batches = make_batches(model, count=6)
    scores = ffn_activation_importance(model, adapter, batches)
    sliced = prune_ffn(copy.deepcopy(model), adapter, scores, 64)
    expected = outputs(reference, batches[0])

    refitted = prune_ffn_refit(model, reference, adapter, scores, 64, batches)

    assert refitted is model and model.config.intermediate_size == 64
    keeps = [torch.topk(layer_scores, 64).indices.sort().values for layer_scores in scores]
    for layer, original, keep in zip(adapter.layers(model), adapter.layers(reference), keeps, strict=True):
        parts, before = adapter.layer_parts(layer), adapter.layer_parts(original)
        assert torch.equal(parts.ffn_in.weight, before.ffn_in.weight[keep])  # the input side is sliced only
        assert parts.ffn_out.weight.shape == (D, 64) and parts.ffn_out.in_features == 64
    for name, value in expected.items():
        error_refitted = (outputs(model, batches[0])[name] - value).pow(2).mean()
        error_sliced = (outputs(sliced, batches[0])[name] - value).pow(2).mean()
        assert error_refitted < 0.5 * error_sliced, name
    assert reference.config.intermediate_size == FFN  # the reference is only read
    assert_clean(model)
    assert_clean(reference)


def test_pruned_models_reload_in_a_fresh_process(tmp_path: Path) -> None:
    models = {}
    for kind in KINDS:
        model = build(kind)
        adapter = adapter_for(model.config.model_type)
        batches = make_batches(model, count=1)
        scores = ffn_activation_importance(model, adapter, batches)
        models[kind] = prune_ffn_refit(model, copy.deepcopy(model), adapter, scores, 48, batches)
    results = reload_in_fresh_process(tmp_path, models, make_batches(models["bert-mlm"], count=1)[0])
    assert all(result["config"]["intermediate_size"] == 48 for result in results)


def test_prune_ffn_rejects_impossible_widths() -> None:
    model = build("bert-mlm")
    adapter = adapter_for("bert")
    scores = [torch.rand(FFN) for _ in range(LAYERS)]
    for width in (0, FFN + 1):
        with pytest.raises(ValueError, match="FFN width"):
            prune_ffn(model, adapter, scores, width)
    with pytest.raises(ValueError, match="layers"):
        prune_ffn(model, adapter, scores[:2], 64)
    with pytest.raises(ValueError, match="layer 3"):
        prune_ffn(model, adapter, [*scores[:3], torch.rand(FFN - 1)], 64)
    assert all(adapter.layer_parts(layer).ffn_in.out_features == FFN for layer in adapter.layers(model))
    assert model.config.intermediate_size == FFN


# ---------------------------------------------------------------- head importance


@pytest.mark.parametrize("kind", KINDS)
def test_head_importance_zero_for_a_dead_head_and_hooks_removed(kind: str) -> None:
    model = build(kind)
    adapter = adapter_for(model.config.model_type)
    batches = make_batches(model)
    head_dim = D // HEADS
    value = adapter.layer_parts(adapter.layers(model)[1]).value
    with torch.no_grad():
        value.weight[2 * head_dim : 3 * head_dim] = 0
        value.bias[2 * head_dim : 3 * head_dim] = 0
    before = outputs(model, batches[0])

    scores = head_importance(model, adapter, batches, loss_fn)

    assert scores.shape == (LAYERS, HEADS)
    assert (scores >= 0).all()
    assert scores[1, 2] < 1e-9
    live = torch.ones(LAYERS, HEADS, dtype=torch.bool)
    live[1, 2] = False
    assert scores[live].min() > 0
    assert_clean(model)
    assert all(p.requires_grad for p in model.parameters())
    assert max_diff(outputs(model, batches[0]), before) == 0


def test_head_importance_removes_hooks_on_error() -> None:
    model = build("bert-mlm")
    adapter = adapter_for("bert")
    batch = make_batches(model, count=1)[0]
    before = outputs(model, batch)

    def failing(model: torch.nn.Module, batch: dict) -> torch.Tensor:
        loss_fn(model, batch)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        head_importance(model, adapter, [batch], failing)
    assert_clean(model)
    assert max_diff(outputs(model, batch), before) == 0


# ---------------------------------------------------------------- hidden-size reduction


@pytest.mark.parametrize("kind", KINDS)
def test_identity_basis_leaves_outputs_unchanged(kind: str) -> None:
    model = build(kind)
    batch = make_batches(model, count=1)[0]
    before = outputs(model, batch)
    shrink_hidden(model, adapter_for(model.config.model_type), truncation_basis(D, D))
    assert max_diff(outputs(model, batch), before) <= 1e-5


@pytest.mark.parametrize("kind", ["bert-mlm", "xlmr-mlm"])
def test_truncation_keeps_first_dims_of_each_head(kind: str) -> None:
    model = build(kind)
    adapter = adapter_for(model.config.model_type)
    k, old_head, new_head = 32, D // HEADS, 32 // HEADS
    per_head = torch.cat([torch.arange(h * old_head, h * old_head + new_head) for h in range(HEADS)])
    parts = adapter.layer_parts(adapter.layers(model)[2])
    query, attn_out = parts.query.weight.clone(), parts.attention_out.weight.clone()
    ffn_in, norm = parts.ffn_in.weight.clone(), parts.output_norm.weight.clone()
    words = adapter.embeddings(model).word_embeddings.weight.clone()
    transform = adapter.mlm_head(model).dense.weight.clone()

    result = shrink_hidden(model, adapter, truncation_basis(D, k))

    assert result is model
    assert model.config.hidden_size == k
    assert torch.equal(parts.query.weight, query[per_head][:, :k])
    assert torch.equal(parts.attention_out.weight, attn_out[:k][:, per_head])
    assert torch.equal(parts.ffn_in.weight, ffn_in[:, :k])
    assert torch.equal(parts.output_norm.weight, norm[:k])
    embeddings = adapter.embeddings(model)
    assert torch.equal(embeddings.word_embeddings.weight, words[:, :k])
    assert torch.equal(adapter.mlm_head(model).dense.weight, transform[:k, :k])
    assert model.get_output_embeddings().weight is embeddings.word_embeddings.weight
    attention = adapter.attention_modules(model)[0]
    assert (attention.attention_head_size, attention.all_head_size) == (new_head, k)
    logits = outputs(model, make_batches(model, count=1)[0])["logits"]
    assert logits.shape == (3, 12, VOCAB) and torch.isfinite(logits).all()


def test_shrunk_models_reload_in_a_fresh_process(tmp_path: Path) -> None:
    torch.manual_seed(5)
    basis = torch.linalg.qr(torch.randn(D, 32)).Q
    models = {}
    for kind in KINDS:
        model = build(kind)
        models[kind] = shrink_hidden(model, adapter_for(model.config.model_type), basis)
    bert = models["bert-base"]
    assert bert.pooler.dense.weight.shape == (32, 32)
    assert models["xlmr-mlm"].lm_head.dense.weight.shape == (32, 32)
    assert models["bert-mlm"].cls.predictions.decoder.weight.shape == (VOCAB, 32)
    results = reload_in_fresh_process(tmp_path, models, make_batches(bert, count=1)[0])
    assert all(result["config"]["hidden_size"] == 32 for result in results)


def test_shrink_hidden_rejects_bad_bases() -> None:
    model = build("bert-mlm")
    adapter = adapter_for("bert")
    with pytest.raises(ValueError, match="multiple of the 4 attention heads"):
        shrink_hidden(model, adapter, truncation_basis(D, 30))
    with pytest.raises(ValueError, match="shape"):
        shrink_hidden(model, adapter, truncation_basis(D + 4, 32))
    with pytest.raises(ValueError, match="between 1"):
        truncation_basis(D, D + 1)
    assert model.config.hidden_size == D


def residual_states(model: torch.nn.Module, batches: list[dict]) -> torch.Tensor:
    rows = []
    with torch.no_grad():
        for batch in batches:
            out = model(**batch, output_hidden_states=True)
            rows += [state[batch["attention_mask"].bool()] for state in out.hidden_states]
    return torch.cat(rows).double()


@pytest.mark.parametrize("kind", ["bert-mlm", "xlmr-mlm"])
def test_svd_basis_is_orthonormal_and_beats_truncation(kind: str) -> None:
    model = build(kind)
    adapter = adapter_for(model.config.model_type)
    batches = make_batches(model)
    model.train()
    basis = svd_basis(residual_moment(model, adapter, batches), 16)
    assert model.training
    assert basis.shape == (D, 16)
    assert torch.allclose(basis.T @ basis, torch.eye(16), atol=1e-5)
    model.eval()
    states = residual_states(model, batches)
    energy = (states @ basis.double()).pow(2).sum()
    assert energy > 1.2 * (states @ truncation_basis(D, 16).double()).pow(2).sum()
    torch.manual_seed(0)
    random_basis = torch.linalg.qr(torch.randn(D, 16)).Q.double()
    assert energy > (states @ random_basis).pow(2).sum()


def test_svd_basis_ignores_padding() -> None:
    model = build("bert-mlm")
    adapter = adapter_for("bert")
    batches = make_batches(model)
    other = [{**b, "input_ids": b["input_ids"].masked_fill(b["attention_mask"] == 0, 7)} for b in batches]
    first, second = (svd_basis(residual_moment(model, adapter, b), 8) for b in (batches, other))
    assert torch.allclose(first, second, atol=1e-5)


def test_activation_basis_keeps_the_most_active_dimensions_in_order() -> None:
    moment = torch.diag(torch.tensor([1.0, 9.0, 0.5, 4.0, 7.0], dtype=torch.float64))
    basis = activation_basis(moment, 3)
    assert basis.tolist() == torch.eye(5)[:, [1, 3, 4]].tolist()
    model = build("bert-mlm")
    adapter = adapter_for("bert")
    batches = make_batches(model)
    model.eval()
    states = residual_states(model, batches)
    chosen = activation_basis(residual_moment(model, adapter, batches), 16).double()
    assert (states @ chosen).pow(2).sum() >= (states @ truncation_basis(D, 16).double()).pow(2).sum()
