"""Stage 4: keep the tokens the language uses; cut embeddings and decoder, rebuild the tokenizer."""

from __future__ import annotations

import copy
import dataclasses

from engine.models.loading import LoadedModel
from engine.recipe import TrimVocabStage
from engine.stages.base import StageContext, StageOutput
from engine.surgery.vocab import trim_vocabulary


def run(ctx: StageContext) -> StageOutput:
    cfg: TrimVocabStage = ctx.config
    source = ctx.model
    net, tokenizer, report = trim_vocabulary(copy.deepcopy(source.model), source.tokenizer, source.adapter,
                                             ctx.train_texts, cfg.size, ctx.validation_texts,
                                             fill=cfg.fill)
    metrics = {k: v for k, v in dataclasses.asdict(report).items() if k != "kept_ids"}
    ctx.log(f"vocabulary {report.old_size:,} → {report.new_size:,} ({report.kept_by_frequency:,} by frequency, "
            f"{report.kept_to_fill:,} to fill the budget, "
            f"{report.kept_special} special, {report.kept_characters} characters); "
            f"{100 * report.resegmentation_rate:.1f}% of validation texts segment differently")
    for name in ("resegmentation_rate", "unknown_rate_before", "unknown_rate_after"):
        ctx.metric(name, metrics[name], split="validation")
    return StageOutput(LoadedModel(net, tokenizer, source.adapter, source.source), metrics)
