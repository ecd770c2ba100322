"""The recipe registry: what a config builds, how its model is evaluated, which checks it adds."""
from __future__ import annotations

import dataclasses
from typing import Callable

from edistill.registry import Registry


@dataclasses.dataclass(frozen=True)
class Recipe:
  """name: ``config.recipe``'s value.
  build(cfg, process_index, process_count, multihost) -> ``train.loop.Setup``: what the loop runs.
  evaluator: the ``eval/evaluators`` type that measures its model (``config.evals``' default).
  results(cfg, workdir) -> the results table (``--mode eval``, and after training), written to the workdir.
  validate(cfg): the recipe's own config checks (raise ValueError naming the key).
  packs_pairs: batches are (query, document) pairs packed to a fixed length: no length bucketing, no GradCache.
  """

  name: str
  build: Callable
  evaluator: str
  results: Callable[..., str]
  validate: Callable = lambda cfg: None
  packs_pairs: bool = False


RECIPES = Registry("recipe")
register = RECIPES.register

