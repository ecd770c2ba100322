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

from edistill import cache, checkpoint
from edistill.data import tfds_builders
from edistill.retrieval import encode as encode_lib
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
  b = tfds_builders.prepare_config(cfg.data, cfg.seed)
  return tfds_builders.load(b, split)


def run(cfg, workdir: str | Path, split: str | None = None, student_params: dict | None = None,
        models=None, scann: bool | None = None, name: str | None = None) -> dict[str, dict[str, float]]:
  """Evaluates ``models`` (default ``cfg.eval.models``) on ``split``; writes results_<name>.{json,md}
  (``name`` defaults to the split)."""
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
  name = name or split
  header = (f"# {cfg.data.source} {split}: {len(data.query_ids)} queries, {len(data.doc_ids)} documents\n\n"
            f"Exact search{' (ScaNN rows: scann/*)' if scann else ''}; query latency = batch 1, CPU; "
            f"95 % interval: paired bootstrap of % teacher MRR@10 over these queries (per_query_{name}.json).\n\n")
  rows, per_query = evaluator.teacher_intervals(rows)
  if jax.process_index() == 0:  # Only process 0 writes results (every process computes them).
    evaluator.write_results(workdir, name, rows, header, per_query)
  logging.info("\n%s", evaluator.results_table(rows))
  return rows


def parse_domain(spec: str) -> tuple[str, dict]:
  """A ``config.eval.domains`` entry -> (its name, the ``config.data`` fields it sets).

  ``"SOURCE"`` or ``"SOURCE:CORPUS_SIZE"`` is an offline benchmark (stdlib, wordnet_gcide, debian) with
  its full test and dev pools (``benchmarks.BENCHMARKS[source].pools``: 1,000 / 500 test / dev queries for WordNet and
  Debian), the shape a training run with ``data.n_test`` / ``n_dev`` at the pool sizes sees;
  ``"beir:DIR"`` is a BEIR directory (its ``qrels/test.tsv``).
  """
  from edistill.data import benchmarks
  source, _, arg = spec.partition(":")
  if source == "beir":
    if not arg:
      raise ValueError(f"config.eval.domains entry {spec!r}: 'beir:DIR' needs the directory.")
    return f"beir-{Path(arg).name}", {"source": "beir", "path": arg, "corpus_size": 0, "n_test": 0, "n_dev": 0}
  if source not in tuple(benchmarks.BENCHMARKS) or (arg and not arg.isdigit()):
    raise ValueError(f"config.eval.domains entry {spec!r}: expected SOURCE[:CORPUS_SIZE] with SOURCE one of "
                     f"{tuple(benchmarks.BENCHMARKS)}, or beir:DIR.")
  test, dev = benchmarks.BENCHMARKS[source].pools
  size = int(arg) if arg else 0
  return (f"{source}-{size}" if size else source), {"source": source, "path": "", "corpus_size": size,
                                                    "n_test": test, "n_dev": dev}


def run_domains(cfg, workdir: str | Path, domains=None) -> dict[str, dict[str, dict[str, float]]]:
  """Evaluates ``cfg.eval.models`` on the test split of each of ``domains`` (default
  ``cfg.eval.domains``): results_<domain>_test.{json,md} each, and one table over all of them in
  results_cross_domain.md. Returns {domain: rows}."""
  domains = tuple(domains or cfg.eval.domains)
  if not domains:
    raise ValueError("config.eval.domains is empty: name the benchmarks to evaluate on, e.g. "
                     "('wordnet_gcide:10000', 'debian:10000', 'stdlib', 'beir:/path/to/dir').")
  out = {}
  for spec in domains:
    name, data = parse_domain(spec)
    dcfg = cfg.copy_and_resolve_references()
    with dcfg.unlocked():
      dcfg.data.update(data)
      dcfg.data.unlabeled_queries = 0  # Training-only fields of the trained-on domain.
      dcfg.querygen.ratio = 0.0
    logging.info("Cross-domain evaluation on %s", name)
    out[name] = run(dcfg, workdir, split="test", name=f"{name}_test")
  if jax.process_index() == 0:
    cache.write_text_atomic(epath.Path(workdir) / "results_cross_domain.md", evaluator.domains_table(out, cfg.data))
  return out
