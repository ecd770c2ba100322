"""The exported query encoder on sentence-transformers' ONNX backend, float32 and dynamic int8, and
benchmarks/onnx_serving.py end to end on the tiny models (make test-interop)."""
import sys
from pathlib import Path

import numpy as np
import pytest

from edistill import main
from edistill.models import onnx_export
from tests.test_export import TEXTS, reference_embeddings, trained_workdir

pytestmark = pytest.mark.interop
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def asymmetric_export(tmp_path, tiny_models, isolated_cache):
  """The kind whose query route has the most modules (Pooling, Normalize, then the folded Dense)."""
  cfg, work, params = trained_workdir(tmp_path, tiny_models, "asymmetric")
  main.run_export(cfg, work)
  return cfg, work / "export", params


def test_the_onnx_backend_serves_the_query_route_as_edistill_encodes_it(asymmetric_export):
  from sentence_transformers import SentenceTransformer
  cfg, export, params = asymmetric_export
  queries, _ = reference_embeddings(cfg, params, TEXTS)
  assert onnx_export.write_onnx(export / "query") == export / "query" / "onnx" / "model.onnx"
  onnx = SentenceTransformer(str(export / "query"), backend="onnx", device="cpu")
  assert type(onnx.transformers_model).__name__ == "ORTModelForFeatureExtraction"  # Not torch.
  np.testing.assert_allclose(onnx.encode_query(TEXTS), queries, atol=1e-5)
  for text, query in zip(TEXTS, queries):  # Batch 1 at its own length (3 .. 8 tokens): the axes are dynamic.
    np.testing.assert_allclose(onnx.encode_query([text])[0], query, atol=1e-5)
  int8 = onnx_export.quantize_int8(export / "query", "avx2")
  assert int8 == "onnx/model_int8_avx2.onnx" and (export / "query" / int8).is_file()
  quantised = SentenceTransformer(str(export / "query"), backend="onnx", device="cpu", model_kwargs={"file_name": int8})
  got = quantised.encode_query(TEXTS)
  assert not np.allclose(got, queries, atol=1e-5)  # Really the int8 graph ...
  np.testing.assert_allclose(got, queries, atol=0.1)  # ... close to the float32 one.


def test_serving_benchmark_reports_every_backend_against_edistills_encoder(asymmetric_export):
  sys.path.insert(0, str(ROOT / "benchmarks"))
  import onnx_serving
  cfg, export, _ = asymmetric_export
  results = onnx_serving.run(export, cfg, "test", queries=6, reps=2, sizes=(4,))
  for section in ("latency_ms", "qps_4", "quality"):
    assert set(results[section]) == set(onnx_serving.BACKENDS), section
  assert all(v > 0 for s in ("latency_ms", "qps_4") for v in results[s].values())
  quality = results["quality"]
  for backend in ("st_torch", "st_onnx"):  # float32: the same ranking as edistill's.
    assert quality[backend]["max_abs_diff"] <= 1e-5
    assert quality[backend]["mrr@10"] == pytest.approx(quality["edistill"]["mrr@10"], abs=1e-6)
  assert 0 < quality["st_onnx_int8"]["max_abs_diff"] < 0.1
  assert results["setup"]["queries"] == 15 and results["setup"]["latency_queries"] == 6
  assert "| st_onnx_int8 |" in onnx_serving.table(results, sizes=(4,))
