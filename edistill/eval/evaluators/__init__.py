"""Evaluators: the evaluations a config asks for, one module per type in a registry.

``config.evals`` maps an entry name to ``{type, models, split, metrics, scann, every_steps, domains}``:
``type`` one of ``EVALUATORS`` (``retrieval``: ``models`` among teacher, student_zero_shot, student,
bm25 on one split; ``cross_domain``: the same on the test split of each of ``domains``; ``rerank``:
the cross-encoder being trained over its first stage); ``metrics`` the metric specs of its tables
(``eval/metrics.py``; default ``report.METRICS``); ``every_steps`` > 0 runs it during training on
the model being trained and logs that model's row(s) as ``<entry>/[<domain>/]<metric>``. ``--mode
eval`` runs every entry. Empty, it is the one evaluation ``config.eval`` describes: ``eval``, the
trained model on ``eval.during_training_split`` every ``eval.every_steps`` (exact search). A new
evaluator type is one new module that calls ``registry.register`` plus its import below.
"""
from __future__ import annotations

from typing import Callable

import jax

from edistill.eval import metrics as metrics_lib
from edistill.eval import report
from edistill.eval.evaluators import retrieval, rerank, cross_domain  # noqa: F401,I001  The built-ins register themselves.
from edistill.eval.evaluators.registry import EVALUATORS, Evaluator, register  # noqa: F401  The registry's API.

FIELDS = ("type", "models", "split", "metrics", "scann", "every_steps", "domains")
_NOT_LOGGED = ("params_m", "query_ms")  # Timings of a loaded CPU during training mean nothing.


def specs(cfg, default_type: str) -> dict[str, dict]:
  """{entry: spec} of ``cfg.evals``, or the default entry (see module doc); each spec is checked."""
  evals = cfg.get("evals") or {}
  if not evals:
    evals = {"eval": {"type": default_type, "models": (EVALUATORS[default_type].trained,),
                      "split": cfg.eval.during_training_split, "scann": False, "every_steps": cfg.eval.every_steps}}
  out = {}
  for name, spec in evals.items():
    spec = dict(spec)
    unknown = sorted(set(spec) - set(FIELDS))
    if unknown:
      raise ValueError(f"config.evals.{name}: unknown fields {unknown}; expected some of {FIELDS}.")
    kind = spec.get("type", default_type)
    if kind not in EVALUATORS:
      raise ValueError(f"config.evals.{name}.type={kind!r}; expected one of {tuple(EVALUATORS)}.")
    ev = EVALUATORS[kind]
    spec = {"type": kind, "models": tuple(spec.get("models", (ev.trained,))), "split": spec.get("split", "dev"),
            "metrics": tuple(spec.get("metrics", report.METRICS)), "scann": bool(spec.get("scann", False)),
            "every_steps": int(spec.get("every_steps", 0)), "domains": tuple(spec.get("domains", ())),
            "name": None if name == "eval" else f"{name}_{spec.get('split', 'dev')}"}
    if spec["every_steps"] < 0:
      raise ValueError(f"config.evals.{name}.every_steps={spec['every_steps']} must be >= 0 (0: not during training).")
    bad = sorted(set(spec["models"]) - set(ev.models))
    if bad or (spec["every_steps"] and ev.trained not in spec["models"]):
      raise ValueError(f"config.evals.{name}.models={spec['models']}: expected some of {ev.models}"
                       f"{', with ' + repr(ev.trained) + ' to run during training' if spec['every_steps'] else ''}.")
    for metric in spec["metrics"]:
      try:
        metrics_lib.parse_metric(metric)
      except ValueError as e:
        raise ValueError(f"config.evals.{name}.metrics: {e}") from None
    if kind == "cross_domain":
      if not (spec["domains"] or cfg.eval.domains):
        raise ValueError(f"config.evals.{name}.domains is empty (and so is config.eval.domains): name the "
                         f"benchmarks, e.g. ('wordnet_gcide:10000', 'debian:10000', 'stdlib').")
      spec["name"] = name
    elif spec["domains"]:
      raise ValueError(f"config.evals.{name}.domains is for type 'cross_domain', not {kind!r}.")
    out[name] = spec
  return out


def trained_rows(rows: dict[str, dict], trained: str) -> dict[str, dict]:
  """{prefix: row} of the model being trained among an evaluator's rows: ``""`` for the row
  ``trained``, ``"<domain>/"`` for a row ``<domain>/<trained>``."""
  return {key[:-len(trained)]: row for key, row in rows.items() if key == trained or key.endswith("/" + trained)}


def during_training(cfg, workdir, default_type: str) -> list[tuple[str, int, Callable]]:
  """(entry, every_steps, fn(params) -> {metric: value} of the trained model) for each entry that
  runs during training."""
  out = []
  for name, spec in specs(cfg, default_type).items():
    if spec["every_steps"]:
      ev = EVALUATORS[spec["type"]]

      def fn(params, ev=ev, spec=spec):
        rows = trained_rows(ev.run(cfg, workdir, spec, params), ev.trained)
        return {prefix + k: v for prefix, row in rows.items() for k, v in row.items() if k not in _NOT_LOGGED}

      out.append((name, spec["every_steps"], fn))
  return out


def run_all(cfg, workdir, default_type: str) -> dict[str, dict[str, dict]]:
  """Every entry of ``specs`` on the workdir's latest checkpoint: {entry: rows}. Every process calls
  this together (``--mode eval``), so the evaluators split their encodings and searches across them
  (``spec["multihost"]``); evaluations during training run on process 0 alone, without it."""
  multihost = jax.process_count() > 1
  return {name: EVALUATORS[spec["type"]].run(cfg, workdir, {**spec, "multihost": multihost})
          for name, spec in specs(cfg, default_type).items()}
