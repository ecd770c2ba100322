"""Re-ranking: a first stage's top k re-scored by a cross-encoder, ``eval/rerank.py``."""
from __future__ import annotations

from edistill.eval import rerank
from edistill.eval.evaluators import registry


def run(cfg, workdir, spec, params=None) -> dict[str, dict[str, float]]:
  return rerank.run(cfg, workdir, split=spec["split"], params=params, metrics=spec["metrics"])


registry.register(registry.Evaluator("rerank", run, trained="reranked", models=("first_stage", "reranked")))
