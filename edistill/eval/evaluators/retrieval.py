"""Retrieval: named dense models and BM25 on one split, exact search (and ScaNN), ``eval/suite.py``."""
from __future__ import annotations

from edistill.eval import suite
from edistill.eval.evaluators import registry


def run(cfg, workdir, spec, params=None) -> dict[str, dict[str, float]]:
  return suite.run(cfg, workdir, split=spec["split"], student_params=params, models=tuple(spec["models"]),
                   scann=spec["scann"], name=spec.get("name"), metrics=spec["metrics"],
                   multihost=spec.get("multihost", False))


registry.register(registry.Evaluator("retrieval", run, trained="student", models=tuple(suite.MODELS)))
