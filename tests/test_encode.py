"""Corpus encoding: order, sharding, and the on-disk cache (hit, resume, invalidation)."""
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

from edistill import mesh as mesh_lib
from edistill.retrieval import encode as enc
from edistill.models import hf_import, tokenization
from edistill.models.encoder import Encoder
from tests.conftest import write_wordpiece_vocab

TEXTS = ["the cat", "the dog sat on the mat", "cats", "the mat", "dog dog dog the cat sat on", "sat",
         "the the the", "mat on cat", "dogs sat", "on"]


@pytest.fixture(scope="module")
def model(fixtures, tmp_path_factory):
  d = write_wordpiece_vocab(Path(shutil.copytree(fixtures / "tiny-bert", tmp_path_factory.mktemp("m") / "bert")))
  cfg, params = hf_import.load_params(d)
  module = Encoder(cfg, normalize=True)
  fn = lambda p, i, m: module.apply({"params": p}, i, m)
  return fn, params, tokenization.load_tokenizer(d)


def _direct(model, texts, max_length=12):
  fn, params, tok = model
  rows = []
  for t in texts:
    b = tokenization.tokenize(tok, [t], max_length)
    rows.append(np.asarray(fn(params, b["input_ids"], b["attention_mask"])))
  return np.concatenate(rows)


def test_encode_keeps_input_order_and_matches_one_by_one(model):
  fn, params, tok = model
  out = enc.encode(fn, params, tok, TEXTS, max_length=12, batch_size=4, bucket=4, desc=None)
  np.testing.assert_allclose(out, _direct(model, TEXTS), atol=1e-5)


def test_encode_tokenises_each_text_once(model):
  fn, params, tok = model
  calls = []

  def counting(texts, *args, **kw):
    calls.append(len(texts))
    return tok(texts, *args, **kw)

  counting.pad_token_id = tok.pad_token_id
  np.testing.assert_allclose(enc.encode(fn, params, counting, TEXTS, max_length=12, batch_size=4, desc=None),
                             _direct(model, TEXTS), atol=1e-5)
  assert calls == [8, 2]  # One call a batch (4 rows rounded up to the 8 test devices), every text once.


def test_sharded_encoding_equals_single_device(model):
  fn, params, tok = model
  mesh = mesh_lib.make_mesh({"data": -1, "model": 1})
  out = enc.encode(fn, params, tok, TEXTS, max_length=12, batch_size=5, mesh=mesh, desc=None)  # 5 -> 8 rows.
  np.testing.assert_allclose(out, _direct(model, TEXTS), atol=1e-5)


def test_cache_hits_resumes_and_invalidates(model, tmp_path, monkeypatch):
  fn, params, tok = model
  ids = [f"d{i}" for i in range(len(TEXTS))]
  calls = []
  real = enc.encode
  monkeypatch.setattr(enc, "encode", lambda *a, **k: calls.append(len(a[3])) or real(*a, **k))
  key = {"model": enc.params_fingerprint(params), "pooling": "mean"}
  got_ids, first = enc.encode_cached(tmp_path, key, fn, params, tok, ids, TEXTS, 12, shard_size=4, desc=None)
  assert got_ids == ids and first.shape == (10, 32) and calls == [4, 4, 2]
  np.testing.assert_allclose(first, _direct(model, TEXTS), atol=1e-5)

  calls.clear()
  _, again = enc.encode_cached(tmp_path, key, fn, params, tok, ids, TEXTS, 12, shard_size=4, desc=None)
  assert calls == [] and np.array_equal(again, first)  # Cache hit: nothing re-encoded.

  (shard,) = [p for p in tmp_path.glob("*/shard_00001.ids.npy")]
  shard.unlink()  # Killed between a shard's two files: only that shard is encoded again.
  enc.encode_cached(tmp_path, key, fn, params, tok, ids, TEXTS, 12, shard_size=4, desc=None)
  assert calls == [4]

  calls.clear()
  changed = jax.tree.map(lambda x: x * 1.01, params)
  key2 = {"model": enc.params_fingerprint(changed), "pooling": "mean"}
  assert key2 != key
  _, other = enc.encode_cached(tmp_path, key2, fn, changed, tok, ids, TEXTS, 12, shard_size=4, desc=None)
  assert calls == [4, 4, 2] and not np.allclose(other, first)  # New model: new cache entry.
  calls.clear()
  enc.encode_cached(tmp_path, key, fn, params, tok, ids, TEXTS[:-1] + ["a new text"], 12, shard_size=4, desc=None)
  assert calls == [4, 4, 2]  # New corpus text: new cache entry.
  assert len(list(tmp_path.iterdir())) == 3


def test_default_encoding_splits_batches_over_every_local_device(model, monkeypatch):
  from edistill import xla_options
  fn, params, tok = model
  seen = []
  real = xla_options.inference_jit
  monkeypatch.setattr(xla_options, "inference_jit", lambda f, **kw: seen.append(kw) or real(f, **kw))
  out = enc.encode(fn, params, tok, TEXTS, max_length=12, batch_size=4, desc=None)  # 4 -> 8 rows a batch.
  one = enc.encode(fn, params, tok, TEXTS, max_length=12, batch_size=4, desc=None,
                   mesh=mesh_lib.make_mesh({"data": 1}, jax.devices()[:1]))
  assert seen[0]["in_shardings"][1].mesh.size == 8 and "in_shardings" not in seen[1]
  np.testing.assert_allclose(out, one, atol=1e-6)
  np.testing.assert_allclose(out, _direct(model, TEXTS), atol=1e-5)


def test_cached_table_is_memory_mapped_shards_equal_to_the_array(model, tmp_path):
  fn, params, tok = model
  ids = [f"d{i}" for i in range(len(TEXTS))]
  key = {"model": enc.params_fingerprint(params)}
  _, whole = enc.encode_cached(tmp_path, key, fn, params, tok, ids, TEXTS, 12, shard_size=4, desc=None)
  for _ in range(2):  # Freshly encoded, then from the cache.
    _, table = enc.encode_cached(tmp_path, key, fn, params, tok, ids, TEXTS, 12, shard_size=4, desc=None,
                                 as_table=True)
    assert table.shape == (10, 32) and [len(s) for s in table.shards] == [4, 4, 2]
    assert all(isinstance(s, np.memmap) for s in table.shards)
    np.testing.assert_array_equal(np.asarray(table), whole)
    np.testing.assert_array_equal(table.take(np.array([[9, 0], [4, 3]])), whole[[[9, 0], [4, 3]]])


def test_shards_of_the_older_npz_layout_are_still_read(model, tmp_path, monkeypatch):
  fn, params, tok = model
  ids = [f"d{i}" for i in range(len(TEXTS))]
  key = {"model": enc.params_fingerprint(params)}
  _, first = enc.encode_cached(tmp_path, key, fn, params, tok, ids, TEXTS, 12, shard_size=4, desc=None)
  for emb in tmp_path.glob("*/shard_*[0-9].npy"):  # Rewrite each shard as the old layout wrote it.
    np.savez(emb.with_suffix(".npz"), ids=np.load(emb.with_name(emb.stem + ".ids.npy")), embeddings=np.load(emb))
    emb.unlink()
    emb.with_name(emb.stem + ".ids.npy").unlink()
  monkeypatch.setattr(enc, "encode", lambda *a, **k: pytest.fail("a legacy shard was re-encoded"))
  _, again = enc.encode_cached(tmp_path, key, fn, params, tok, ids, TEXTS, 12, shard_size=4, desc=None, as_table=True)
  np.testing.assert_array_equal(np.asarray(again), first)


def test_bad_inputs(model):
  fn, params, tok = model
  with pytest.raises(ValueError, match="empty list"):
    enc.encode(fn, params, tok, [], 8)
  with pytest.raises(ValueError, match="2 ids for 1 texts"):
    enc.encode_cached("/tmp/unused", {}, fn, params, tok, ["a", "b"], ["x"], 8)


@pytest.mark.parametrize("n,p", [(7, 2), (10, 3), (2, 3), (5, 1)])
def test_process_shares_pad_and_reassemble_to_the_table(n, p):
  """Multi-host encoding: disjoint blocks covering [0, n), zero-padded to one shape, gathered, stripped."""
  table = np.random.default_rng(0).normal(size=(n, 4)).astype(np.float32)
  shares = [enc.process_rows(n, i, p) for i in range(p)]
  assert [i for a, b in shares for i in range(a, b)] == list(range(n))  # Disjoint, in order, complete.
  per = -(-n // p)
  assert all(b - a in (per, n % per, 0) for a, b in shares)  # Full blocks, then one short or empty ones.
  gathered = np.stack([enc.pad_rows(table[a:b], per) for a, b in shares])  # What process_allgather returns.
  assert gathered.shape == (p, per, 4)
  np.testing.assert_array_equal(enc.reassemble(gathered, n), table)


def test_module_fingerprint_ignores_execution_options_but_not_the_head(fixtures):
  import dataclasses
  cfg, _ = hf_import.load_params(fixtures / "tiny-bert")
  base = enc.module_fingerprint(Encoder(cfg, normalize=True))
  # remat and dropout rates do not change inference outputs: cached tables stay valid.
  assert enc.module_fingerprint(Encoder(cfg, normalize=True, remat=True)) == base
  no_dropout = dataclasses.replace(cfg, hidden_dropout=0.0, attention_dropout=0.0)
  assert enc.module_fingerprint(Encoder(no_dropout, normalize=True)) == base
  for other in (Encoder(cfg, normalize=False), Encoder(cfg, normalize=True, pooling="cls"),
                Encoder(cfg, normalize=True, dtype=jax.numpy.bfloat16), Encoder(cfg.with_layers(1), normalize=True)):
    assert enc.module_fingerprint(other) != base


def test_cross_encoder_fingerprint_ignores_dropout_but_not_the_head(fixtures):
  import dataclasses
  from edistill.models.cross_encoder import CrossEncoder
  cfg, _ = hf_import.load_params(fixtures / "tiny-bert")
  base = enc.module_fingerprint(CrossEncoder(cfg, head="dual"))
  no_dropout = dataclasses.replace(cfg, hidden_dropout=0.0, attention_dropout=0.0)
  assert enc.module_fingerprint(CrossEncoder(no_dropout, head="dual")) == base
  for other in (CrossEncoder(cfg, head="cls"), CrossEncoder(cfg, head="dual", normalize=False),
                CrossEncoder(cfg.with_layers(1), head="dual")):
    assert enc.module_fingerprint(other) != base
  assert base != enc.module_fingerprint(Encoder(cfg, normalize=True))
