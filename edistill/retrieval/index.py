"""Top-k inner-product retrieval: exact (JAX, chunked) and approximate (ScaNN), in one format.

Both return ``(indices int32 [Q, k], scores float32 [Q, k])``, best first. Exact search is the
reference: every ScaNN evaluation reports ``recall_against_exact`` (the share of the exact top-k
that ScaNN found) next to its retrieval metrics, so a quality drop can be told apart from an index
that misses neighbours.

  exact_search          brute force, chunked over queries and documents (bounded memory, one jit).
  ScannConfig           tree / AH / reorder settings; ``for_corpus(n)`` follows ScaNN's rules of thumb.
  build_scann           -> ScannIndex (the ScaNN searcher with its config and shape).
  scann_search          same output format as exact_search.
  save_index/load_index atomic on-disk index with its config as json.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from edistill import mesh as mesh_lib

CONFIG_FILE = "edistill_index.json"


def _check_pair(queries: np.ndarray, docs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
  """Validated float32 copies-or-views of ``queries`` [Q, D] and ``docs`` [N, D]."""
  queries = np.asarray(queries, np.float32)
  docs = np.asarray(docs, np.float32)
  if queries.ndim != 2 or docs.ndim != 2:
    raise ValueError(f"queries and docs must be 2-D [Q, D] / [N, D]; got shapes {queries.shape} and {docs.shape}.")
  if queries.shape[1] != docs.shape[1]:
    raise ValueError(f"dimension mismatch: queries have D={queries.shape[1]}, docs D={docs.shape[1]}.")
  _check_k(k, len(docs))
  return queries, docs


def _check_k(k: int, n_docs: int) -> None:
  if not isinstance(k, (int, np.integer)) or k < 1:
    raise ValueError(f"k must be a positive integer, got {k!r}.")
  if k > n_docs:
    raise ValueError(f"k={k} exceeds the number of documents ({n_docs}).")


# ---------------------------------------------------------------------------------------------
# Exact search.


def _topk_scan(queries: jax.Array, doc_chunks: jax.Array, first_chunk, k: int, n_docs: int):
  """Top-k of ``queries`` [q, D] over ``doc_chunks`` [C, c, D], chunk i holding documents from
  ``(first_chunk + i) * c`` (rows >= ``n_docs`` are padding) -> (indices int32 [q, k], scores [q, k]).

  A running top-k [q, k] is merged with each chunk's scores [q, c]: the running entries come first
  in the concatenation and hold lower document indices, and ``lax.top_k`` keeps the lower position
  on ties, so ties resolve to the lower document index everywhere.
  """
  num_q, chunk = queries.shape[0], doc_chunks.shape[1]

  def merge(carry, inputs):
    best_s, best_i = carry
    docs, start = inputs
    scores = jnp.dot(queries, docs.T, precision=jax.lax.Precision.HIGHEST)
    index = start + jnp.arange(chunk, dtype=jnp.int32)
    scores = jnp.where(index < n_docs, scores, -jnp.inf)  # Padding never wins: k <= n_docs.
    s, pos = jax.lax.top_k(jnp.concatenate([best_s, scores], axis=1), k)
    i = jnp.take_along_axis(jnp.concatenate([best_i, jnp.broadcast_to(index, (num_q, chunk))], axis=1), pos, axis=1)
    return (s, i), None

  init = (jnp.full((num_q, k), -jnp.inf, jnp.float32), jnp.full((num_q, k), n_docs, jnp.int32))
  starts = (first_chunk + jnp.arange(doc_chunks.shape[0], dtype=jnp.int32)) * chunk
  (scores, index), _ = jax.lax.scan(merge, init, (doc_chunks, starts))
  return index, scores


@functools.lru_cache(maxsize=16)
def _searcher(mesh, k: int, n_docs: int):
  """The jitted search of a query chunk over document chunks sharded over ``mesh``'s ``data`` axis:
  each device takes the top-k of its own chunks, the per-device lists are all-gathered in device
  order (lower document indices first, so ties still go to the lower index) and merged."""
  P = jax.sharding.PartitionSpec

  def local(queries, doc_chunks):
    first = jax.lax.axis_index("data") * doc_chunks.shape[0]
    index, scores = _topk_scan(queries, doc_chunks, first, k, n_docs)
    index, scores = (jax.lax.all_gather(x, "data", axis=1, tiled=True) for x in (index, scores))  # [q, n * k]
    best, pos = jax.lax.top_k(scores, k)
    return jnp.take_along_axis(index, pos, axis=1), best

  return jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P(), P("data")), out_specs=(P(), P()), check_vma=False))


def exact_search(queries: np.ndarray, docs: np.ndarray, k: int, query_batch: int = 256,
                 doc_batch: int = 16384, mesh=None, multihost: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """Brute-force maximum inner product search, the documents split over every local device.

  Args:
    queries: [Q, D] float32.
    docs: [N, D] float32 (finite).
    k: 1 <= k <= N. Any k works with any ``doc_batch`` (the running top-k is merged, not a chunk's).
    query_batch, doc_batch: chunk sizes; peak extra memory per device ~ query_batch * (doc_batch +
      n_devices * k) floats plus its share of one padded copy of ``docs``. Inputs are zero-padded to
      whole chunks so one compiled shape serves every chunk.
    mesh: the devices the documents are split over (its ``data`` axis); default every local device.
    multihost: every process calls this together with the same inputs; each searches its block of
      the queries (``encode.process_rows`` blocks) and the blocks are all-gathered.
  Returns:
    (indices int32 [Q, k], scores float32 [Q, k]), scores descending; equal scores are ordered by
    ascending document index (deterministic, so exact results are a stable reference), whatever the
    number of devices or processes.
  """
  queries, docs = _check_pair(queries, docs, k)
  if not np.isfinite(docs).all():
    raise ValueError("docs contain NaN or inf; their scores would not order.")
  if multihost and jax.process_count() > 1:
    return _across_processes(queries, docs, k, query_batch=query_batch, doc_batch=doc_batch, mesh=mesh)
  n_q, n_docs = len(queries), len(docs)
  if n_q == 0:
    return np.zeros((0, k), np.int32), np.zeros((0, k), np.float32)
  mesh = mesh if mesh is not None else mesh_lib.local_mesh()
  n_dev = mesh.shape["data"]
  qb, db = min(query_batch, n_q), min(doc_batch, -(-n_docs // n_dev))
  n_chunks = -(-n_docs // (db * n_dev)) * n_dev  # Whole chunks, the same number on every device.
  doc_chunks = jax.device_put(np.pad(docs, ((0, n_chunks * db - n_docs), (0, 0))).reshape(n_chunks, db, -1),
                              mesh_lib.batch_sharding(mesh))
  search = _searcher(mesh, int(k), n_docs)
  out_i, out_s = [], []
  for start in range(0, n_q, qb):
    chunk = queries[start:start + qb]
    padded = np.pad(chunk, ((0, qb - len(chunk)), (0, 0)))
    index, scores = search(padded, doc_chunks)
    out_i.append(np.asarray(index)[:len(chunk)])
    out_s.append(np.asarray(scores)[:len(chunk)])
  return np.concatenate(out_i), np.concatenate(out_s)


def _across_processes(queries: np.ndarray, docs: np.ndarray, k: int, **kw) -> tuple[np.ndarray, np.ndarray]:
  """``exact_search`` with the queries split over the processes (each on its own devices), gathered."""
  from jax.experimental import multihost_utils
  n, p = len(queries), jax.process_count()
  per = -(-n // p)
  start, stop = min(jax.process_index() * per, n), min((jax.process_index() + 1) * per, n)
  if stop > start:
    index, scores = exact_search(queries[start:stop], docs, k, **kw)
  else:
    index, scores = np.zeros((0, k), np.int32), np.zeros((0, k), np.float32)
  pad = lambda x, fill: np.concatenate([x, np.full((per - len(x), k), fill, x.dtype)])
  index, scores = (np.asarray(multihost_utils.process_allgather(pad(x, f), tiled=False)).reshape(-1, k)[:n]
                   for x, f in ((index, 0), (scores, -np.inf)))
  return index.astype(np.int32), scores.astype(np.float32)


def recall_against_exact(approx_indices: np.ndarray, exact_indices: np.ndarray, k: int) -> float:
  """Mean over queries of |approx top-k ∩ exact top-k| / k, from [Q, >=k] index arrays.

  Negative indices (ScaNN's "no result" padding) never count. Ties at the exact top-k boundary
  make this slightly pessimistic: an approximate hit with the same score as the exact k-th counts
  as a miss.
  """
  approx = np.asarray(approx_indices)[:, :k]
  exact = np.asarray(exact_indices)[:, :k]
  if approx.shape[0] != exact.shape[0] or approx.shape[1] < k or exact.shape[1] < k:
    raise ValueError(f"need [Q, >={k}] index arrays for the same queries; got {np.shape(approx_indices)} "
                     f"and {np.shape(exact_indices)}.")
  if len(exact) == 0:
    return float("nan")
  hits = [len(np.intersect1d(a[a >= 0], e)) for a, e in zip(approx, exact)]
  return float(np.mean(hits) / k)


# ---------------------------------------------------------------------------------------------
# ScaNN.


@dataclasses.dataclass(frozen=True)
class ScannConfig:
  """A ScaNN dot-product index. ``num_leaves = 0``: no partitioning (every document is scored).

  ``scoring`` is "ah" (asymmetric hashing, ``dimensions_per_block`` dims per 16-centre codebook,
  anisotropic loss above ``anisotropic_quantization_threshold``) or "brute_force" (exact float
  scores). ``reorder_k > 0`` rescores that many AH candidates exactly. ``spherical`` trains the tree
  with spherical k-means (right for unit-normalised embeddings). ``training_threads = 0``: all cores.
  """

  num_leaves: int = 0
  num_leaves_to_search: int = 0
  training_sample_size: int = 100_000
  spherical: bool = True
  scoring: str = "ah"
  dimensions_per_block: int = 2
  anisotropic_quantization_threshold: float = 0.2
  reorder_k: int = 100
  num_neighbors: int = 10
  training_threads: int = 0

  def __post_init__(self):
    if self.scoring not in ("ah", "brute_force"):
      raise ValueError(f"scoring must be 'ah' or 'brute_force', got {self.scoring!r}.")
    if self.num_leaves < 0 or not (self.num_leaves == 0 or 1 <= self.num_leaves_to_search <= self.num_leaves):
      raise ValueError(f"need num_leaves >= 0 and 1 <= num_leaves_to_search <= num_leaves when partitioning; "
                       f"got {self.num_leaves} / {self.num_leaves_to_search}.")

  @classmethod
  def for_corpus(cls, n_docs: int, k: int = 10, **overrides) -> "ScannConfig":
    """Settings for ``n_docs`` documents and top-``k``, after ScaNN's rules of thumb
    (scann/docs/algorithms.md), any field overridable by keyword:

      n < 20k   brute force (exact float scores, nothing to train).
      n >= 20k  a tree of round(sqrt(n)) leaves searching 7.5 % of them (at least 2), trained on
                min(n, max(100k, 100 * leaves)) points (~100 per centre); AH with 2 dims per block
                and anisotropic threshold 0.2 (dot product); exact reorder of 10 * k candidates.

    Measured, not copied: ScaNN's docs add the tree only from 100k, but AH without a tree quantises
    the raw vectors rather than residuals to a leaf centre, far coarser on clustered data (tests'
    20k x 64 mixture: AH + reorder 100 recalls 0.70 of the exact top-10, a 141-leaf tree 0.99).
    The share searched sets recall: on WordNet->GCIDE (161k MiniLM embeddings, 402 leaves) 5 %
    gives recall@10 0.94, 7.5 % 0.97, 10 % 0.98 (benchmarks/RESULTS.md); tune it per corpus.
    """
    if n_docs < 1:
      raise ValueError(f"n_docs must be positive, got {n_docs}.")
    fields: dict = {"num_neighbors": k, "reorder_k": 10 * k, "training_sample_size": min(n_docs, 100_000)}
    if n_docs < 20_000:
      fields.update(scoring="brute_force", reorder_k=0)
    else:
      leaves = round(math.sqrt(n_docs))
      fields.update(num_leaves=leaves, num_leaves_to_search=max(2, round(0.075 * leaves)),
                    training_sample_size=min(n_docs, max(100_000, 100 * leaves)))
    fields.update(overrides)
    return cls(**fields)


@dataclasses.dataclass
class ScannIndex:
  """A built ScaNN searcher with what is needed to use and save it: its config and corpus shape."""

  searcher: object  # scann.scann_ops_pybind.ScannSearcher
  config: ScannConfig
  num_docs: int
  dim: int


def build_scann(docs: np.ndarray, config: ScannConfig) -> ScannIndex:
  """Builds (trains) a dot-product ScaNN index over ``docs`` [N, D] float32."""
  import scann  # Heavy import, only where an index is built or loaded.

  docs = np.ascontiguousarray(docs, np.float32)
  if docs.ndim != 2 or len(docs) == 0:
    raise ValueError(f"docs must be a non-empty [N, D] array, got shape {docs.shape}.")
  if not np.isfinite(docs).all():
    raise ValueError("docs contain NaN or inf.")
  if config.num_leaves > len(docs):
    raise ValueError(f"num_leaves={config.num_leaves} exceeds the number of documents ({len(docs)}).")
  if config.scoring == "ah" and config.dimensions_per_block > docs.shape[1]:
    raise ValueError(f"dimensions_per_block={config.dimensions_per_block} exceeds D={docs.shape[1]}.")
  builder = scann.scann_ops_pybind.builder(docs, config.num_neighbors, "dot_product")
  builder = builder.set_n_training_threads(config.training_threads)
  if config.num_leaves:
    builder = builder.tree(num_leaves=config.num_leaves, num_leaves_to_search=config.num_leaves_to_search,
                           training_sample_size=min(config.training_sample_size, len(docs)),
                           spherical=config.spherical)
  if config.scoring == "ah":
    builder = builder.score_ah(config.dimensions_per_block,
                               anisotropic_quantization_threshold=config.anisotropic_quantization_threshold,
                               training_sample_size=min(config.training_sample_size, len(docs)))
  else:
    builder = builder.score_brute_force()
  if config.reorder_k:
    builder = builder.reorder(config.reorder_k)
  return ScannIndex(builder.build(), config, len(docs), docs.shape[1])


def scann_search(index: ScannIndex, queries: np.ndarray, k: int, *, leaves_to_search: int | None = None,
                 reorder_k: int | None = None, parallel: bool = True) -> tuple[np.ndarray, np.ndarray]:
  """Approximate top-k: (indices int32 [Q, k], scores float32 [Q, k]), scores descending.

  ``leaves_to_search`` / ``reorder_k`` override the config per call (the recall/speed knobs; no
  rebuild). ``parallel`` spreads query batches over ScaNN's thread pool. Where ScaNN finds fewer
  than k candidates (tiny leaves), the missing slots are index -1 with score -inf. Order among equal
  scores is ScaNN's, not by index.
  """
  queries = np.ascontiguousarray(queries, np.float32)
  if queries.ndim != 2 or queries.shape[1] != index.dim:
    raise ValueError(f"queries must be [Q, {index.dim}] to match the index; got shape {queries.shape}.")
  _check_k(k, index.num_docs)
  if len(queries) == 0:
    return np.zeros((0, k), np.int32), np.zeros((0, k), np.float32)
  reorder = index.config.reorder_k if reorder_k is None else reorder_k
  kwargs = {"final_num_neighbors": int(k),
            "pre_reorder_num_neighbors": max(reorder, k) if reorder else None,
            "leaves_to_search": leaves_to_search if index.config.num_leaves else None}
  if parallel:
    idx, scores = index.searcher.search_batched_parallel(queries, **kwargs)
  else:
    idx, scores = index.searcher.search_batched(queries, **kwargs)
  idx, scores = np.asarray(idx).astype(np.int32), np.asarray(scores, np.float32)
  missing = np.isnan(scores)  # ScaNN pads short result lists with (0, NaN).
  return np.where(missing, -1, idx), np.where(missing, -np.inf, scores)


def save_index(index: ScannIndex, directory: str | os.PathLike) -> Path:
  """Writes ``index`` to ``directory`` (replacing it): ScaNN assets + ``edistill_index.json``.

  Everything is written to a sibling temporary directory first and renamed into place, so an
  interrupted save leaves either the old index or the new one, never a mix.
  """
  directory = Path(directory)
  directory.parent.mkdir(parents=True, exist_ok=True)
  tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
  try:
    index.searcher.serialize(str(tmp), relative_path=True)  # Relative: survives the rename.
    meta = {"config": dataclasses.asdict(index.config), "num_docs": index.num_docs, "dim": index.dim}
    (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  if not directory.exists():
    os.replace(tmp, directory)
    return directory
  # A directory cannot be renamed over a non-empty one: move the old index aside first, and back
  # if the swap fails.
  old = Path(tempfile.mkdtemp(prefix=f".{directory.name}.old-", dir=directory.parent))
  os.replace(directory, old / "index")
  try:
    os.replace(tmp, directory)
  except BaseException:
    os.replace(old / "index", directory)
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  finally:
    shutil.rmtree(old, ignore_errors=True)
  return directory


def load_index(directory: str | os.PathLike) -> ScannIndex:
  """Loads an index written by ``save_index``."""
  import scann

  directory = Path(directory)
  meta_path = directory / CONFIG_FILE
  if not meta_path.is_file():
    raise FileNotFoundError(f"{directory}: no {CONFIG_FILE}; not an index written by save_index.")
  meta = json.loads(meta_path.read_text())
  searcher = scann.scann_ops_pybind.load_searcher(str(directory))
  return ScannIndex(searcher, ScannConfig(**meta["config"]), int(meta["num_docs"]), int(meta["dim"]))
