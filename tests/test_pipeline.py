"""Deterministic, resumable, host-split batches."""
import numpy as np
import pytest

from edistill.data import pipeline
from edistill.data.types import DataError
from edistill.models import tokenization
from tests.conftest import write_wordpiece_vocab


def _tokens(n, length=6, pad=0, seed=0):
  rng = np.random.default_rng(seed)
  lengths = rng.integers(2, length + 1, n).astype(np.int32)
  ids = np.where(np.arange(length) < lengths[:, None], rng.integers(5, 100, (n, length)), pad).astype(np.uint16)
  return pipeline.Tokens(ids, lengths, pad)


def _pipe(n_queries=40, n_docs=60, batch=8, hard=1, **kw):
  positives = {q: np.array([q % n_docs, (q + 7) % n_docs], np.int32) for q in range(n_queries)}
  ex = pipeline.build_examples(positives, n_docs, num_hard_negatives=hard, seed=3)
  return pipeline.Pipeline(ex, _tokens(n_queries), _tokens(n_docs, 9, seed=1), batch, seed=11,
                           positives=positives, **kw)


def test_batch_shapes_and_dtypes():
  b = _pipe().batch(0)
  assert b["query_input_ids"].shape == (8, 6) and b["doc_input_ids"].shape == (8, 2, 9)
  assert b["negative_mask"].shape == (8, 16) and b["negative_mask"].dtype == bool
  assert all(b[k].dtype == np.int32 for k in ("query_input_ids", "query_attention_mask", "doc_input_ids",
                                              "doc_attention_mask", "query_index", "doc_index"))


def test_attention_mask_comes_from_lengths_and_ids_keep_padding():
  tok = pipeline.Tokens(np.array([[7, 8, 0], [9, 0, 0]], np.uint16), np.array([2, 1], np.int32), 0)
  ids, mask = tok.take(np.array([[1, 0]]))
  np.testing.assert_array_equal(ids, [[[9, 0, 0], [7, 8, 0]]])
  np.testing.assert_array_equal(mask, [[[1, 0, 0], [1, 1, 0]]])


def test_an_epoch_visits_every_example_once_then_reshuffles():
  p = _pipe()
  assert p.steps_per_epoch == len(p.examples) // 8 == 10
  epoch0 = np.concatenate([p.global_rows(s) for s in range(10)])
  assert len(set(epoch0.tolist())) == 80
  assert not np.array_equal(p.global_rows(10), p.global_rows(0))


def test_resume_from_step_gives_identical_batches():
  straight = list(_pipe().iterate(0, 14))
  resumed = list(_pipe().iterate(9, 5))
  for a, b in zip(straight[9:], resumed):
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_host_shares_are_disjoint_equal_and_cover_the_global_batch():
  hosts = [_pipe(process_index=i, process_count=4) for i in range(4)]
  single = _pipe()
  for step in (0, 3, 12):
    shares = [h.batch(step) for h in hosts]
    assert all(s["query_index"].shape == (2,) for s in shares)
    for key in ("query_index", "doc_index", "doc_input_ids", "negative_mask"):
      np.testing.assert_array_equal(np.concatenate([s[key] for s in shares]), single.batch(step)[key], err_msg=key)
    rows = [tuple(h.global_rows(step)[h.process_index * 2:(h.process_index + 1) * 2]) for h in hosts]
    assert len(set(sum(rows, ()))) == 8


def test_negative_mask_hides_documents_relevant_to_the_query():
  # Query 0 and 1 share document 5; query 1's hard negative (doc 9) is relevant to query 0.
  positives = {0: np.array([5, 9], np.int32), 1: np.array([5], np.int32)}
  ex = pipeline.Examples(np.array([0, 1], np.int32), np.array([[5, 3], [5, 9]], np.int32))
  p = pipeline.Pipeline(ex, _tokens(2), _tokens(10), 2, positives=positives)
  rows = p.global_rows(0)
  mask = p.negative_mask(rows, slice(0, 2))
  cols = ex.docs[rows].reshape(-1)
  for i, r in enumerate(rows):
    own = i * 2
    expected = np.isin(cols, positives[int(ex.query[r])])
    expected[own] = False
    np.testing.assert_array_equal(mask[i], expected)
  assert mask.sum() == 3  # q0: other row's 5 and the 9; q1: the other row's 5.


def test_build_examples_one_per_positive_with_clean_negatives():
  positives = {0: np.array([1, 2], np.int32), 3: np.array([4], np.int32)}
  ex = pipeline.build_examples(positives, num_docs=50, num_hard_negatives=3,
                               hard_negatives={0: [2, 7, 8], 3: [4]}, seed=0)
  assert ex.query.tolist() == [0, 0, 3] and ex.docs[:, 0].tolist() == [1, 2, 4]
  assert set(ex.docs[0, 1:]) | set(ex.docs[1, 1:]) <= set(range(50)) - {1, 2}
  assert {7, 8} <= set(ex.docs[0, 1:].tolist())  # Mined negatives first, the positive 2 removed.
  assert 4 not in ex.docs[2, 1:] and len(set(ex.docs[2, 1:].tolist())) == 3  # Topped up, distinct.
  again = pipeline.build_examples(positives, 50, 3, {0: [2, 7, 8], 3: [4]}, seed=0)
  np.testing.assert_array_equal(ex.docs, again.docs)


def test_relevant_docs_maps_ids_and_rejects_unknown_ones():
  rel = pipeline.relevant_docs({"q2": {"d1": 1, "d0": 2, "d2": 0}}, ["q1", "q2"], ["d0", "d1", "d2"])
  assert list(rel) == [1] and rel[1].tolist() == [0, 1]
  with pytest.raises(DataError, match="'d9'"):
    pipeline.relevant_docs({"q1": {"d9": 1}}, ["q1"], ["d0"])
  with pytest.raises(DataError, match="'qx'"):
    pipeline.relevant_docs({"qx": {"d0": 1}}, ["q1"], ["d0"])


def test_tokenize_texts_pads_and_records_lengths(tmp_path):
  tok = tokenization.load_tokenizer(write_wordpiece_vocab(tmp_path))
  t = pipeline.tokenize_texts(tok, ["the cat sat", "dogs", "the cat sat on the mat"], max_length=6, chunk=2)
  assert t.ids.dtype == np.uint16
  np.testing.assert_array_equal(t.lengths, [5, 4, 6])
  np.testing.assert_array_equal(t.ids[:2], [[2, 5, 6, 7, 3, 0], [2, 11, 10, 3, 0, 0]])


def test_bad_configurations_are_rejected():
  ex = pipeline.Examples(np.zeros(4, np.int32), np.zeros((4, 1), np.int32))
  with pytest.raises(ValueError, match="not divisible"):
    pipeline.Pipeline(ex, _tokens(1), _tokens(1), 4, process_count=3)
  with pytest.raises(ValueError, match="cannot fill"):
    pipeline.Pipeline(ex, _tokens(1), _tokens(1), 8)


def test_pipeline_from_a_loaded_retrieval_set(tmp_path):
  from edistill.data.types import RetrievalSet
  tok = tokenization.load_tokenizer(write_wordpiece_vocab(tmp_path))
  rs = RetrievalSet(doc_ids=["d0", "d1", "d2", "d3"], doc_texts=["the cat", "the dog", "the mat", "cats sat"],
                    query_ids=["q0", "q1"], query_texts=["cat", "dog on mat"],
                    qrels={"q0": {"d0": 1, "d3": 1}, "q1": {"d1": 1, "d2": 0}}, hard_negatives={"q1": ["d2"]})
  p = pipeline.from_retrieval_set(rs, tok, tok, 4, 5, global_batch_size=3, num_hard_negatives=1, seed=0)
  assert len(p.examples) == 3 and p.steps_per_epoch == 1
  q1 = p.examples.query.tolist().index(1)
  assert p.examples.docs[q1].tolist() == [1, 2]  # Mined negative d2 used (relevance 0 is not positive).
  b = p.batch(0)
  assert b["query_input_ids"].shape == (3, 4) and b["doc_input_ids"].shape == (3, 2, 5)
  # Both positives of q0 are in the batch: each q0 row masks the other's positive column.
  cols = b["doc_index"].reshape(-1)
  relevant = {0: {0, 3}, 1: {1}}
  for i, q in enumerate(b["query_index"]):
    expected = [c != 2 * i and cols[c] in relevant[int(q)] for c in range(6)]
    assert b["negative_mask"][i].tolist() == expected
  q0_rows = [i for i, q in enumerate(b["query_index"]) if q == 0]
  assert all(b["negative_mask"][i].sum() >= 1 for i in q0_rows)


def _long_pipe(**kw):
  """96 queries whose lengths spread over 2..32 tokens (batches of 8)."""
  n_q, n_d = 96, 60
  positives = {q: np.array([q % n_d], np.int32) for q in range(n_q)}
  ex = pipeline.build_examples(positives, n_d, num_hard_negatives=1, seed=3)
  return pipeline.Pipeline(ex, _tokens(n_q, 32, seed=5), _tokens(n_d, 24, seed=6), 8, seed=11,
                           positives=positives, **kw)


def test_bucketing_keeps_each_epochs_rows_and_groups_similar_lengths():
  plain, bucketed = _long_pipe(), _long_pipe(bucket_window=4)
  for epoch in (0, 1):
    a, b = plain.epoch_rows(epoch), bucketed.epoch_rows(epoch)
    assert sorted(a.tolist()) == sorted(b.tolist()) and not np.array_equal(a, b)
    np.testing.assert_array_equal(np.sort(a[:32]), np.sort(b[:32]))  # A window is a run of the permutation.
  spread = lambda p: np.mean([np.ptp(p.queries.lengths[p.examples.query[p.global_rows(s)]]) for s in range(12)])
  assert spread(bucketed) < 0.5 * spread(plain)
  assert not np.array_equal(bucketed.epoch_rows(0), bucketed.epoch_rows(1))


def test_bucketed_trimmed_batches_resume_and_split_across_hosts():
  kw = dict(bucket_window=3, pad_multiple=8)
  straight = list(_long_pipe(**kw).iterate(0, 16))
  for a, b in zip(straight[9:], _long_pipe(**kw).iterate(9, 7)):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  for step in (0, 5, 13):
    shares = [_long_pipe(process_index=i, process_count=4, **kw).batch(step) for i in range(4)]
    for key in ("query_input_ids", "query_attention_mask", "doc_input_ids", "negative_mask"):
      np.testing.assert_array_equal(np.concatenate([s[key] for s in shares]), straight[step][key], err_msg=key)


def test_pad_multiple_trims_only_padding():
  full, trimmed = _long_pipe(bucket_window=2), _long_pipe(bucket_window=2, pad_multiple=8)
  widths = set()
  for step in range(12):
    a, b = full.batch(step), trimmed.batch(step)
    rows = full.global_rows(step)
    lq = b["query_input_ids"].shape[1]
    longest = full.queries.lengths[full.examples.query[rows]].max()
    assert lq % 8 == 0 and longest <= lq < longest + 8
    ld = b["doc_input_ids"].shape[2]
    assert ld <= 24 and (ld % 8 == 0 or ld == 24) and ld >= full.docs.lengths[full.examples.docs[rows]].max()
    widths.add(lq)
    for k in ("query_input_ids", "query_attention_mask"):
      np.testing.assert_array_equal(b[k], a[k][:, :lq], err_msg=k)
      assert not a[k][:, lq:].any(), k  # What was cut is padding (pad id 0) only.
    np.testing.assert_array_equal(b["doc_attention_mask"], a["doc_attention_mask"][..., :ld])
    for k in ("query_index", "doc_index", "negative_mask"):
      np.testing.assert_array_equal(a[k], b[k])
  assert len(widths) > 1  # The buckets really produce different shapes.
  with pytest.raises(ValueError, match="must be >= 0"):
    _long_pipe(pad_multiple=-1)
