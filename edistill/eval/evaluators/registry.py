"""The evaluator registry: each type of evaluation a config can ask for (``config.evals``)."""
from __future__ import annotations

import dataclasses
from typing import Callable

from edistill.registry import Registry


@dataclasses.dataclass(frozen=True)
class Evaluator:
  """name: ``config.evals.<entry>.type``; run(cfg, workdir, spec, params) -> {model: metrics} rows
  (``params``: the model being trained, None to read the workdir's checkpoint); trained: the row of
  the model being trained, the one logged during training; models: the names ``spec.models`` may use."""

  name: str
  run: Callable
  trained: str
  models: tuple[str, ...]


EVALUATORS = Registry("evaluator")
register = EVALUATORS.register
