"""Compression stages: one module each, all with `run(ctx) -> StageOutput`."""
