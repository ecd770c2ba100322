"""benchmarks/st_peers.py end to end on the tiny models (needs the `bench` extra: torch, sentence-transformers)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("sentence_transformers")
pytest.importorskip("datasets")
ROOT = Path(__file__).resolve().parents[1]


def test_every_peer_recipe_trains_and_is_scored_against_the_teacher(tmp_path, tiny_models, isolated_cache):
  from tests.test_train import _config
  from edistill.eval import suite
  from edistill import recipes
  cfg = _config(tiny_models, "unlab", steps=4)
  recipes.train(cfg, tmp_path / "run")
  ours = suite.run(cfg, tmp_path / "run", split="test", models=("teacher",), scann=False)
  # The random tiny teacher may score 0 everywhere (no share): pair against a perfect one instead.
  from edistill.eval import report
  per_query = report.result_file(tmp_path / "run", "test", "per_query")
  teacher = {q: 1.0 for q in json.loads(per_query.read_text())["teacher"]}
  per_query.write_text(json.dumps({"teacher": teacher, "student": {q: 0.5 for q in teacher}}))
  spec = f"{ROOT / 'configs' / 'ablation.py'}:row=unlab,runlocal"
  overrides = [f"--config.teacher.name={tiny_models['mpnet']}", f"--config.student.name={tiny_models['bert']}",
               "--config.teacher.num_layers=0", "--config.student.num_layers=0", "--config.data.corpus_size=300",
               "--config.train.steps=4"]
  env = {**os.environ, "EDISTILL_CACHE": str(isolated_cache)}
  done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "st_peers.py"), "--config", spec, *overrides,
                         "--workdir", str(tmp_path / "run"), "--steps", "3", "--out", str(tmp_path / "peers")],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  assert done.returncode == 0, done.stderr[-3000:]
  results = json.loads((tmp_path / "peers" / "peers_test.json").read_text())
  assert set(results) == {"mnrl", "embed_distill", "embed_distill_lstsq", "margin_mse"}
  assert len(teacher) == ours["teacher"]["num_queries"]
  for recipe, r in results.items():
    assert all(0 <= r[m] <= 1 for m in ("mrr@10", "recall@10", "recall@100", "ndcg@10")), recipe
    assert r["teacher_pct"] == pytest.approx(100 * r["mrr@10"], rel=1e-6), recipe
    assert r["teacher_pct_lo"] <= r["teacher_pct"] <= r["teacher_pct_hi"] and r["steps"] == 3, recipe
    if r["mrr@10"] > 0:  # edistill's student (0.5 on every query here) over the peer, paired.
      assert r["edistill_ratio"] == pytest.approx(0.5 / r["mrr@10"], rel=1e-6), recipe
      assert r["edistill_ratio_lo"] - 1e-9 <= r["edistill_ratio"] <= r["edistill_ratio_hi"] + 1e-9, recipe
  assert "| mnrl |" in (tmp_path / "peers" / "peers_test.md").read_text()
