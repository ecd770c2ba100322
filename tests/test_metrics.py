"""Retrieval metrics against values worked out by hand (trec_eval conventions)."""
import math

import numpy as np
import pytest

from edistill.eval import metrics


def approx(x):
  return pytest.approx(x, abs=1e-12, rel=1e-12)


# One graded query used by several tests. Ranking (no ties): d1(3) d4(0) d3(1) d5(unjudged) d2(2);
# relevant = {d1, d2, d3} (d4 has relevance 0: judged non-relevant), so R = 3.
GRADED_RUN = {"q": {"d1": 0.9, "d4": 0.8, "d3": 0.7, "d5": 0.6, "d2": 0.5}}
GRADED_QRELS = {"q": {"d1": 3, "d2": 2, "d3": 1, "d4": 0}}


def test_rank_orders_by_score_then_doc_id_descending():
  scores = {"d1": 1.0, "d2": 2.0, "d3": 2.0, "a": 0.5, "d10": 1.0, "d9": 1.0}
  # 2.0: d3 > d2; 1.0: "d9" > "d10" > "d1" as strings (not numbers); then a.
  assert metrics.rank(scores) == ["d3", "d2", "d9", "d10", "d1", "a"]
  assert metrics.rank(scores, 4) == ["d3", "d2", "d9", "d10"]
  assert metrics.rank({}) == [] and metrics.rank({}, 3) == []


def test_tie_break_decides_mrr():
  run = {"q": {"a": 1.0, "b": 1.0}}  # Tied: b is ranked 1st, a 2nd.
  assert metrics.mrr(run, {"q": {"a": 1}}, 10) == {"q": approx(1 / 2)}
  assert metrics.mrr(run, {"q": {"b": 1}}, 10) == {"q": approx(1.0)}
  # The tie-break also decides what survives a cut-off: top 1 is b alone.
  assert metrics.mrr(run, {"q": {"a": 1}}, 1) == {"q": 0.0}
  assert metrics.recall(run, {"q": {"a": 1}}, 1) == {"q": 0.0}


def test_ndcg_graded_linear_gain_and_cutoffs():
  l2 = math.log2
  ideal = 3 / l2(2) + 2 / l2(3) + 1 / l2(4)  # Positive relevances 3, 2, 1 at ranks 1, 2, 3.
  # Full ranking: gains 3 (rank 1), 1 (rank 3), 2 (rank 5); d4 and d5 gain 0.
  assert metrics.ndcg(GRADED_RUN, GRADED_QRELS) == {"q": approx((3 / l2(2) + 1 / l2(4) + 2 / l2(6)) / ideal)}
  assert metrics.ndcg(GRADED_RUN, GRADED_QRELS, 10) == {"q": approx((3 / l2(2) + 1 / l2(4) + 2 / l2(6)) / ideal)}
  # k = 3 < 5 retrieved: ndcg = (3/log2(2) + 1/log2(4)) / (3/log2(2) + 2/log2(3) + 1/log2(4)).
  assert metrics.ndcg(GRADED_RUN, GRADED_QRELS, 3) == {"q": approx((3 / l2(2) + 1 / l2(4)) / ideal)}
  # k = 2: the ideal is cut too: 3/log2(2) / (3/log2(2) + 2/log2(3)).
  assert metrics.ndcg(GRADED_RUN, GRADED_QRELS, 2) == {"q": approx(3 / (3 + 2 / l2(3)))}
  assert metrics.ndcg(GRADED_RUN, GRADED_QRELS, 1) == {"q": approx(1.0)}  # 3/log2(2) over itself.
  # Exponential gain (2^rel - 1) would give (7 + 1/2) / (7 + 3/log2(3) + 1/2) at k = 3: not ours.
  assert metrics.ndcg(GRADED_RUN, GRADED_QRELS, 3)["q"] != approx((7 + 1 / 2) / (7 + 3 / l2(3) + 1 / 2))


def test_graded_query_other_metrics_with_cutoffs():
  # Relevant at ranks 1, 3, 5 (rank 2 is d4, relevance 0), R = 3.
  assert metrics.mrr(GRADED_RUN, GRADED_QRELS, 10) == {"q": approx(1.0)}
  assert metrics.recall(GRADED_RUN, GRADED_QRELS, 1) == {"q": approx(1 / 3)}
  assert metrics.recall(GRADED_RUN, GRADED_QRELS, 3) == {"q": approx(2 / 3)}
  assert metrics.recall(GRADED_RUN, GRADED_QRELS, 4) == {"q": approx(2 / 3)}
  assert metrics.recall(GRADED_RUN, GRADED_QRELS, 5) == {"q": approx(1.0)}
  assert metrics.precision(GRADED_RUN, GRADED_QRELS, 2) == {"q": approx(1 / 2)}
  assert metrics.precision(GRADED_RUN, GRADED_QRELS, 5) == {"q": approx(3 / 5)}
  # AP = (P@1 + P@3 + P@5) / 3 = (1/1 + 2/3 + 3/5) / 3; cut at 3: (1/1 + 2/3) / 3.
  assert metrics.average_precision(GRADED_RUN, GRADED_QRELS) == {"q": approx((1 + 2 / 3 + 3 / 5) / 3)}
  assert metrics.average_precision(GRADED_RUN, GRADED_QRELS, 3) == {"q": approx((1 + 2 / 3) / 3)}


def test_relevance_zero_is_not_relevant():
  run = {"q": {"z": 2.0, "y": 1.0}}
  qrels = {"q": {"z": 0, "y": 1}}  # z judged non-relevant: the first relevant is y at rank 2.
  assert metrics.mrr(run, qrels, 10) == {"q": approx(1 / 2)}
  assert metrics.precision(run, qrels, 2) == {"q": approx(1 / 2)}  # 1 relevant / 2.
  assert metrics.recall(run, qrels, 1) == {"q": 0.0}  # R = 1 (z does not count), none in top 1.
  assert metrics.ndcg(run, qrels, 10) == {"q": approx((1 / math.log2(3)) / 1)}  # IDCG = 1/log2(2).
  assert metrics.average_precision(run, qrels) == {"q": approx(1 / 2)}  # (1/2) / 1.


def test_map_counts_relevant_documents_never_retrieved():
  run = {"q": {"a": 3.0, "x": 2.0, "b": 1.0}}
  qrels = {"q": {"a": 1, "b": 1, "c": 1, "d": 1}}  # c, d never retrieved; R = 4.
  # AP = (P@1 + P@3) / 4 = (1/1 + 2/3) / 4, not / 2 (the relevant retrieved).
  assert metrics.average_precision(run, qrels) == {"q": approx((1 + 2 / 3) / 4)}
  assert metrics.average_precision(run, qrels, 1) == {"q": approx(1 / 4)}  # map_cut_1: (1/1) / 4.
  assert metrics.average_precision(run, qrels, 2) == {"q": approx(1 / 4)}  # x at rank 2 adds nothing.
  assert metrics.recall(run, qrels, 100) == {"q": approx(2 / 4)}


def test_precision_divides_by_k_when_fewer_retrieved():
  run = {"q": {"a": 2.0, "b": 1.0}}  # Only 2 retrieved, both relevant.
  qrels = {"q": {"a": 1, "b": 1, "c": 1}}
  assert metrics.precision(run, qrels, 10) == {"q": approx(2 / 10)}
  assert metrics.precision(run, qrels, 1) == {"q": approx(1 / 1)}
  assert metrics.recall(run, qrels, 10) == {"q": approx(2 / 3)}
  # nDCG@10 = (1/log2(2) + 1/log2(3)) / (1/log2(2) + 1/log2(3) + 1/log2(4)).
  assert metrics.ndcg(run, qrels, 10) == {"q": approx((1 + 1 / math.log2(3)) / (1 + 1 / math.log2(3) + 1 / 2))}


def test_query_without_relevant_docs_is_excluded():
  run = {"q1": {"a": 1.0}, "q2": {"x": 1.0}}
  qrels = {"q1": {"a": 1}, "q2": {"x": 0, "y": -1}}  # q2 has no relevant document.
  for fn in (metrics.mrr, metrics.recall, metrics.ndcg, metrics.average_precision):
    assert fn(run, qrels, 10) == {"q1": approx(1.0)}
  result = metrics.evaluate(run, qrels)
  assert result == {"mrr@10": approx(1.0), "recall@10": approx(1.0), "recall@100": approx(1.0),
                    "ndcg@10": approx(1.0), "map": approx(1.0), "num_queries": 1}  # Not 1/2 each.
  with pytest.raises(ValueError, match="no query"):
    metrics.evaluate(run, {"q2": {"x": 0}})


def test_query_missing_from_run_counts_as_zero_and_extra_run_queries_are_ignored():
  run = {"q1": {"a": 2.0, "b": 1.0}, "q9": {"z": 5.0}, "q4": {}}  # q9 unjudged; q4 empty ranking.
  qrels = {"q1": {"b": 1}, "q3": {"c": 2}, "q4": {"d": 1}}  # q3 absent from the run.
  per = metrics.per_query(run, qrels, ["mrr@10", "recall@1", "ndcg@10", "map", "p@2"])
  # q1: b at rank 2. q3, q4: nothing retrieved -> 0 everywhere.
  assert per == {"mrr@10": {"q1": approx(1 / 2), "q3": 0.0, "q4": 0.0},
                 "recall@1": {"q1": 0.0, "q3": 0.0, "q4": 0.0},
                 "ndcg@10": {"q1": approx(1 / math.log2(3)), "q3": 0.0, "q4": 0.0},
                 "map": {"q1": approx(1 / 2), "q3": 0.0, "q4": 0.0},
                 "p@2": {"q1": approx(1 / 2), "q3": 0.0, "q4": 0.0}}
  result = metrics.evaluate(run, qrels, ["mrr@10", "ndcg@10", "P@2"])
  # Means over 3 queries (q9 ignored): (1/2 + 0 + 0) / 3, (1/log2(3)) / 3, (1/2) / 3.
  assert result == {"mrr@10": approx(1 / 6), "ndcg@10": approx(1 / math.log2(3) / 3), "P@2": approx(1 / 6),
                    "num_queries": 3}


def test_evaluate_means_over_queries():
  run = {**GRADED_RUN, "r": {"u": 1.0, "v": 1.0, "w": 0.5}}  # Tie: v ranked before u.
  qrels = {**GRADED_QRELS, "r": {"u": 1}}
  result = metrics.evaluate(run, qrels)
  l2 = math.log2
  # r: u at rank 2 -> mrr 1/2, recall 1, ndcg (1/log2(3)) / 1, AP (1/2) / 1.
  assert result == {
      "mrr@10": approx((1 + 1 / 2) / 2),
      "recall@10": approx((1 + 1) / 2),
      "recall@100": approx((1 + 1) / 2),
      "ndcg@10": approx(((3 + 1 / 2 + 2 / l2(6)) / (3 + 2 / l2(3) + 1 / 2) + 1 / l2(3)) / 2),
      "map": approx(((1 + 2 / 3 + 3 / 5) / 3 + 1 / 2) / 2),
      "num_queries": 2}


def test_parse_metric():
  assert metrics.parse_metric("ndcg@10") == ("ndcg", 10)
  assert metrics.parse_metric("MAP") == ("map", None)
  assert metrics.parse_metric("P@5") == ("p", 5)
  assert metrics.parse_metric("recall@100") == ("recall", 100)
  for bad in ("ndcg@0", "ndcg@-1", "recall@x", "foo@1", "precision", "mrr@"):
    with pytest.raises(ValueError):
      metrics.parse_metric(bad)
  with pytest.raises(ValueError):
    metrics.mrr({}, {"q": {"a": 1}}, 0)


def test_run_from_topk_skips_padding():
  indices = np.array([[2, 0, 1], [1, -1, -1], [-1, -1, -1]], np.int32)
  scores = np.array([[0.5, 0.25, 0.25], [0.75, -np.inf, -np.inf], [-np.inf] * 3], np.float32)
  run = metrics.run_from_topk(["q1", "q2", "q3"], ["a", "b", "c"], indices, scores)
  assert run == {"q1": {"c": 0.5, "a": 0.25, "b": 0.25}, "q2": {"b": 0.75}, "q3": {}}
  assert all(type(s) is float for s in run["q1"].values())
  # a and b tie at 0.25: b ranks 2nd, a 3rd. q2: b at rank 1. q3: empty -> 0.
  per = metrics.mrr(run, {"q1": {"a": 1}, "q2": {"b": 1}, "q3": {"c": 1}}, 10)
  assert per == {"q1": approx(1 / 3), "q2": approx(1.0), "q3": 0.0}


def test_run_from_topk_rejects_bad_input():
  docs = ["a", "b"]
  with pytest.raises(ValueError):  # -2 is not padding (it would index from the end).
    metrics.run_from_topk(["q"], docs, np.array([[0, -2]]), np.zeros((1, 2)))
  with pytest.raises(ValueError):  # Out of range.
    metrics.run_from_topk(["q"], docs, np.array([[2]]), np.zeros((1, 1)))
  with pytest.raises(ValueError):  # Shapes disagree.
    metrics.run_from_topk(["q"], docs, np.array([[0, 1]]), np.zeros((1, 3)))
  with pytest.raises(ValueError):  # One row per query.
    metrics.run_from_topk(["q", "r"], docs, np.array([[0, 1]]), np.zeros((1, 2)))
  with pytest.raises(ValueError):  # The same document twice.
    metrics.run_from_topk(["q"], docs, np.array([[1, 1]]), np.zeros((1, 2)))


def test_bootstrap_ratio_ci_hand_computed():
  # Two queries: resamples (a,a) -> 2/2, (a,b) or (b,a) -> 1/2, (b,b) -> 0/2 with probabilities 1/4, 1/2, 1/4.
  num, den = {"a": 1.0, "b": 0.0}, {"a": 1.0, "b": 1.0}
  assert metrics.bootstrap_ratio_ci(num, den, level=0.9) == (0.0, 1.0)  # 5th / 95th percentiles.
  assert metrics.bootstrap_ratio_ci(num, den, level=0.2) == (0.5, 0.5)  # 40th / 60th: inside the 1/2 mass.
  # A system exactly twice the reference on every query: every resample gives 2.
  rng = np.random.default_rng(3)
  ref = {f"q{i}": float(v) for i, v in enumerate(rng.uniform(0.1, 1.0, 50))}
  assert metrics.bootstrap_ratio_ci({q: 2 * v for q, v in ref.items()}, ref) == pytest.approx((2.0, 2.0))


def test_bootstrap_ratio_ci_chunks_do_not_change_the_draws_and_errors_are_named():
  rng = np.random.default_rng(0)
  num = {f"q{i}": float(v) for i, v in enumerate(rng.integers(0, 2, 40))}
  den = {f"q{i}": float(v) for i, v in enumerate(rng.uniform(0, 1, 40))}
  whole = metrics.bootstrap_ratio_ci(num, den, samples=1000, chunk=1000)
  assert metrics.bootstrap_ratio_ci(num, den, samples=1000, chunk=7) == whole
  lo, hi = whole
  point = sum(num.values()) / sum(den.values())
  assert lo < point < hi and hi - lo > 0.1  # 40 binary queries: a wide interval around the point ratio.
  with pytest.raises(ValueError, match="different queries"):
    metrics.bootstrap_ratio_ci({"a": 1.0}, {"b": 1.0})
  with pytest.raises(ValueError, match="scores 0 on every query"):
    metrics.bootstrap_ratio_ci({"a": 1.0}, {"a": 0.0})


@pytest.mark.parametrize("k", [None, 2])
def test_a_non_finite_score_is_an_error_naming_the_document_and_query(k):
  scores = {"a": 1.0, "b": math.nan, "c": 2.0, "d": 0.5, "e": math.nan}
  with pytest.raises(ValueError, match="document 'b' has the non-finite score nan"):
    metrics.rank(scores, k)
  with pytest.raises(ValueError, match="document 'x' has the non-finite score inf"):
    metrics.rank({"x": math.inf, "y": 0.0}, k)
  with pytest.raises(ValueError, match=r"^query 'q2': document 'b' has the non-finite score nan"):
    metrics.evaluate({"q1": {"a": 1.0}, "q2": scores}, {"q1": {"a": 1}, "q2": {"c": 1}})
