"""An encoder's architecture shape and its parameter arithmetic (instant: no weights are loaded)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Shape:
    """The sizes that determine an encoder's parameter count."""

    layers: int
    hidden: int
    ffn: int
    heads: int
    vocab: int
    positions: int = 512
    token_types: int = 2
    pooler: bool = False
    mlm_head: bool = False
    special_tokens: int = 5

    @classmethod
    def from_config(cls, config: Any, mlm_head: bool, pooler: bool, special_tokens: int = 5) -> Shape:
        return cls(
            layers=config.num_hidden_layers,
            hidden=config.hidden_size,
            ffn=config.intermediate_size,
            heads=config.num_attention_heads,
            vocab=config.vocab_size,
            positions=config.max_position_embeddings,
            token_types=config.type_vocab_size,
            pooler=pooler,
            mlm_head=mlm_head,
            special_tokens=special_tokens,
        )

    def params(self) -> dict[str, int]:
        """Parameters by component: embeddings, encoder, pooler+head (decoder tied to embeddings)."""
        h, f = self.hidden, self.ffn
        embeddings = (self.vocab + self.positions + self.token_types) * h + 2 * h
        layer = 4 * (h * h + h) + 2 * h + (h * f + f) + (f * h + h) + 2 * h
        head = (h * h + h if self.pooler else 0) + ((h * h + h) + 2 * h + self.vocab if self.mlm_head else 0)
        return {"embeddings": embeddings, "encoder": layer * self.layers, "head": head}

    @property
    def total_params(self) -> int:
        return sum(self.params().values())

    def describe(self) -> str:
        return (f"{self.layers} layers, hidden {self.hidden}, FFN {self.ffn}, {self.heads} heads, "
                f"vocabulary {self.vocab:,}")
