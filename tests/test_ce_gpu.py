"""benchmarks/ce_gpu.py: a cross-encoder trained where only the pack travels. Its pieces by hand, and the
whole path on tiny models: pack -> train (with the packages the GPU box lacks made unimportable) ->
report -> a ce_distill student from the written outputs."""
import argparse
import subprocess
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from edistill import config_lib, recipes
from tests import gpu_box

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import ce_gpu  # noqa: E402


def test_weights_travel_as_bfloat16_bits():
  x = np.array([1.0, -2.5, 3.14159, 1e-3, 65504.0], np.float32)
  bits = ce_gpu.ml_dtypes_bits(x)
  assert bits.dtype == np.uint16
  np.testing.assert_array_equal(ce_gpu.bits_to_float32(bits), x.astype(ml_dtypes.bfloat16).astype(np.float32))
  np.testing.assert_array_equal(ce_gpu.bits_to_float32(bits)[[0, 1]], x[[0, 1]])  # Exact in bf16: unchanged.


def test_mrr10_by_hand():
  top = np.array([[5, 3, 9], [1, 2, 4], [7, 8, 6]], np.int32)
  scores = np.array([[0.1, 0.9, 0.5], [0.3, 0.2, 0.1], [0.0, 0.0, 0.0]], np.float32)
  pos = np.array([[9, -1], [4, 2], [-1, -1]], np.int32)
  # Query 0 re-ranked: 3, 9, 5 -> first positive at 2; query 1: 1, 2, 4 -> 2 at 2; query 2: none.
  assert ce_gpu.mrr10(scores, top, pos) == pytest.approx((1 / 2 + 1 / 2 + 0) / 3)
  # Ties go to the larger doc id (trec_eval, eval/metrics.py): doc_order ranks ids in string order.
  tied = np.zeros((1, 3), np.float32)
  doc_order = np.arange(10)[::-1].copy()  # Doc 0's id sorts last, doc 9's first.
  assert ce_gpu.mrr10(tied, np.array([[7, 2, 5]]), np.array([[5]]), doc_order) == 1 / 2  # 2, 5, 7.
  assert ce_gpu.mrr10(tied, np.array([[7, 2, 5]]), np.array([[5]])) == 1 / 3  # No tie-break: kept order.


def test_sample_batch_draws_pool_negatives_and_tops_up_short_pools():
  data = {"example_query": np.array([0, 1], np.int32), "example_doc": np.array([3, 7], np.int32),
          "pools": np.array([[10, 11, 12, 13, 14], [20, -1, -1, -1, -1]], np.int32),
          "train_pos": np.array([[3, 4], [7, -1]], np.int32), "doc_len": np.ones(30, np.int32)}
  out = ce_gpu.sample_batch(data, np.array([0, 1]), 3, np.random.default_rng(0))
  assert out.shape == (2, 4) and out[0, 0] == 3 and out[1, 0] == 7
  assert set(out[0, 1:]) <= {10, 11, 12, 13, 14} and len(set(out[0, 1:])) == 3
  assert 20 in out[1, 1:] and len(set(out[1, 1:])) == 3 and not set(out[1, 1:]) & {7}


def _tiny_edit(tiny_models):
  def edit(cfg):
    for enc in (cfg.student, cfg.teacher, cfg.cross_encoder.dual_encoder):
      enc.name, enc.num_layers = str(tiny_models["bert"]), 0
    cfg.data.corpus_size = 300
    return cfg
  return edit


def test_pack_train_report_and_a_student_of_the_outputs(tmp_path, tiny_models, isolated_cache):
  edit = _tiny_edit(tiny_models)
  pack_dir = tmp_path / "pack"
  ce_gpu.pack(argparse.Namespace(pack=str(pack_dir), arg="runlocal,depth=10",
                                 distill_arg="runlocal,kind=asymmetric,hard=2,depth=10"), edit)
  # The device's side, as on the GPU box: none of the CPU-only packages importable.
  code = gpu_box.PREAMBLE + f"""
import runpy
sys.argv = ["ce_gpu.py", "train", "--pack", {str(pack_dir)!r}, "--out", {str(tmp_path / 'out')!r}, "--runs",
            "dual:1e-3;cls:1e-3", "--steps", "4", "--queries", "4", "--negatives", "2", "--dev-every", "2",
            "--eval-batch", "32", "--bf16", "0"]
runpy.run_path({str(ROOT / 'benchmarks' / 'ce_gpu.py')!r}, run_name="__main__")
"""
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "chosen" in proc.stdout
  ce_gpu.report(argparse.Namespace(pack=str(pack_dir), results=str(tmp_path / "out"), out=str(tmp_path / "rep")),
                edit)  # Raises if the device's MRR@10 and the evaluator's disagree.
  table = (tmp_path / "rep" / "results_test.md").read_text()
  assert "| dual_ce |" in table and "| cls_ce |" in table and "| first_stage |" in table
  with np.load(tmp_path / "rep" / "outputs_dual.npz") as z:
    assert set(z) == {"query_ids", "doc_ids", "fingerprint", "scores", "query_vectors"}
    assert z["query_vectors"].shape == (len(z["scores"]), 32)
  for name, head, terms in (("dual", "dual", {"label", "score", "query_emb"}), ("cls", "cls", {"label", "score"}),
                            ("de", "dual", {"label", "score", "query_emb"})):
    cfg = edit(config_lib.load_config(
        f"{ROOT / 'configs' / 'ce_distill.py'}:runlocal,kind=asymmetric,hard=2,depth=10,head={head},"
        f"outputs={tmp_path / 'rep' / f'outputs_{name}.npz'}"))
    config_lib.validate(cfg)
    metrics = recipes.train(cfg, tmp_path / f"student_{name}")
    assert {k.split("/")[0] for k in metrics if "/" in k} == terms and np.isfinite(metrics["loss"])


def test_students_table_shares_by_hand(tmp_path):
  import json
  q = [f"q{i}" for i in range(4)]
  (tmp_path / "rep").mkdir()
  (tmp_path / "rep" / "per_query_test.json").write_text(json.dumps(
      {"first_stage": dict(zip(q, [1, 0.5, 0.5, 0])), "dual_ce": dict(zip(q, [1, 1, 0.5, 0.5]))}))
  for name, rr in (("de", [1, 0.5, 0, 0]), ("dual", [1, 1, 0.5, 0])):
    (tmp_path / name).mkdir()
    (tmp_path / name / "per_query_test.json").write_text(json.dumps(
        {"student": dict(zip(q, rr)), "teacher": dict(zip(q, [1, 0.5, 0.5, 0]))}))
  ce_gpu.students(argparse.Namespace(report=str(tmp_path / "rep"), runs=f"de={tmp_path / 'de'},dual={tmp_path / 'dual'}"))
  table = (tmp_path / "rep" / "students_test.md").read_text()
  # de: 1.5 / 2 of the DE; dual: 2.5 / 2 of the DE, 2.5 / 3 of its pipeline; de over dual 1.5 / 2.5.
  assert "| de | 0.3750 | 75.0 (" in table and "| first_stage 0.5000 | 75.0 (" in table
  assert "| dual | 0.6250 | 125.0 (" in table and "| dual_ce 0.7500 | 83.3 (" in table
  assert "| de | dual | 0.600 (" in table
