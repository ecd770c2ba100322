"""Batched, jitted, sharded encoding of corpora and queries, cached to disk as id-tagged shards.

Texts are sorted by length, tokenised once, batch by batch, and encoded in length-bucketed batches
(a few static shapes, little padding), then put back in input order. Each batch is split over the
``data`` axis of a mesh, by default every local device (``mesh_lib.local_mesh``). ``encode_cached`` writes
``shard_00000.npy`` (the float32 embeddings) and ``shard_00000.ids.npy`` (their ids, written last: a
shard without them is not cached) ... under a directory named by a key of (model parameters, texts,
max length, head): a rerun reuses it, an interrupted run resumes at the first missing shard, and any
change of model or corpus gets a new key. ``as_table=True`` returns a ``data.tables.RowTable`` of
memory-mapped shards instead of one array, so a caller that reads rows (training) never holds the
table in RAM. (Shards of the older ``shard_00000.npz`` layout are still read, into RAM.)

Multi-host (``multihost=True``, every process calling together): each missing shard is split over the
processes in contiguous blocks (``process_rows``), each process encodes its own block on all its
local devices, and the zero-padded blocks are all-gathered (``process_allgather`` needs equal
shapes) and stripped (``reassemble``), so every process holds the same [N, D] table. A shard counts
as cached only if every process can read it (else all re-encode it together). Process 0 writes it;
a process that still cannot see it after a barrier (a per-host disk, as on TPU VMs) writes its own.
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
from edistill.data import tables as tables_lib
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
  """Embeddings of ``texts`` in input order: float32 [N, D]. ``mesh``: the devices each batch is split
  over (its ``data`` axis); default every local device.

  Texts are ordered by character length (as sentence-transformers orders them: no tokenisation pass
  just for the order) and tokenised batch by batch, each cut to its longest row rounded up to
  ``bucket``; a batch is dispatched before the previous one's embeddings are fetched, so the host
  tokenises batch i + 1 while the devices run batch i. (One tokenizer call over a whole shard was
  slower than per-batch calls: 16 s against 9 s for 12,288 texts of ~200 words, benchmarks/RESULTS.md.)
  """
  if not len(texts):
    raise ValueError("nothing to encode: empty list of texts.")
  order = np.argsort([len(t) for t in texts], kind="stable")
  mesh = mesh if mesh is not None else mesh_lib.local_mesh()
  batch_sh = None
  if mesh.size > 1:
    n = mesh.shape["data"]
    batch_size = -(-batch_size // n) * n  # Divisible by the data axis.
    batch_sh = mesh_lib.batch_sharding(mesh)
    fn = xla_options.inference_jit(fn, in_shardings=(mesh_lib.replicated(mesh), batch_sh, batch_sh))
    params = jax.device_put(params, mesh_lib.replicated(mesh))
  else:
    fn = xla_options.inference_jit(fn)
    params = jax.device_put(params)
  out: list[np.ndarray] = []
  pending = None  # (embeddings being computed, rows to keep) of the batch in flight.
  for start in tqdm(range(0, len(texts), batch_size), desc=desc, disable=desc is None):
    idx = order[start:start + batch_size]
    batch = tokenization.tokenize(tokenizer, [texts[i] for i in idx], max_length, bucket)
    pad = batch_size - len(idx)  # Keep the batch dimension static: pad the last batch with copies.
    ids, mask = (np.concatenate([batch[k], np.repeat(batch[k][:1], pad, 0)]) for k in ("input_ids", "attention_mask"))
    if batch_sh is not None:  # Placed explicitly: a jit may not shard host arrays itself on a pod.
      ids, mask = jax.device_put((ids, mask), batch_sh)
    emb = fn(params, ids, mask)  # Dispatched asynchronously; the previous batch's are fetched meanwhile.
    if pending is not None:
      out.append(np.asarray(pending[0])[:pending[1]])
    pending = (emb, min(batch_size, len(texts) - start))
  out.append(np.asarray(pending[0])[:pending[1]])
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


def _shard_paths(root: Path, s: int) -> tuple[Path, Path]:
  return root / f"shard_{s:05d}.npy", root / f"shard_{s:05d}.ids.npy"


def _read_shard(root: Path, s: int, chunk_ids: list[str]) -> np.ndarray | None:
  """Shard ``s`` of the cache at ``root`` if its ids are ``chunk_ids`` (memory-mapped, read-only);
  None if it is missing or stale."""
  emb, ids = _shard_paths(root, s)
  if ids.is_file() and emb.is_file():
    if np.load(ids).tolist() == chunk_ids:
      return tables_lib.open_rows(emb)
  elif (legacy := root / f"shard_{s:05d}.npz").is_file():
    with np.load(legacy) as z:
      if list(z["ids"]) == chunk_ids:
        return z["embeddings"]
  else:
    return None
  logging.warning("shard %d of %s does not match its ids; re-encoding it.", s, root)
  return None


def _write_shard(root: Path, s: int, chunk_ids: list[str], emb: np.ndarray) -> None:
  """Atomic, embeddings first: a killed run leaves no ids file, so the shard reads as missing."""
  emb_path, ids_path = _shard_paths(root, s)
  with atomic_file(emb_path) as tmp:
    np.save(tmp, emb)
  with atomic_file(ids_path) as tmp:
    np.save(tmp, np.array(chunk_ids))


def encode_cached(cache_dir: str | os.PathLike, key_fields: dict, fn: EncodeFn, params, tokenizer,
                  ids: Sequence[str], texts: Sequence[str], max_length: int, shard_size: int = 50_000,
                  multihost: bool = False, as_table: bool = False, **kw) -> tuple[list[str], np.ndarray]:
  """``encode`` with an on-disk cache of id-tagged shards (see module doc); returns (ids, [N, D]), the
  table a ``RowTable`` of memory-mapped shards with ``as_table``.

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
  chunks = [list(ids[start:start + shard_size]) for start in range(0, len(ids), shard_size)]
  cached = [_read_shard(root, s, chunk_ids) for s, chunk_ids in enumerate(chunks)]
  hit = np.array([c is not None for c in cached])
  if multihost:  # Cached only where every process can read it: all then skip or encode it together.
    from jax.experimental import multihost_utils
    hit = np.asarray(multihost_utils.process_allgather(hit)).all(axis=0)
  encode_fn = encode_across_processes if multihost else encode
  shards = []
  desc = kw.pop("desc", "encode")
  for s, chunk_ids in enumerate(chunks):
    if hit[s]:
      shards.append(cached[s])
      continue
    start = s * shard_size
    emb = encode_fn(fn, params, tokenizer, texts[start:start + shard_size], max_length,
                    desc=desc and f"{desc} (shard {s})", **kw)
    if writer:
      _write_shard(root, s, chunk_ids, emb)
    if multihost:
      distributed.barrier(f"encode_cached {key} shard {s}")
      if not writer and not _shard_paths(root, s)[1].is_file():  # Not a shared disk: this host's own copy.
        _write_shard(root, s, chunk_ids, emb)
    shards.append(tables_lib.open_rows(_shard_paths(root, s)[0]) if as_table else emb)  # Written above.
  if as_table:
    return list(ids), tables_lib.RowTable(shards)
  return list(ids), np.concatenate(shards)


def clear(cache_dir: str | os.PathLike) -> None:
  shutil.rmtree(cache_dir, ignore_errors=True)


def encode_pretrained(pre, ids: Sequence[str], texts: Sequence[str], max_length: int, cache_dir, **kw) -> np.ndarray:
  """A zoo.Pretrained encoder over texts, cached under ``cache_dir`` keyed by its parameters (``kw``:
  ``encode_cached``'s, e.g. ``as_table=True`` for a memory-mapped ``RowTable``).

  Training (teacher tables) and evaluation (teacher documents) share this cache, so each corpus is
  encoded by a given model once. ``multihost=True`` (in ``kw``) splits the encoding across processes.
  """
  module = pre.module
  fn = lambda p, i, m: module.apply({"params": p}, i, m)
  key = {"model": params_fingerprint(pre.params), "module": module_fingerprint(module)}
  return encode_cached(cache_dir, key, fn, pre.params, pre.tokenizer, ids, texts, max_length, **kw)[1]
