"""Per-family knowledge of where layers, FFN, heads, embeddings and the MLM head live.

BERT (mBERT, MiniLM, E5) and XLM-R/RoBERTa share one encoder layout in transformers; they differ
in the base-model attribute and in the MLM head's module names. Surgery code asks an adapter,
never a model class, so adding a family means adding one adapter here.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from engine.errors import ModelError


@dataclass(frozen=True)
class MlmHead:
    """The MLM head's parts: transform dense + LayerNorm, then the vocabulary decoder."""

    dense: nn.Linear
    layer_norm: nn.LayerNorm
    decoder: nn.Linear


@dataclass(frozen=True)
class LayerParts:
    """The modules of one transformer layer that surgery touches."""

    query: nn.Linear
    key: nn.Linear
    value: nn.Linear
    attention_out: nn.Linear
    attention_norm: nn.LayerNorm
    ffn_in: nn.Linear
    ffn_out: nn.Linear
    output_norm: nn.LayerNorm


class FamilyAdapter:
    """Locates the parts of a model of one architecture family."""

    family: str = ""
    model_types: tuple[str, ...] = ()
    base_attr: str = ""

    def base(self, model: nn.Module) -> nn.Module:
        """The encoder model (embeddings + encoder), whether or not `model` has a head."""
        return getattr(model, self.base_attr, model)

    def embeddings(self, model: nn.Module) -> nn.Module:
        return self.base(model).embeddings

    def layers(self, model: nn.Module) -> nn.ModuleList:
        return self.base(model).encoder.layer

    def layer_parts(self, layer: nn.Module) -> LayerParts:
        return LayerParts(
            query=layer.attention.self.query,
            key=layer.attention.self.key,
            value=layer.attention.self.value,
            attention_out=layer.attention.output.dense,
            attention_norm=layer.attention.output.LayerNorm,
            ffn_in=layer.intermediate.dense,
            ffn_out=layer.output.dense,
            output_norm=layer.output.LayerNorm,
        )

    def attention_modules(self, model: nn.Module) -> list[nn.Module]:
        """The self-attention modules whose outputs are the concatenated head contexts."""
        return [layer.attention.self for layer in self.layers(model)]

    def pooler(self, model: nn.Module) -> nn.Linear | None:
        pooler = getattr(self.base(model), "pooler", None)
        return pooler.dense if pooler is not None else None

    def mlm_head(self, model: nn.Module) -> MlmHead | None:
        raise NotImplementedError

    def mlm_module(self, model: nn.Module) -> nn.Module | None:
        """The head as one callable: hidden states [..., hidden] → vocabulary logits."""
        raise NotImplementedError


class BertAdapter(FamilyAdapter):
    family = "bert"
    model_types = ("bert",)
    base_attr = "bert"

    def mlm_head(self, model: nn.Module) -> MlmHead | None:
        cls = getattr(model, "cls", None)
        if cls is None:
            return None
        predictions = cls.predictions
        return MlmHead(predictions.transform.dense, predictions.transform.LayerNorm, predictions.decoder)

    def mlm_module(self, model: nn.Module) -> nn.Module | None:
        return getattr(model, "cls", None)


class RobertaAdapter(FamilyAdapter):
    family = "xlm-roberta"
    model_types = ("xlm-roberta", "roberta")
    base_attr = "roberta"

    def mlm_head(self, model: nn.Module) -> MlmHead | None:
        head = getattr(model, "lm_head", None)
        if head is None:
            return None
        return MlmHead(head.dense, head.layer_norm, head.decoder)

    def mlm_module(self, model: nn.Module) -> nn.Module | None:
        return getattr(model, "lm_head", None)


ADAPTERS: tuple[FamilyAdapter, ...] = (BertAdapter(), RobertaAdapter())
SUPPORTED_MODEL_TYPES = tuple(t for a in ADAPTERS for t in a.model_types)


def adapter_for(model_type: str, remote_code: bool = False) -> FamilyAdapter:
    """The adapter for a config's `model_type`, or a ModelError naming what is supported (and, for a model
    with its own code, that MiniGlot does not run it)."""
    for adapter in ADAPTERS:
        if model_type in adapter.model_types:
            return adapter
    own = " (a model with its own code, which MiniGlot never runs)" if remote_code else ""
    raise ModelError(
        f"unsupported architecture {model_type!r}{own}: MiniGlot compresses "
        f"{', '.join(SUPPORTED_MODEL_TYPES)} encoders (mBERT, MiniLM, E5, XLM-R, RoBERTa)"
    )
