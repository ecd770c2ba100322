"""Re-ranking evaluation of a cross-encoder: it re-scores a first-stage retriever's top-k.

The first stage (``cross_encoder.first_stage``) is BM25 or the dual encoder
``cross_encoder.dual_encoder`` (exact search over its cached tables). Its top ``eval.k`` are
evaluated as they are ("first_stage"), then the CE scores the top ``cross_encoder.rerank_k``
(query, document) pairs and those are ranked by the CE's scores alone
("reranked"; documents below rank k are not returned, so its recall@100 is the first stage's
recall@k). Metrics follow trec_eval conventions (``eval/metrics.py``). The re-ranked row carries its
MRR@10 as a share of the first stage's with the paired bootstrap interval over the queries
(``teacher_pct_lo``/``_hi`` against ``first_stage``): above 100 at the lower end, the CE's gain is real.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import numpy as np

from edistill.eval import evaluator, report
from edistill.eval import metrics as metrics_lib
from edistill.retrieval import bm25 as bm25_lib
from edistill.retrieval import encode as encode_lib
from edistill.retrieval import index as index_lib
from edistill.models import cross_encoder as ce_lib
from edistill.models import zoo


RERANKERS = ("student", "teacher")


def first_stage(cfg, data, k: int) -> tuple[np.ndarray, np.ndarray]:
  """(indices [Q, k] with -1 for no hit, scores [Q, k]) of ``cfg.cross_encoder.first_stage``."""
  k = min(k, len(data.doc_ids))
  if cfg.cross_encoder.first_stage == "bm25":
    return bm25_lib.topk(data, k)
  tpre = zoo.load_from_config(cfg.cross_encoder.dual_encoder)
  cache = Path(zoo.cache_dir()) / "embeddings"
  docs = encode_lib.encode_pretrained(tpre, data.doc_ids, data.doc_texts, cfg.data.max_doc_length, cache,
                                      desc="first-stage documents")
  queries = encode_lib.encode_pretrained(tpre, data.query_ids, data.query_texts, cfg.data.max_query_length, cache,
                                         desc="first-stage queries")
  idx, scores = index_lib.exact_search(queries, docs, k)
  return np.asarray(idx), np.asarray(scores)


def rerank_scores(model: ce_lib.CrossEncoder, params, tokenizer, data, idx: np.ndarray, max_query_length: int,
                  max_doc_length: int, batch_size: int = 64) -> np.ndarray:
  """CE scores [Q, k] of each query with its candidates ``idx`` (-inf where ``idx`` is -1)."""
  q_rows, cols = np.nonzero(idx >= 0)
  pairs = ce_lib.tokenize_pairs(tokenizer, [data.query_texts[q] for q in q_rows],
                                [data.doc_texts[d] for d in idx[q_rows, cols]], max_query_length, max_doc_length)
  scores = np.full(idx.shape, -np.inf, np.float32)
  scores[q_rows, cols] = ce_lib.predict(model, params, pairs, batch_size, desc="re-rank")["scores"]
  return scores


def run(cfg, workdir: str | Path, split: str | None = None, params=None,
        reranker: str = "student", metrics: Sequence[str] = report.METRICS) -> dict[str, dict[str, float]]:
  """First stage and CE re-ranking on ``split``; writes ``results_<dataset>_<split>.{json,md}`` in ``workdir``.

  The CE is ``reranker``: ``"student"``, the CE being trained (params: ``params``, else the workdir's
  or ``eval.checkpoint``'s latest checkpoint), or ``"teacher"``, ``cfg.teacher`` with
  ``cross_encoder.checkpoint``.
  """
  from edistill.eval.suite import load_split, split_heading
  workdir, split = Path(workdir), split or cfg.eval.split
  if reranker == "student":
    enc_cfg, directory = cfg.student, Path(cfg.eval.checkpoint) if cfg.eval.checkpoint else workdir / "checkpoints"
  elif reranker == "teacher":
    enc_cfg, directory = cfg.teacher, Path(cfg.cross_encoder.checkpoint)
  else:
    raise ValueError(f"reranker={reranker!r}; expected one of {RERANKERS}.")
  if params is None:
    model, pre, params = ce_lib.restore(enc_cfg, cfg.cross_encoder, directory)
  else:
    model, pre = ce_lib.load(enc_cfg, cfg.cross_encoder)
  data = load_split(cfg, split)
  k = cfg.cross_encoder.rerank_k
  idx, scores = first_stage(cfg, data, max(k, cfg.eval.k))
  run_fs = metrics_lib.run_from_topk(data.query_ids, data.doc_ids, idx, scores)
  rows = {"first_stage": {**metrics_lib.evaluate(run_fs, data.qrels, metrics),
                          report.PER_QUERY: metrics_lib.mrr(run_fs, data.qrels, 10), report.RUN: run_fs}}
  top = idx[:, :k]
  start = time.perf_counter()
  ce_scores = rerank_scores(model, params, pre.tokenizer, data, top, cfg.data.max_query_length,
                            cfg.data.max_doc_length, cfg.cross_encoder.batch_size)
  seconds = time.perf_counter() - start
  run_ce = metrics_lib.run_from_topk(data.query_ids, data.doc_ids, top, ce_scores)
  rows["reranked"] = {**metrics_lib.evaluate(run_ce, data.qrels, metrics),
                      report.PER_QUERY: metrics_lib.mrr(run_ce, data.qrels, 10), report.RUN: run_ce,
                      "params_m": evaluator.count_params(params) / 1e6,
                      "query_ms": 1000 * seconds / max(len(data.query_ids), 1)}
  rows, runs = report.split_runs(rows)
  rows, per_query = report.teacher_intervals(rows, teacher="first_stage")
  name = f"{report.data_name(cfg.data)}_{split}"
  header = (f"{split_heading(cfg, split, data, pre.tokenizer)}"
            f"first_stage = {cfg.cross_encoder.first_stage} (exact top {cfg.eval.k}); reranked = its top {k} "
            f"re-scored by the {cfg.cross_encoder.head!r}-head cross-encoder ({enc_cfg.name}, "
            f"{model.config.num_layers} layers); query_ms = CE time per query for {k} pairs (batched, CPU); "
            f"% first stage = MRR@10 as a share of the first stage's, 95 % interval: paired bootstrap over these "
            f"queries (per_query_{name}.json; above 100 = the re-ranking gains).\n\n")
  report.write_results(workdir, name, rows, header, per_query, metrics=metrics, teacher="first_stage", runs=runs)
  return rows
