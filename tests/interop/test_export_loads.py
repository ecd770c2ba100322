"""Every exported kind loads in sentence-transformers (one Router model) and transformers (each route
directory) and reproduces edistill's embeddings and its MRR@10 (make test-interop)."""
import json

import numpy as np
import pytest

from edistill import main
from edistill.eval import evaluator, report, suite
from edistill.eval.report import RUN
from tests.test_export import KINDS, TEXTS, reference_embeddings, trained_workdir

pytestmark = pytest.mark.interop


def transformers_embed(directory, texts) -> np.ndarray:
  """README's "Loading the export" recipe: AutoModel + the directory's pooling, Normalize and Dense by hand."""
  import torch
  from safetensors.torch import load_file
  from transformers import AutoModel, AutoTokenizer
  tok = AutoTokenizer.from_pretrained(directory)
  model, info = AutoModel.from_pretrained(directory, output_loading_info=True)
  assert not any(info.values()), info  # Nothing missing (the pooler is written), unexpected or mismatched.
  batch = tok(texts, padding=True, truncation=True, return_tensors="pt")  # Truncates at the export's length.
  with torch.no_grad():
    hidden = model.eval()(**batch).last_hidden_state
  for module in json.loads((directory / "modules.json").read_text())[1:]:
    kind, path = module["type"].rsplit(".", 1)[1], directory / module["path"]
    if kind == "Pooling":
      mask = batch["attention_mask"].unsqueeze(-1).float()
      cls = json.loads((path / "config.json").read_text())["pooling_mode_cls_token"]
      emb = hidden[:, 0] if cls else (hidden * mask).sum(1) / mask.sum(1)
    elif kind == "Normalize":
      emb = torch.nn.functional.normalize(emb, dim=-1)
    elif kind == "Dense":
      dense = load_file(path / "model.safetensors")
      emb = emb @ dense["linear.weight"].T + dense["linear.bias"]
  return emb.numpy()


@pytest.fixture(params=KINDS)
def exported(request, tmp_path, tiny_models, isolated_cache):
  cfg, work, params = trained_workdir(tmp_path, tiny_models, request.param)
  main.run_export(cfg, work)
  return cfg, work, params


def test_sentence_transformers_loads_one_model_whose_routes_are_edistills_encoders(exported):
  from sentence_transformers import SentenceTransformer
  cfg, work, params = exported
  queries, docs = reference_embeddings(cfg, params, TEXTS)
  model = SentenceTransformer(str(work / "export"), device="cpu")
  assert model.similarity_fn_name == "dot"
  np.testing.assert_allclose(model.encode_query(TEXTS), queries, atol=1e-5)
  np.testing.assert_allclose(model.encode_document(TEXTS), docs, atol=1e-5)
  np.testing.assert_allclose(model.encode(TEXTS), docs, atol=1e-5)  # No task: the document route.


def test_transformers_loads_each_route_directory_as_the_same_encoder(exported):
  cfg, work, params = exported
  queries, docs = reference_embeddings(cfg, params, TEXTS)
  np.testing.assert_allclose(transformers_embed(work / "export" / "query", TEXTS), queries, atol=1e-5)
  np.testing.assert_allclose(transformers_embed(work / "export" / "document", TEXTS), docs, atol=1e-5)


def test_retrieval_with_the_sentence_transformers_model_is_edistills_evaluation(exported):
  """The stdlib fixture's test split (15 queries, 300 documents): the same metrics, and every document of
  edistill's top 10s (its TREC run file, scores to 6 decimals) retrieved with the same score, so the
  agreement does not rest on the near-zero MRR of random towers (whose near-tied scores may swap places)."""
  from sentence_transformers import SentenceTransformer
  cfg, work, _ = exported
  ours = suite.run(cfg, work, split="test", models=("student",), scann=False)["student"]
  data = suite.load_split(cfg, "test")
  model = SentenceTransformer(str(work / "export"), device="cpu")
  theirs = evaluator.dense_scores(model.encode_query(data.query_texts), model.encode_document(data.doc_texts), data)
  assert ours["mrr@10"] > 0
  for metric in ("mrr@10", "recall@10", "ndcg@10"):
    assert theirs[metric] == pytest.approx(ours[metric], abs=1e-6), metric
  trec = {}
  for line in (work / f"run_{report.data_name(cfg.data)}_test_student.trec").read_text().splitlines():
    qid, _, doc, _, score, _ = line.split()
    trec.setdefault(qid, {})[doc] = float(score)
  assert set(trec) == set(theirs[RUN])
  for qid, docs in trec.items():
    for doc, score in sorted(docs.items(), key=lambda kv: -kv[1])[:10]:
      assert theirs[RUN][qid].get(doc) == pytest.approx(score, abs=2e-6), (qid, doc)
