"""``--mode eval`` and evaluation during training: teacher, zero-shot student, trained student, BM25.

The trained student comes from a workdir's checkpoint (or ``config.eval.checkpoint``): its query
tower (+ projection) encodes queries; its documents are the teacher's (asymmetric) or its own.
"""
from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
from absl import logging
from etils import epath

from edistill import checkpoint
from edistill.data import tfds_builders
from edistill.eval import encode as encode_lib
from edistill.eval import evaluator
from edistill.models import zoo
from edistill.models.dual_encoder import project

MODELS = ("teacher", "student_zero_shot", "student", "bm25")


def _encoder_fn(pre: zoo.Pretrained, projection=None):
  module = pre.module

  def fn(params, ids, mask):
    emb = module.apply({"params": params["tower"]}, ids, mask)
    return project(params.get("projection"), emb)

  return fn


def pretrained_model(name: str, pre: zoo.Pretrained) -> evaluator.DenseModel:
  fn = _encoder_fn(pre)
  params = {"tower": pre.params}
  return evaluator.DenseModel(name, fn, params, pre.tokenizer, fn, params, pre.tokenizer,
                              num_params=evaluator.count_params(pre.params))


def student_model(cfg, student_pre: zoo.Pretrained, params: dict, teacher_docs: np.ndarray | None) -> evaluator.DenseModel:
  """The trained student: query tower (+ query projection when asymmetric) and its document side."""
  fn = _encoder_fn(student_pre)
  kind = cfg.student.kind
  q_params = {"tower": params["query_tower"]}
  if kind == "asymmetric":
    if teacher_docs is None:
      raise ValueError("an asymmetric student is evaluated against the teacher's document embeddings.")
    if "query_projection" in params:
      q_params["projection"] = params["query_projection"]
    return evaluator.DenseModel("student", fn, q_params, student_pre.tokenizer, doc_embeddings=teacher_docs,
                                num_params=evaluator.count_params(q_params))
  d_params = {"tower": params["doc_tower" if kind == "untied" else "query_tower"]}
  return evaluator.DenseModel("student", fn, q_params, student_pre.tokenizer, fn, d_params, student_pre.tokenizer,
                              num_params=evaluator.count_params(q_params))


def load_split(cfg, split: str):
  b = tfds_builders.prepare(cfg.data.source, cfg.data.path, cfg.data.corpus_size, cfg.seed, cfg.data.errors)
  return tfds_builders.load(b, split)


def run(cfg, workdir: str | Path, split: str | None = None, student_params: dict | None = None,
        models=None, scann: bool | None = None) -> dict[str, dict[str, float]]:
  """Evaluates ``models`` (default ``cfg.eval.models``) on ``split``; writes results_<split>.{json,md}."""
  workdir = epath.Path(workdir)  # Local or gs://.
  split = split or cfg.eval.split
  models = tuple(models or cfg.eval.models)
  unknown = set(models) - set(MODELS)
  if unknown:
    raise ValueError(f"config.eval.models has unknown entries {sorted(unknown)}; expected some of {MODELS}.")
  scann = cfg.eval.scann if scann is None else scann
  data = load_split(cfg, split)
  cache = Path(zoo.cache_dir()) / "embeddings"
  lq, ld = cfg.data.max_query_length, cfg.data.max_doc_length
  rows: dict[str, dict[str, float]] = {}
  teacher_docs = None
  dense: list[evaluator.DenseModel] = []
  if "teacher" in models or ("student" in models and cfg.student.kind == "asymmetric"):
    tpre = zoo.load_from_config(cfg.teacher)
    teacher = pretrained_model("teacher", tpre)
    teacher_docs = encode_lib.encode_pretrained(tpre, data.doc_ids, data.doc_texts, ld, cache,
                                                desc="teacher documents")  # Shared with training's tables.
    tq = encode_lib.encode(teacher.query_fn, teacher.query_params, tpre.tokenizer, data.query_texts, lq,
                           desc="teacher queries")
    if "teacher" in models:
      dense.append(teacher)
      rows["teacher"] = {**evaluator.dense_scores(tq, teacher_docs, data, cfg.eval.k, scann),
                         "params_m": teacher.num_params / 1e6,
                         "query_ms": evaluator.query_latency_ms(teacher, data.query_texts, lq)}
  spre = zoo.load_from_config(cfg.student) if {"student", "student_zero_shot"} & set(models) else None
  if "student_zero_shot" in models:
    zs = pretrained_model("student_zero_shot", spre)
    q, d = evaluator.embed(zs, data, lq, ld, cache)
    rows["student_zero_shot"] = {**evaluator.dense_scores(q, d, data, cfg.eval.k, scann),
                                 "params_m": zs.num_params / 1e6,
                                 "query_ms": evaluator.query_latency_ms(zs, data.query_texts, lq)}
  if "student" in models:
    if student_params is None:
      ckpt_dir = epath.Path(cfg.eval.checkpoint) if cfg.eval.checkpoint else workdir / "checkpoints"
      _, student_params = checkpoint.latest_params(
          ckpt_dir, " to evaluate the student from (train first, or set config.eval.checkpoint)")
    st = student_model(cfg, spre, student_params, teacher_docs)
    q, d = evaluator.embed(st, data, lq, ld, None)
    rows["student"] = {**evaluator.dense_scores(q, d, data, cfg.eval.k, scann), "params_m": st.num_params / 1e6,
                       "query_ms": evaluator.query_latency_ms(st, data.query_texts, lq)}
  if "bm25" in models:
    rows["bm25"] = evaluator.bm25(data, cfg.eval.k)
  header = (f"# {cfg.data.source} {split}: {len(data.query_ids)} queries, {len(data.doc_ids)} documents\n\n"
            f"Exact search{' (ScaNN rows: scann/*)' if scann else ''}; query latency = batch 1, CPU; "
            f"95 % interval: paired bootstrap of % teacher MRR@10 over these queries (per_query_{split}.json).\n\n")
  rows, per_query = evaluator.teacher_intervals(rows)
  if jax.process_index() == 0:  # Only process 0 writes results (every process computes them).
    evaluator.write_results(workdir, split, rows, header, per_query)
  logging.info("\n%s", evaluator.results_table(rows))
  return rows
