"""``--mode export`` of every student kind as one sentence-transformers Router model: its files, config,
modes and the embeddings edistill reads back from it (no torch; tests/interop loads it in PyTorch)."""
import json
import os

import jax
import numpy as np
import pytest

from edistill import checkpoint, main
from edistill.eval import suite
from edistill.models import zoo

KINDS = ("tied", "untied", "asymmetric")
TEXTS = ["the cat sat on the mat", "a dog", "dogs sat on the cat on the mat on the mat the cat sat"]


def trained_workdir(tmp_path, tiny_models, kind):
  """(config, workdir) whose checkpoint holds a student of ``kind`` with towers moved off the pretrained
  weights (so an export of the pretrained model would not pass) and, asymmetric, a query projection."""
  from tests.test_train import _config
  cfg = _config(tiny_models, "asym" if kind == "asymmetric" else "score", steps=2)
  cfg.student.kind = kind
  cfg.data.max_query_length, cfg.data.max_doc_length = 8, 16
  rng = np.random.default_rng(0)
  tower = zoo.load_from_config(cfg.student).params
  moved = lambda: jax.tree.map(lambda x: (x + 0.05 * rng.standard_normal(x.shape)).astype(np.float32), tower)
  params = {"query_tower": moved()}
  if kind == "untied":
    params["doc_tower"] = moved()
  if kind == "asymmetric":  # Student 32 -> tiny teacher's 32-d document space.
    params["query_projection"] = {"kernel": (0.2 * rng.standard_normal((32, 32))).astype(np.float32),
                                  "bias": (0.01 * rng.standard_normal(32)).astype(np.float32)}
  work = tmp_path / f"work_{kind}"
  ckpt = checkpoint.Checkpointer(work / "checkpoints")
  ckpt.save(7, {"params": params})
  ckpt.close()
  return cfg, work, params


def reference_embeddings(cfg, params, texts):
  """edistill's own query and document embeddings of ``texts`` (what its evaluation retrieves with)."""
  spre = zoo.load_from_config(cfg.student)
  student = suite.student_model(cfg, spre, params, teacher_docs=np.zeros((1, 1)))
  q = spre.tokenize(texts, cfg.data.max_query_length)
  queries = np.asarray(student.query_fn(student.query_params, q["input_ids"], q["attention_mask"]))
  if cfg.student.kind == "asymmetric":
    tpre = zoo.load_from_config(suite.retrieval_teacher(cfg))
    student, tok = suite.pretrained_model("teacher", tpre), tpre
  else:
    tok = spre
  d = tok.tokenize(texts, cfg.data.max_doc_length)
  docs = np.asarray(student.doc_fn(student.doc_params, d["input_ids"], d["attention_mask"]))
  return queries, docs


def _embed(directory, texts):
  """Embeddings of ``texts`` by an export directory loaded back in edistill, at the export's own length."""
  pre = zoo.load(directory)
  batch = pre.tokenize(texts)
  return np.asarray(pre.module.apply({"params": jax.device_put(pre.params)}, batch["input_ids"], batch["attention_mask"]))


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_exports_one_router_model_whose_routes_are_what_retrieval_used(tmp_path, tiny_models, kind):
  cfg, work, params = trained_workdir(tmp_path, tiny_models, kind)
  old = os.umask(0o022)
  try:
    manifest = json.loads(main.run_export(cfg, work))
  finally:
    os.umask(old)
  out = work / "export"
  assert json.loads((out / "edistill_export.json").read_text()) == manifest
  assert manifest["kind"] == kind and manifest["step"] == 7 and manifest["similarity"] == "dot"
  assert {r: (v["path"], v["max_seq_length"]) for r, v in manifest["routes"].items()} == {
      "query": ("query", 8), "document": ("document", 16)}
  document = {"tied": "student query tower again", "untied": "student document tower",
              "asymmetric": f"teacher {tiny_models['mpnet']}"}[kind]
  assert manifest["routes"]["document"]["encoder"] == document

  assert json.loads((out / "modules.json").read_text()) == [
      {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Router"}]
  router = json.loads((out / "router_config.json").read_text())
  query_head = ["query/1_Pooling", "query/2_Normalize"] + (["query/3_Dense"] if kind == "asymmetric" else [])
  assert router["structure"] == {"query": ["query", *query_head],
                                 "document": ["document", "document/1_Pooling", "document/2_Normalize"]}
  assert router["types"]["query"] == router["types"]["document"] == "sentence_transformers.models.Transformer"
  assert router["parameters"]["default_route"] == "document"  # Plain encode() embeds documents.
  assert json.loads((out / "config_sentence_transformers.json").read_text())["similarity_fn_name"] == "dot"
  modes = {oct(p.stat().st_mode & 0o777) for p in out.rglob("*") if p.is_file()}
  assert modes == {"0o644"}
  assert sorted(p.name for p in work.iterdir()) == ["checkpoints", "export"]  # No temporary left behind.

  queries, docs = reference_embeddings(cfg, params, TEXTS)
  np.testing.assert_allclose(_embed(out / "query", TEXTS), queries, atol=1e-6)
  np.testing.assert_allclose(_embed(out / "document", TEXTS), docs, atol=1e-6)
  # Two encoders, or (tied) one at two lengths: the long text's embeddings differ.
  assert not np.allclose(queries[:, :docs.shape[1]], docs, atol=1e-3)


def test_a_second_export_replaces_the_first(tmp_path, tiny_models):
  cfg, work, _ = trained_workdir(tmp_path, tiny_models, "tied")
  main.run_export(cfg, work)
  (work / "export" / "stale.txt").write_text("old")
  main.run_export(cfg, work)
  assert not (work / "export" / "stale.txt").exists() and (work / "export" / "query" / "model.safetensors").is_file()
