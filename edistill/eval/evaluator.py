"""Retrieval evaluation of encoders and BM25 on a dataset split, with baselines and a results table.

Every dense evaluation runs exact search (the reference) and, when asked, ScaNN; the ScaNN row
carries its recall@10 against exact search so an approximate number is never reported alone.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import numpy as np
from absl import logging
from etils import epath

from edistill import cache, xla_options

from edistill.retrieval import bm25 as bm25_lib
from edistill.retrieval import encode as encode_lib
from edistill.retrieval import index as index_lib
from edistill.eval import metrics as metrics_lib

METRICS = ("mrr@10", "recall@10", "recall@100", "ndcg@10")
# Row entry {query id: reciprocal rank within the top 10} of exact search (BM25: its own ranking), which
# ``teacher_intervals`` turns into a bootstrap interval of each model's share of the teacher's MRR@10.
PER_QUERY = "per_query/mrr@10"


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
                 scann_overrides: dict | None = None, metrics: Sequence[str] = METRICS) -> dict[str, Any]:
  """Metrics of exact top-k search (and ScaNN's, prefixed ``scann/``, with its recall vs exact), and
  the exact search's per-query MRR@10 under ``PER_QUERY``."""
  _check_finite_rows(query_emb, data.query_ids, "query")
  _check_finite_rows(doc_emb, data.doc_ids, "document")
  k = min(k, len(data.doc_ids))
  exact_idx, exact_scores = index_lib.exact_search(query_emb, doc_emb, k)
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


def embed(model: DenseModel, data, max_query_length: int, max_doc_length: int, cache_dir: str | os.PathLike | None,
          mesh=None) -> tuple[np.ndarray, np.ndarray]:
  """(query [Q, D], document [N, D]) embeddings; documents cached on disk when ``cache_dir`` is set."""
  q = encode_lib.encode(model.query_fn, model.query_params, model.query_tokenizer, data.query_texts,
                        max_query_length, mesh=mesh, desc=f"{model.name} queries")
  if model.doc_fn is None:
    return q, model.doc_embeddings
  kw = dict(mesh=mesh, desc=f"{model.name} documents")
  if cache_dir is None:
    d = encode_lib.encode(model.doc_fn, model.doc_params, model.doc_tokenizer, data.doc_texts, max_doc_length, **kw)
  else:
    key = {"model": encode_lib.params_fingerprint(model.doc_params), "fn": model.name}
    _, d = encode_lib.encode_cached(cache_dir, key, model.doc_fn, model.doc_params, model.doc_tokenizer,
                                    data.doc_ids, data.doc_texts, max_doc_length, **kw)
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
  return {**metrics_lib.evaluate(run, qrels, metrics), PER_QUERY: metrics_lib.mrr(run, qrels, 10)}


def teacher_intervals(rows: dict[str, dict[str, Any]], teacher: str = "teacher", level: float = 0.95
                      ) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
  """Splits the ``PER_QUERY`` entries off ``rows`` and adds, to every other model's row, the paired
  bootstrap interval (``level``, over the test queries) of its MRR@10 as % of the teacher's:
  ``teacher_pct_lo`` / ``teacher_pct_hi``. Returns (rows of floats, {model: {query id: RR@10}})."""
  per_query = {name: r[PER_QUERY] for name, r in rows.items() if PER_QUERY in r}
  out = {name: {k: v for k, v in r.items() if k != PER_QUERY} for name, r in rows.items()}
  ref = per_query.get(teacher)
  if ref and any(ref.values()):
    for name, values in per_query.items():
      if name != teacher:
        lo, hi = metrics_lib.bootstrap_ratio_ci(values, ref, level=level)
        out[name].update(teacher_pct_lo=100 * lo, teacher_pct_hi=100 * hi)
  return out, per_query


def results_table(rows: dict[str, dict[str, float]], teacher: str | None = "teacher",
                  metrics: Sequence[str] = METRICS) -> str:
  """Markdown: one row per model; % of the teacher's MRR@10; params and query latency when known."""
  head = ["model", *metrics]
  ref = rows.get(teacher, {}).get("mrr@10") if teacher else None
  if ref:
    head.append("% teacher MRR@10")
  ci = bool(ref) and any("teacher_pct_lo" in r for r in rows.values())
  if ci:
    head.append("95 % interval")  # Paired bootstrap over the queries (teacher_intervals).
  extra = [c for c in ("scann/recall@10_vs_exact", "params_m", "query_ms") if any(c in r for r in rows.values())]
  head += extra
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for name, r in rows.items():
    cells = [name] + [f"{r[m]:.4f}" if m in r else "" for m in metrics]
    if ref:
      cells.append(f"{100 * r['mrr@10'] / ref:.1f}" if "mrr@10" in r else "")
    if ci:
      cells.append(f"{r['teacher_pct_lo']:.1f}-{r['teacher_pct_hi']:.1f}" if "teacher_pct_lo" in r else "")
    cells += [f"{r[c]:.3f}" if c in r and c != "params_m" else (f"{r[c]:.1f}M" if c in r else "") for c in extra]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def write_results(workdir: str | os.PathLike, split: str, rows: dict[str, dict[str, float]], header: str = "",
                  per_query: dict[str, dict[str, float]] | None = None) -> Path:
  """``results_<split>.json`` and ``results_<split>.md`` in the workdir (atomic writes), and
  ``per_query_<split>.json`` ({model: {query id: RR@10}}) when ``per_query`` is given."""
  workdir = epath.Path(workdir)  # Local or gs://.
  files = [(f"results_{split}.json", json.dumps(rows, indent=2)), (f"results_{split}.md", header + results_table(rows))]
  if per_query:
    files.append((f"per_query_{split}.json", json.dumps(per_query, indent=1, sort_keys=True)))
  for name, text in files:
    cache.write_text_atomic(workdir / name, text)
  logging.info("Results written to %s", workdir / f"results_{split}.md")
  return workdir / f"results_{split}.md"


def domains_table(rows_by_domain: dict[str, dict[str, dict[str, float]]], trained_on=None,
                  teacher: str = "teacher") -> str:
  """Markdown over domains: per (domain, model) MRR@10, R@10 and the share of that domain's teacher
  with its 95 % interval; each model's row is the same model evaluated on every domain."""
  where = (f" (trained on {trained_on.source}"
           + (f" at {trained_on.corpus_size} documents" if trained_on.get("corpus_size") else "") + ")"
           if trained_on is not None else "")
  lines = [f"# Cross-domain evaluation{where}", "",
           "Test splits; % teacher = MRR@10 as a share of the teacher's on the same domain, with its paired "
           "bootstrap 95 % interval over that domain's queries.", "",
           "| domain | queries | model | mrr@10 | recall@10 | % teacher MRR@10 | 95 % interval |",
           "|---|---|---|---|---|---|---|"]
  for domain, rows in rows_by_domain.items():
    ref = rows.get(teacher, {}).get("mrr@10")
    for name, r in rows.items():
      share = f"{100 * r['mrr@10'] / ref:.1f}" if ref else ""
      ci = f"{r['teacher_pct_lo']:.1f}-{r['teacher_pct_hi']:.1f}" if "teacher_pct_lo" in r else ""
      lines.append(f"| {domain} | {int(r.get('num_queries', 0))} | {name} | {r['mrr@10']:.4f} | "
                   f"{r['recall@10']:.4f} | {share} | {ci} |")
  return "\n".join(lines) + "\n"
