"""config.evals: named evaluations in a registry, each with its own split and cadence."""
import json

import ml_collections
import pytest

from edistill import recipes
from edistill.eval import evaluators, report


def _cfg(tiny_models, **evals):
  from tests.test_train import _config
  cfg = _config(tiny_models, steps=4)
  cfg.evals = ml_collections.ConfigDict(evals)
  return cfg


def test_without_evals_the_one_entry_is_what_config_eval_describes(tiny_models):
  cfg = _cfg(tiny_models)
  cfg.eval.every_steps, cfg.eval.during_training_split = 3, "dev"
  assert evaluators.specs(cfg, "retrieval") == {"eval": {
      "type": "retrieval", "models": ("student",), "split": "dev", "metrics": report.METRICS, "scann": False,
      "every_steps": 3, "domains": (), "name": None}}
  assert evaluators.specs(cfg, "rerank")["eval"]["models"] == ("reranked",)


@pytest.mark.parametrize("spec,message", [
    ({"type": "nope"}, r"config.evals.x.type='nope'; expected one of \('retrieval', 'rerank', 'cross_domain'\)"),
    ({"models": ("teacher", "gpt")}, r"config.evals.x.models=\('teacher', 'gpt'\): expected some of"),
    ({"models": ("bm25",), "every_steps": 2}, r"with 'student' to run during training"),
    ({"splt": "dev"}, r"config.evals.x: unknown fields \['splt'\]"),
    ({"models": ("bm25",), "every_steps": -1}, r"config.evals.x.every_steps=-1 must be >= 0"),
    ({"metrics": ("mrr@10", "bogus@3")}, r"config.evals.x.metrics: unknown metric 'bogus@3'"),
    ({"metrics": ("precision",)}, r"config.evals.x.metrics: metric 'precision' needs a cut-off"),
    ({"domains": ("stdlib",)}, r"config.evals.x.domains is for type 'cross_domain', not 'retrieval'"),
    ({"type": "cross_domain"}, r"config.evals.x.domains is empty \(and so is config.eval.domains\)"),
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
  name = report.data_name(cfg.data)
  assert (tmp_path / f"results_{name}_dev_dev.md").is_file() and (tmp_path / f"results_{name}_held_test.md").is_file()
  assert not any("dev/params_m" in m or "held/query_ms" in m for m in logged)


def test_trained_rows_pick_the_trained_model_plain_and_per_domain():
  rows = {"teacher": {"a": 1}, "student": {"a": 2}, "wn/student": {"a": 3}, "wn/teacher": {"a": 4},
          "wn/student_zero_shot": {"a": 5}}
  assert evaluators.trained_rows(rows, "student") == {"": {"a": 2}, "wn/": {"a": 3}}


def test_metrics_choose_the_columns_and_mode_eval_runs_every_entry(tmp_path, tiny_models, isolated_cache):
  cfg = _cfg(tiny_models)
  recipes.train(cfg, tmp_path)
  cfg.evals = ml_collections.ConfigDict({
      "full": {"models": ("student", "bm25"), "split": "test"},
      "short": {"models": ("student", "bm25"), "split": "test", "metrics": ("mrr@10", "precision@5")}})
  tables = recipes.evaluate(cfg, tmp_path)
  assert "## full" in tables and "## short" in tables
  ds = report.data_name(cfg.data)
  full = json.loads((tmp_path / f"results_{ds}_full_test.json").read_text())
  short = json.loads((tmp_path / f"results_{ds}_short_test.json").read_text())
  for model in ("student", "bm25"):
    assert "precision@5" in short[model] and "ndcg@10" not in short[model] and "ndcg@10" in full[model]
    assert short[model]["mrr@10"] == full[model]["mrr@10"]
  head = (tmp_path / f"results_{ds}_short_test.md").read_text().splitlines()
  assert "| model | mrr@10 | precision@5 |" in "\n".join(head)


def test_a_cross_domain_entry_logs_the_trained_model_on_each_domain(tmp_path, tiny_models, isolated_cache):
  cfg = _cfg(tiny_models, xd={"type": "cross_domain", "models": ("student",), "domains": ("stdlib:1000",),
                              "every_steps": 4, "metrics": ("mrr@10",)})
  recipes.train(cfg, tmp_path)
  logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  hits = [m for m in logged if "xd/stdlib-1000/mrr@10" in m]
  assert [m["step"] for m in hits] == [4]
  stored = json.loads((tmp_path / "results_stdlib-1000_test.json").read_text())
  assert hits[0]["xd/stdlib-1000/mrr@10"] == stored["student"]["mrr@10"]
  assert "| stdlib-1000 | 500 | student |" in (tmp_path / "results_xd.md").read_text()
