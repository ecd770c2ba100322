"""config.evals: named evaluations in a registry, each with its own split and cadence."""
import json

import ml_collections
import pytest

from edistill import recipes
from edistill.eval import evaluators


def _cfg(tiny_models, **evals):
  from tests.test_train import _config
  cfg = _config(tiny_models, steps=4)
  cfg.evals = ml_collections.ConfigDict(evals)
  return cfg


def test_without_evals_the_one_entry_is_what_config_eval_describes(tiny_models):
  cfg = _cfg(tiny_models)
  cfg.eval.every_steps, cfg.eval.during_training_split = 3, "dev"
  assert evaluators.specs(cfg, "retrieval") == {"eval": {
      "type": "retrieval", "models": ("student",), "split": "dev", "scann": False, "every_steps": 3, "name": None}}
  assert evaluators.specs(cfg, "rerank")["eval"]["models"] == ("reranked",)


@pytest.mark.parametrize("spec,message", [
    ({"type": "nope"}, r"config.evals.x.type='nope'; expected one of \('retrieval', 'rerank'\)"),
    ({"models": ("teacher", "gpt")}, r"config.evals.x.models=\('teacher', 'gpt'\): expected some of"),
    ({"models": ("bm25",), "every_steps": 2}, r"with 'student' to run during training"),
    ({"splt": "dev"}, r"config.evals.x: unknown fields \['splt'\]"),
    ({"models": ("bm25",), "every_steps": -1}, r"config.evals.x.every_steps=-1 must be >= 0"),
])
def test_a_bad_entry_names_its_key(tiny_models, spec, message):
  with pytest.raises(ValueError, match=message):
    evaluators.specs(_cfg(tiny_models, x=spec), "retrieval")


def test_each_entry_runs_at_its_own_cadence_under_its_name(tmp_path, tiny_models, isolated_cache):
  cfg = _cfg(tiny_models, dev={"models": ("student",), "split": "dev", "every_steps": 2},
             held={"models": ("student",), "split": "test", "every_steps": 4})
  recipes.train(cfg, tmp_path)
  logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  steps = {name: [m["step"] for m in logged if f"{name}/mrr@10" in m] for name in ("dev", "held", "eval")}
  assert steps == {"dev": [2, 4], "held": [4], "eval": []}
  assert (tmp_path / "results_dev_dev.md").is_file() and (tmp_path / "results_held_test.md").is_file()
  assert not any("dev/params_m" in m or "held/query_ms" in m for m in logged)
