"""The retrieval task: can a model's query embeddings find their translations in an index of the teacher's
embeddings? Each model embeds the query side its own way (its sentence-transformers layout: pooling, the
map onto the teacher's space, normalisation, the "query" prompt; plain mean pooling without one);
the index side is embedded once by the reference teacher. Scores: top-1 accuracy and mean reciprocal rank
of the true translation among all index texts by cosine similarity. The teacher against its own index
is the ceiling. No training, so no seeds.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from engine.data.parallel import ParallelData
from engine.errors import ModelError
from engine.evaluate.finetune import SeedResult
from engine.models.embedder import Embedder, embed, read_embedder

MAX_LENGTH = 128
PROMPT = "query"  # bitext pairs are symmetric: both sides take the query prompt (as e5 does for bitext mining)


def embeddings(model_dir: Path, texts: tuple[str, ...]) -> torch.Tensor:
    """The sentence embeddings of `texts` by the model in `model_dir` (see the module docstring)."""
    from transformers import AutoModel

    from engine.evaluate.finetune import load_tokenizer
    from engine.models.loading import max_positions

    tokenizer = load_tokenizer(model_dir)
    model = AutoModel.from_pretrained(model_dir, use_safetensors=True, trust_remote_code=False)
    embedder = read_embedder(model_dir) or Embedder("mean", Path(model_dir))
    return embed(model, tokenizer, texts, embedder, prompt=embedder.prompts.get(PROMPT, ""),
                 max_length=min(MAX_LENGTH, max_positions(model.config)))


def retrieval(model_dir: Path, data: ParallelData, index: torch.Tensor) -> SeedResult:
    """Top-1 accuracy and MRR of `model_dir`'s query embeddings against `index` (the teacher's, pair by pair)."""
    started = time.perf_counter()
    queries = embeddings(model_dir, data.queries)
    if queries.shape[1] != index.shape[1]:
        raise ModelError(f"{model_dir} embeds into {queries.shape[1]} dimensions but the teacher's index has "
                         f"{index.shape[1]}: only students of a sentence-embedding teacher (one with "
                         "sentence-transformers' modules.json) are mapped into its space")
    return SeedResult(metrics=rank_scores(queries, index), dev_metrics={}, best_epoch=0, epochs_run=0,
                      seconds=time.perf_counter() - started, train_size=0, dev_size=0, test_size=len(data.queries),
                      labels=(), learning_rate=0.0)


def rank_scores(queries: torch.Tensor, index: torch.Tensor) -> dict[str, float]:
    """Top-1 accuracy and mean reciprocal rank of index row i for query row i, by cosine similarity."""
    similarity = torch.nn.functional.normalize(queries.float(), dim=-1) @ torch.nn.functional.normalize(
        index.float(), dim=-1).T
    true = similarity.diagonal().unsqueeze(1)
    ranks = (similarity > true).sum(1) + 1  # ties count in the true pair's favour
    return {"top1": float((ranks == 1).float().mean()), "mrr": float((1.0 / ranks.float()).mean())}
