"""Retrieval metrics of encoders and BM25 on a dataset split (tables and files: ``eval/report.py``).

Every dense evaluation runs exact search (the reference) and, when asked, ScaNN; the ScaNN row
carries its recall@10 against exact search so an approximate number is never reported alone.
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable, Sequence

import jax
import numpy as np

from edistill import xla_options
from edistill.eval import metrics as metrics_lib
from edistill.eval.report import METRICS, PER_QUERY, RUN
from edistill.retrieval import bm25 as bm25_lib
from edistill.retrieval import encode as encode_lib
from edistill.retrieval import index as index_lib


@dataclasses.dataclass
class DenseModel:
  """An encoder pair to evaluate: ``query_fn``/``doc_fn`` map (params, ids, mask) -> [B, D]."""

  name: str
  query_fn: Callable
  query_params: Any
  query_tokenizer: Any
  doc_fn: Callable | None = None  # None: documents come from ``doc_embeddings``.
  doc_params: Any = None
  doc_tokenizer: Any = None
  doc_embeddings: np.ndarray | None = None
  num_params: int = 0  # Query-side parameters (the online cost).


def count_params(*trees) -> int:
  return int(sum(np.size(x) for t in trees if t is not None for x in jax.tree.leaves(t)))


def dense_scores(query_emb: np.ndarray, doc_emb: np.ndarray, data, k: int = 100, scann: bool = False,
                 scann_overrides: dict | None = None, metrics: Sequence[str] = METRICS,
                 multihost: bool = False) -> dict[str, Any]:
  """Metrics of exact top-k search (and ScaNN's, prefixed ``scann/``, with its recall vs exact), and
  the exact search's per-query MRR@10 under ``PER_QUERY``. Exact search runs on every local device
  (``multihost``: every process calls together, each searching its share of the queries); ScaNN
  runs on each host over the whole corpus."""
  _check_finite_rows(query_emb, data.query_ids, "query")
  _check_finite_rows(doc_emb, data.doc_ids, "document")
  k = min(k, len(data.doc_ids))
  exact_idx, exact_scores = index_lib.exact_search(query_emb, doc_emb, k, multihost=multihost)
  run = metrics_lib.run_from_topk(data.query_ids, data.doc_ids, np.asarray(exact_idx), np.asarray(exact_scores))
  out = _scores(run, data.qrels, metrics)
  if scann:
    cfg = index_lib.ScannConfig.for_corpus(len(data.doc_ids), k=k)
    if scann_overrides:
      cfg = dataclasses.replace(cfg, **scann_overrides)
    start = time.perf_counter()
    searcher = index_lib.build_scann(doc_emb, cfg)
    build_s = time.perf_counter() - start
    idx, scores = index_lib.scann_search(searcher, query_emb, k)
    approx = metrics_lib.evaluate(metrics_lib.run_from_topk(data.query_ids, data.doc_ids, idx, scores), data.qrels,
                                  metrics)
    out.update({f"scann/{m}": v for m, v in approx.items() if m != "num_queries"})
    out["scann/recall@10_vs_exact"] = index_lib.recall_against_exact(idx, np.asarray(exact_idx), min(10, k))
    out["scann/build_s"] = build_s
  return out


def _check_finite_rows(emb: np.ndarray, ids: Sequence[str], what: str) -> None:
  """Raises naming the first of ``ids`` whose embedding row ([N, D]) holds a NaN or infinity: search
  would rank it arbitrarily and the metrics would look merely low."""
  bad = np.flatnonzero(~np.isfinite(np.asarray(emb)).all(axis=1))
  if len(bad):
    raise FloatingPointError(f"{len(bad)} of {len(ids)} {what} embeddings are non-finite, the first for "
                             f"{what} id {ids[bad[0]]!r} (row {bad[0]}); check the model's parameters.")


def _encoder(multihost: bool):
  return encode_lib.encode_across_processes if multihost else encode_lib.encode


def encode_queries(model: DenseModel, data, max_query_length: int, mesh=None, multihost: bool = False) -> np.ndarray:
  """[Q, D] query embeddings (``multihost``: split across the processes, every process calling)."""
  return _encoder(multihost)(model.query_fn, model.query_params, model.query_tokenizer, data.query_texts,
                             max_query_length, mesh=mesh, desc=f"{model.name} queries")


def embed(model: DenseModel, data, max_query_length: int, max_doc_length: int, cache_dir: str | os.PathLike | None,
          mesh=None, multihost: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """(query [Q, D], document [N, D]) embeddings; documents cached on disk when ``cache_dir`` is set.
  ``multihost``: every process calls this together and the encodings are split across them."""
  q = encode_queries(model, data, max_query_length, mesh, multihost)
  if model.doc_fn is None:
    return q, model.doc_embeddings
  kw = dict(mesh=mesh, desc=f"{model.name} documents")
  if cache_dir is None:
    d = _encoder(multihost)(model.doc_fn, model.doc_params, model.doc_tokenizer, data.doc_texts, max_doc_length, **kw)
  else:
    key = {"model": encode_lib.params_fingerprint(model.doc_params), "fn": model.name}
    _, d = encode_lib.encode_cached(cache_dir, key, model.doc_fn, model.doc_params, model.doc_tokenizer,
                                    data.doc_ids, data.doc_texts, max_doc_length, multihost=multihost, **kw)
  return q, d


def query_latency_ms(model: DenseModel, texts: Sequence[str], max_length: int, repeats: int = 30) -> float:
  """Median wall time to encode one query (batch 1, bucketed length), after compilation."""
  from edistill.models import tokenization
  fn = xla_options.inference_jit(model.query_fn)
  params = jax.device_put(model.query_params)
  batches = [tokenization.tokenize(model.query_tokenizer, [t], max_length, bucket=16) for t in texts[:repeats]]
  for b in batches:
    fn(params, b["input_ids"], b["attention_mask"]).block_until_ready()
  times = []
  for b in batches:
    start = time.perf_counter()
    fn(params, b["input_ids"], b["attention_mask"]).block_until_ready()
    times.append(time.perf_counter() - start)
  return 1000 * float(np.median(times))


def bm25(data, k: int = 100, metrics: Sequence[str] = METRICS) -> dict[str, Any]:
  """BM25 (bm25s, Lucene scoring, English stopwords) over the split's corpus."""
  idx, scores = bm25_lib.topk(data, k)
  run = metrics_lib.run_from_topk(data.query_ids, data.doc_ids, idx, scores)
  return _scores(run, data.qrels, metrics)


def _scores(run, qrels, metrics: Sequence[str]) -> dict[str, Any]:
  return {**metrics_lib.evaluate(run, qrels, metrics), PER_QUERY: metrics_lib.mrr(run, qrels, 10), RUN: run}
