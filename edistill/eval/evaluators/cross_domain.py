"""Cross-domain: the named models on the test split of each benchmark in ``spec.domains``, one table
over all of them (``eval/suite.py``'s ``run_domains``); rows are ``<domain>/<model>``."""
from __future__ import annotations

from edistill.eval import suite
from edistill.eval.evaluators import registry


def run(cfg, workdir, spec, params=None) -> dict[str, dict[str, float]]:
  by_domain = suite.run_domains(cfg, workdir, spec["domains"] or None, models=tuple(spec["models"]),
                                scann=spec["scann"], metrics=spec["metrics"], student_params=params,
                                name=spec.get("name") or "cross_domain", multihost=spec.get("multihost", False))
  return {f"{domain}/{model}": row for domain, rows in by_domain.items() for model, row in rows.items()}


registry.register(registry.Evaluator("cross_domain", run, trained="student", models=tuple(suite.MODELS)))
