"""Retrieval metrics with trec_eval (9.0.x) / pytrec_eval / BEIR definitions, in pure Python.

Inputs:
  run    ``dict[str, dict[str, float]]`` query id -> {doc id: score}
  qrels  ``dict[str, dict[str, int]]``   query id -> {doc id: graded relevance}

A document is relevant iff its relevance is > 0 (trec_eval's default ``-l 1``); relevance 0 or
negative, and documents absent from the qrels, are non-relevant.

Ranking: a query's run is ordered by score descending, ties broken by doc id DESCENDING (Python
string order, which for ids is trec_eval's ``strcmp`` order). This is trec_eval's own tie-break
(``comp_sim_docno`` in ``form_res_rels.c``); any rank column of a run file is ignored, as there.

Per query, with ``g_i`` the relevance of the document at rank ``i`` (0 if unjudged), ``R`` the
number of relevant documents in the qrels and ``k`` the cut-off (``None``: the whole ranking):
  mrr@k        1 / (rank of the first relevant document within the top k), 0 if none
  recall@k     |relevant in top k| / R
  precision@k  |relevant in top k| / k      (trec_eval ``P_k``: divides by k even when fewer than
                                             k documents were retrieved)
  map[@k]      sum over relevant documents ranked i <= k of precision@i, divided by R (trec_eval
               ``map`` / ``map_cut_k``: relevant documents never retrieved contribute 0)
  ndcg@k       DCG@k / IDCG@k with DCG@k = sum_{i<=k, g_i>0} g_i / log2(i + 1) (trec_eval
               ``ndcg_cut_k``): linear gain g_i, NOT 2^g_i - 1 as in some other libraries;
               IDCG@k is the same sum over the qrels' positive relevances sorted descending.
               (trec_eval before 9.0 discounted by log2(i), with rank 1 undiscounted.)

Which queries count (the mean is over them; these choices are shared by every metric):
  * queries in the qrels with no relevant document (all relevance <= 0) are EXCLUDED: recall, MAP
    and nDCG are 0/0 there. trec_eval and pytrec_eval instead score them 0 and average them in
    (when the run has the query), which only deflates the mean by a run-independent amount.
  * queries in the qrels (with a relevant document) but absent from the run COUNT, with 0 on
    every metric. This is trec_eval's stricter ``-c`` convention; without ``-c`` trec_eval and
    pytrec_eval/BEIR average over run ∩ qrels, so a system could raise its mean by dropping its
    hard queries. A query with an empty ranking scores 0 everywhere, likewise.
  * run queries absent from the qrels are ignored.
"""
from __future__ import annotations

import heapq
import math
from typing import Callable, Mapping, Sequence

import numpy as np

from edistill.data.types import Qrels

Run = dict[str, dict[str, float]]
# (relevances of the ranked documents, the qrels' positive relevances sorted descending, k) -> value
_Kernel = Callable[[Sequence[int], Sequence[int], int | None], float]


def rank(scores: Mapping[str, float], k: int | None = None) -> list[str]:
  """Doc ids by score descending, ties by doc id descending (trec_eval), the first ``k`` only.

  A NaN or infinite score raises ValueError naming the document: NaN has no order, so any ranking
  of it (and every metric after it) would be arbitrary.
  """
  bad = next((doc for doc, s in scores.items() if not math.isfinite(s)), None)
  if bad is not None:
    raise ValueError(f"document {bad!r} has the non-finite score {scores[bad]}")
  key = lambda item: (item[1], item[0])
  # nlargest(k, ...) == sorted(..., reverse=True)[:k] (the keys are unique), without a full sort.
  items = scores.items()
  top = sorted(items, key=key, reverse=True) if k is None else heapq.nlargest(k, items, key=key)
  return [doc for doc, _ in top]


def _reciprocal_rank(gains: Sequence[int], ideal: Sequence[int], k: int | None) -> float:
  for i, g in enumerate(gains[:k], 1):
    if g > 0:
      return 1.0 / i
  return 0.0


def _recall(gains: Sequence[int], ideal: Sequence[int], k: int | None) -> float:
  return sum(g > 0 for g in gains[:k]) / len(ideal)


def _precision(gains: Sequence[int], ideal: Sequence[int], k: int | None) -> float:
  return sum(g > 0 for g in gains[:k]) / k


def _average_precision(gains: Sequence[int], ideal: Sequence[int], k: int | None) -> float:
  hits, total = 0, 0.0
  for i, g in enumerate(gains[:k], 1):
    if g > 0:
      hits += 1
      total += hits / i
  return total / len(ideal)  # Not / hits: relevant documents never retrieved count as precision 0.


def _dcg(gains: Sequence[int]) -> float:
  return sum(g / math.log2(i + 1) for i, g in enumerate(gains, 1) if g > 0)


def _ndcg(gains: Sequence[int], ideal: Sequence[int], k: int | None) -> float:
  return _dcg(gains[:k]) / _dcg(ideal[:k])  # ideal is non-empty and positive: IDCG > 0.


_KERNELS: dict[str, _Kernel] = {"mrr": _reciprocal_rank, "recall": _recall, "precision": _precision,
                                "p": _precision, "ndcg": _ndcg, "map": _average_precision}


def parse_metric(spec: str) -> tuple[str, int | None]:
  """``"ndcg@10"`` -> ``("ndcg", 10)``; ``"map"`` -> ``("map", None)`` (no cut-off). Names (any case):
  mrr, recall, precision (or p), ndcg, map; precision needs a cut-off."""
  name, sep, cut = spec.strip().lower().partition("@")
  if name not in _KERNELS:
    raise ValueError(f"unknown metric {spec!r}; known: {sorted(_KERNELS)}")
  if not sep:
    if _KERNELS[name] is _precision:
      raise ValueError(f"metric {spec!r} needs a cut-off, e.g. {name}@10")
    return name, None
  if not cut.isdigit() or int(cut) < 1:
    raise ValueError(f"metric {spec!r}: the cut-off must be a positive integer")
  return name, int(cut)


def per_query(run: Run, qrels: Qrels, metrics: Sequence[str]) -> dict[str, dict[str, float]]:
  """Metric spec -> {query id: value} over the evaluated queries (see the module docstring)."""
  parsed = [(spec, _KERNELS[name], k) for spec in metrics for name, k in [parse_metric(spec)]]
  # Rank each query once, as deep as the deepest cut-off asks.
  depth = None if any(k is None for _, _, k in parsed) else max((k for _, _, k in parsed), default=0)
  out: dict[str, dict[str, float]] = {spec: {} for spec, _, _ in parsed}
  for qid, judged in qrels.items():
    ideal = sorted((r for r in judged.values() if r > 0), reverse=True)
    if not ideal:
      continue  # No relevant document: every metric is undefined, the query is left out.
    try:
      ranked = rank(run.get(qid, {}), depth)  # Absent from run: [].
    except ValueError as e:
      raise ValueError(f"query {qid!r}: {e}") from None
    gains = [judged.get(doc, 0) for doc in ranked]
    for spec, kernel, k in parsed:
      out[spec][qid] = kernel(gains, ideal, k)
  return out


def _one(run: Run, qrels: Qrels, name: str, k: int | None) -> dict[str, float]:
  spec = name if k is None else f"{name}@{k}"
  return per_query(run, qrels, [spec])[spec]


def mrr(run: Run, qrels: Qrels, k: int | None = None) -> dict[str, float]:
  """Per query: 1 / rank of the first relevant document within the top ``k``, 0 if none."""
  return _one(run, qrels, "mrr", k)


def recall(run: Run, qrels: Qrels, k: int | None = None) -> dict[str, float]:
  """Per query: |relevant in top ``k``| / |relevant|."""
  return _one(run, qrels, "recall", k)


def precision(run: Run, qrels: Qrels, k: int) -> dict[str, float]:
  """Per query: |relevant in top ``k``| / ``k`` (trec_eval ``P_k``, even if fewer were retrieved)."""
  return _one(run, qrels, "precision", k)


def ndcg(run: Run, qrels: Qrels, k: int | None = None) -> dict[str, float]:
  """Per query: DCG@k / IDCG@k, linear gain, discount 1 / log2(rank + 1) (trec_eval ``ndcg_cut``)."""
  return _one(run, qrels, "ndcg", k)


def average_precision(run: Run, qrels: Qrels, k: int | None = None) -> dict[str, float]:
  """Per query: sum of precision@rank over the relevant documents ranked within ``k``, divided by
  |relevant| (trec_eval ``map``, or ``map_cut_k`` with ``k``)."""
  return _one(run, qrels, "map", k)


def evaluate(run: Run, qrels: Qrels,
             metrics: Sequence[str] = ("mrr@10", "recall@10", "recall@100", "ndcg@10", "map")
             ) -> dict[str, float]:
  """Metric spec -> mean over the evaluated queries, plus ``num_queries`` (how many were averaged).

  Raises ValueError when no query in ``qrels`` has a relevant document (the mean is undefined)."""
  scores = per_query(run, qrels, metrics)
  n = sum(1 for judged in qrels.values() if any(r > 0 for r in judged.values()))
  if n == 0:
    raise ValueError("no query in qrels has a relevant document: nothing to average")
  result: dict[str, float] = {spec: math.fsum(values.values()) / n for spec, values in scores.items()}
  result["num_queries"] = n
  return result


def run_from_topk(query_ids: Sequence[str], doc_ids: Sequence[str], indices: np.ndarray,
                  scores: np.ndarray) -> Run:
  """A run from a top-k search: row ``q`` of ``indices`` [Q, K] (int, into ``doc_ids``; -1 pads
  rows with fewer hits) and ``scores`` [Q, K] (float) -> {query_ids[q]: {doc id: score}}."""
  indices, scores = np.asarray(indices), np.asarray(scores)
  if indices.ndim != 2 or indices.shape != scores.shape or len(indices) != len(query_ids):
    raise ValueError(f"indices {indices.shape} and scores {scores.shape} must both be "
                     f"[{len(query_ids)} queries, K]")
  if indices.size and (indices.min() < -1 or indices.max() >= len(doc_ids)):
    # A stray negative would silently index from the end of doc_ids.
    raise ValueError(f"indices must lie in [-1, {len(doc_ids)})")
  run: Run = {}
  for qid, row, values in zip(query_ids, indices.tolist(), scores.tolist()):
    hits = {doc_ids[i]: s for i, s in zip(row, values) if i != -1}
    if len(hits) != sum(i != -1 for i in row):
      raise ValueError(f"query {qid!r}: a document appears twice in its top-k")
    if qid in run:
      raise ValueError(f"duplicate query id {qid!r}")
    run[qid] = hits
  return run


def bootstrap_ratio_ci(num: Mapping[str, float], den: Mapping[str, float], samples: int = 10_000,
                       level: float = 0.95, seed: int = 0, chunk: int = 256) -> tuple[float, float]:
  """Paired percentile bootstrap interval of mean(num) / mean(den) over the same queries.

  ``num`` and ``den`` are per-query values of two systems ({query id: value}, e.g. the student's and
  the teacher's reciprocal ranks from ``per_query``); each of ``samples`` resamples draws the queries
  with replacement and takes both means over the same draw, so the interval reflects how much the
  ratio depends on which queries the test split happens to hold. Deterministic in ``seed``.
  """
  if set(num) != set(den):
    raise ValueError(f"the two systems were scored on different queries ({len(set(num) ^ set(den))} differ)")
  if not num:
    raise ValueError("no queries to resample")
  if not 0 < level < 1:
    raise ValueError(f"level must be in (0, 1), got {level}")
  qids = sorted(num)
  a, b = np.array([num[q] for q in qids]), np.array([den[q] for q in qids])
  rng, ratios = np.random.default_rng(seed), []
  for start in range(0, samples, chunk):  # [chunk, n] indices at a time: bounded memory for big splits.
    idx = rng.integers(0, len(qids), (min(chunk, samples - start), len(qids)))
    sa, sb = a[idx].sum(1), b[idx].sum(1)
    ratios.append(np.divide(sa, sb, out=np.full_like(sa, np.nan), where=sb > 0))
  r = np.concatenate(ratios)
  r = r[np.isfinite(r)]  # A draw where the reference scores 0 everywhere has no ratio.
  if not len(r):
    raise ValueError("the reference system scores 0 on every query: the ratio is undefined")
  lo, hi = np.quantile(r, [(1 - level) / 2, (1 + level) / 2])
  return float(lo), float(hi)
