"""Recipes: what a config builds (``registry.Recipe``), one module each; the loop only runs them.

  embed_distill  a dual-encoder teacher (online or precomputed tables) -> a dual-encoder student
  cross_encoder  train a cross-encoder (``student.kind="cross"``)
  ce_distill     a trained cross-encoder teacher -> a dual-encoder student (``teacher.kind="cross"``)
``config.recipe`` names one; empty, it follows from the student's and teacher's kinds (``name_of``),
the one place that asks whether a run involves a cross-encoder. A new recipe is one new module that
calls ``registry.register`` plus its import below.
"""
from __future__ import annotations

import jax
import numpy as np

from edistill.models import zoo
from edistill.recipes.registry import RECIPES, Recipe, register  # noqa: F401  The registry's API.


def name_of(cfg) -> str:
  """``cfg.recipe``, or the recipe the config's kinds imply."""
  if cfg.get("recipe"):
    if cfg.recipe not in RECIPES:
      raise ValueError(f"config.recipe={cfg.recipe!r}; expected one of {tuple(RECIPES)}.")
    return cfg.recipe
  if cfg.teacher.kind == "cross":
    return "ce_distill"
  return "cross_encoder" if cfg.student.kind == "cross" else "embed_distill"


def of(cfg) -> Recipe:
  return RECIPES[name_of(cfg)]


def build(cfg, process_index: int = 0, process_count: int = 1, multihost: bool = False):
  """``train.loop.Setup`` of ``cfg``'s recipe (see ``Recipe.build``)."""
  return of(cfg).build(cfg, process_index, process_count, multihost)


def train(cfg, workdir) -> dict[str, float]:
  """``train.loop.train`` of ``cfg``'s recipe: trains (or resumes) to ``cfg.train.steps``."""
  from edistill.eval import evaluators
  from edistill.train import loop
  recipe = of(cfg)
  return loop.train(cfg, workdir, recipe.build, evaluators.during_training(cfg, workdir, recipe.evaluator))


def evaluate(cfg, workdir) -> str:
  """``--mode eval`` (and after training): every ``cfg.evals`` entry's table, or without entries the
  recipe's own (``Recipe.results``: ``cfg.eval.models`` on ``cfg.eval.split``)."""
  from edistill.eval import evaluators, report
  recipe = of(cfg)
  if not cfg.get("evals"):
    return recipe.results(cfg, workdir)
  out = []
  for name, rows in evaluators.run_all(cfg, workdir, recipe.evaluator).items():
    teacher = "teacher" if "teacher" in rows else None
    out.append(f"## {name}\n\n" + report.results_table(rows, teacher=teacher))
  return "\n".join(out)


def precompute(cfg) -> str:
  """Fills every cache training reads (dataset, teacher tables, pseudo-labels, lstsq encodings) and
  returns a one-paragraph summary; on a pod every process calls it together (encodings are split)."""
  nproc = jax.process_count()
  setup = build(cfg, jax.process_index(), nproc, multihost=nproc > 1)
  tables = setup.teacher_params if isinstance(setup.teacher_params, dict) else {}
  shapes = ", ".join(f"{k} {tuple(np.shape(v))}" for k, v in tables.items() if k in ("queries", "docs"))
  return (f"precomputed for {cfg.data.source}: {len(setup.pipe.examples)} training examples "
          f"({setup.pipe.steps_per_epoch} steps per epoch at batch {cfg.train.batch_size})"
          + (f"; teacher tables {shapes}" if shapes else "") + f"; cache {zoo.cache_dir()}.")


# The built-in recipes register themselves (this order is RECIPES's order).
from edistill.recipes import embed_distill, cross_encoder  # noqa: E402,F401,I001
