"""Batched, jitted, sharded encoding of corpora and queries, cached to disk as id-tagged shards.

Texts are tokenised once, sorted by length and encoded in length-bucketed batches (a few static
shapes, little padding), then put back in input order. With a mesh, each batch is split over the
``data`` axis. ``encode_cached`` writes ``shard_00000.npz`` ... (``ids`` and ``embeddings``) under a
directory named by a key of (model parameters, texts, max length, head): a rerun reuses it, an
interrupted run resumes at the first missing shard, and any change of model or corpus gets a new key.

Multi-host (``multihost=True``, every process calling together): each missing shard is split over the
processes in contiguous blocks (``process_rows``), each process encodes its own block, and the
zero-padded blocks are all-gathered (``process_allgather`` needs equal shapes) and stripped
(``reassemble``), so every process holds the same [N, D] table. A shard counts as cached only if
every process can read it (else all re-encode it together); only process 0 writes the cache.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import numpy as np
from absl import logging
from flax import traverse_util
from jax.sharding import Mesh
from tqdm.auto import tqdm

from edistill import distributed, mesh as mesh_lib, xla_options
from edistill.cache import atomic_file, content_key, texts_fingerprint
from edistill.models import tokenization

EncodeFn = Callable[[Any, np.ndarray, np.ndarray], jax.Array]  # (params, ids, mask) -> [B, D]


def params_fingerprint(params) -> str:
  """sha256 over every parameter's path, shape, dtype and bytes: names a model whatever its source."""
  h = hashlib.sha256()
  for path, leaf in sorted(traverse_util.flatten_dict(jax.device_get(params), sep="/").items()):
    arr = np.ascontiguousarray(leaf)
    h.update(f"{path}:{arr.shape}:{arr.dtype}".encode())
    h.update(arr.tobytes())
  return h.hexdigest()


def module_fingerprint(module) -> str:
  """What, besides its parameters, fixes an Encoder's (or a CrossEncoder's) inference outputs: the
  architecture without its training-only dropout rates, the head and the compute dtype. Execution
  options (``remat``) and dropout are left out, so changing them (or adding such a field) keeps
  cached tables valid."""
  arch = dataclasses.replace(module.config, hidden_dropout=0.0, attention_dropout=0.0)
  if hasattr(module, "head"):  # CrossEncoder.
    head = (module.head, module.normalize)
  else:
    head = (module.pooling, module.normalize, module.projection_dim)
    if module.normalize_first and module.normalize and module.projection_dim:  # Old keys stay valid.
      head += ("normalize_first",)
  return repr((arch, *head, np.dtype(module.dtype).name))


def encode(fn: EncodeFn, params, tokenizer, texts: Sequence[str], max_length: int, batch_size: int = 128,
           bucket: int = 16, mesh: Mesh | None = None, desc: str | None = "encode") -> np.ndarray:
  """Embeddings of ``texts`` in input order: float32 [N, D]."""
  if not len(texts):
    raise ValueError("nothing to encode: empty list of texts.")
  lengths = np.array([len(x) for x in tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]])
  order = np.argsort(lengths, kind="stable")
  if mesh is not None:
    n = mesh.shape["data"]
    batch_size = -(-batch_size // n) * n  # Divisible by the data axis.
    fn = xla_options.inference_jit(fn, in_shardings=(mesh_lib.replicated(mesh), mesh_lib.batch_sharding(mesh),
                                                     mesh_lib.batch_sharding(mesh)))
    params = jax.device_put(params, mesh_lib.replicated(mesh))
  else:
    fn = xla_options.inference_jit(fn)
    params = jax.device_put(params)
  out: list[np.ndarray] = []
  for start in tqdm(range(0, len(texts), batch_size), desc=desc, disable=desc is None):
    idx = order[start:start + batch_size]
    batch = tokenization.tokenize(tokenizer, [texts[i] for i in idx], max_length, bucket)
    pad = batch_size - len(idx)  # Keep the batch dimension static: pad the last batch with copies.
    ids, mask = (np.concatenate([batch[k], np.repeat(batch[k][:1], pad, 0)]) for k in ("input_ids", "attention_mask"))
    out.append(np.asarray(fn(params, ids, mask))[:len(idx)])
  emb = np.concatenate(out).astype(np.float32)
  result = np.empty_like(emb)
  result[order] = emb
  return result


def process_rows(n: int, process_index: int, process_count: int) -> tuple[int, int]:
  """Rows [start, stop) of an n-row table that process i of p encodes: blocks of ceil(n / p) rows in
  process order (the last blocks may be shorter, or empty when n < p)."""
  per = -(-n // process_count)
  return min(process_index * per, n), min((process_index + 1) * per, n)


def pad_rows(x: np.ndarray, rows: int) -> np.ndarray:
  """[m, D] -> [rows, D] (m <= rows) with zero rows appended."""
  return np.concatenate([x, np.zeros((rows - len(x), *x.shape[1:]), x.dtype)])


def reassemble(gathered: np.ndarray, n: int) -> np.ndarray:
  """[p, ceil(n / p), D] padded blocks in process order -> the [n, D] table (padding stripped)."""
  return gathered.reshape(-1, *gathered.shape[2:])[:n]


def encode_across_processes(fn: EncodeFn, params, tokenizer, texts: Sequence[str], max_length: int,
                            desc: str | None = "encode", **kw) -> np.ndarray:
  """``encode`` split over ``jax.process_count()`` processes; each returns the same float32 [N, D].

  Process i encodes rows ``process_rows(N, i, p)`` only; every process must call this together.
  """
  from jax.experimental import multihost_utils
  i, p, n = jax.process_index(), jax.process_count(), len(texts)
  start, stop = process_rows(n, i, p)
  if stop > start:
    own = encode(fn, params, tokenizer, texts[start:stop], max_length, desc=desc, **kw)
  else:  # Fewer rows than processes: an empty, correctly shaped block.
    probe = np.zeros((1, 8), np.int32)
    own = np.zeros((0, jax.eval_shape(fn, params, probe, probe).shape[-1]), np.float32)
  logging.info("%s: process %d of %d encoded rows [%d, %d) of %d", desc, i, p, start, stop, n)
  gathered = multihost_utils.process_allgather(pad_rows(own, -(-n // p)), tiled=False)  # [p, ceil(n/p), D]
  return reassemble(np.asarray(gathered), n)


def _read_shard(path: Path, chunk_ids: list[str]) -> np.ndarray | None:
  """The embeddings of a cache shard whose ids are ``chunk_ids``; None if it is missing or stale."""
  if not path.is_file():
    return None
  with np.load(path) as z:
    if list(z["ids"]) == chunk_ids:
      return z["embeddings"]
  logging.warning("%s does not match its ids; re-encoding it.", path)
  return None


def encode_cached(cache_dir: str | os.PathLike, key_fields: dict, fn: EncodeFn, params, tokenizer,
                  ids: Sequence[str], texts: Sequence[str], max_length: int, shard_size: int = 50_000,
                  multihost: bool = False, **kw) -> tuple[list[str], np.ndarray]:
  """``encode`` with an on-disk cache of id-tagged shards (see module doc); returns (ids, [N, D]).

  ``multihost``: every process calls this together and the encoding is split across them (module doc).
  """
  if len(ids) != len(texts):
    raise ValueError(f"{len(ids)} ids for {len(texts)} texts.")
  multihost = multihost and jax.process_count() > 1
  writer = not multihost or distributed.is_writer()
  key = content_key(**key_fields, texts=texts_fingerprint(texts), ids=texts_fingerprint(ids), max_length=max_length)
  root = Path(cache_dir) / key
  if writer and not (root / "key.json").is_file():  # What the directory holds, for people.
    with atomic_file(root / "key.json") as tmp:
      tmp.write_text(json.dumps({**key_fields, "max_length": max_length, "count": len(ids)}, indent=2, default=str))
  starts = range(0, len(ids), shard_size)
  cached = [_read_shard(root / f"shard_{s:05d}.npz", list(ids[start:start + shard_size]))
            for s, start in enumerate(starts)]
  hit = np.array([c is not None for c in cached])
  if multihost:  # Cached only where every process can read it: all then skip or encode it together.
    from jax.experimental import multihost_utils
    hit = np.asarray(multihost_utils.process_allgather(hit)).all(axis=0)
  encode_fn = encode_across_processes if multihost else encode
  shards = []
  desc = kw.pop("desc", "encode")
  for s, start in enumerate(starts):
    if hit[s]:
      shards.append(cached[s])
      continue
    path = root / f"shard_{s:05d}.npz"
    emb = encode_fn(fn, params, tokenizer, texts[start:start + shard_size], max_length,
                    desc=desc and f"{desc} (shard {s})", **kw)
    if writer:  # A killed run never leaves a partial shard under the final name.
      with atomic_file(path) as tmp:
        np.savez(tmp, ids=np.array(list(ids[start:start + shard_size])), embeddings=emb)
    shards.append(emb)
  return list(ids), np.concatenate(shards)


def clear(cache_dir: str | os.PathLike) -> None:
  shutil.rmtree(cache_dir, ignore_errors=True)


def encode_pretrained(pre, ids: Sequence[str], texts: Sequence[str], max_length: int, cache_dir, **kw) -> np.ndarray:
  """A zoo.Pretrained encoder over texts, cached under ``cache_dir`` keyed by its parameters.

  Training (teacher tables) and evaluation (teacher documents) share this cache, so each corpus is
  encoded by a given model once. ``multihost=True`` (in ``kw``) splits the encoding across processes.
  """
  module = pre.module
  fn = lambda p, i, m: module.apply({"params": p}, i, m)
  key = {"model": params_fingerprint(pre.params), "module": module_fingerprint(module)}
  return encode_cached(cache_dir, key, fn, pre.params, pre.tokenizer, ids, texts, max_length, **kw)[1]
