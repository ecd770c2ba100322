"""Frozen teachers: embeddings computed on the fly (stop_gradient) or looked up from a table.

A teacher is never in the optimizer or the checkpoint. Inside the jitted train step it is either
  online       its Encoder applied to the batch's tokens, under ``stop_gradient``, or
  precomputed  rows of embedding tables ``[N, Dt]`` (computed once, e.g. over the whole corpus),
               gathered by the batch's ``query_index`` / ``doc_index``.
Both give the same numbers for the same inputs (tested), so the choice is only about cost.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from tqdm.auto import tqdm

from edistill.models.encoder import Encoder

MODES = ("online", "precomputed")


@dataclasses.dataclass(frozen=True)
class Teacher:
  """Static part of a teacher (hashable); its params or tables are passed to the step separately.

  ``params`` for online mode: {"encoder": encoder params}; for precomputed mode:
  {"queries": [Nq, Dt] float32, "docs": [Nd, Dt] float32} (either may be absent if unused).
  """

  encoder: Encoder
  mode: str = "online"

  def __post_init__(self):
    if self.mode not in MODES:
      raise ValueError(f"unknown teacher mode {self.mode!r}; expected one of {MODES}.")

  def query_embeddings(self, params, batch) -> jax.Array:
    """[b, Dt] for the batch's queries."""
    if self.mode == "precomputed":
      return jnp.take(params["queries"], batch["query_index"], axis=0)
    return self._encode(params, batch["query_input_ids"], batch["query_attention_mask"])

  def doc_embeddings(self, params, batch) -> jax.Array:
    """[b * C, Dt] for the batch's documents, flattened row-major (query, candidate)."""
    if self.mode == "precomputed":
      return jnp.take(params["docs"], batch["doc_index"].reshape(-1), axis=0)
    ids = batch["doc_input_ids"]
    return self._encode(params, ids.reshape(-1, ids.shape[-1]),
                        batch["doc_attention_mask"].reshape(-1, ids.shape[-1]))

  def _encode(self, params, ids, mask):
    emb = self.encoder.apply({"params": params["encoder"]}, ids, mask)
    return jax.lax.stop_gradient(emb)


def encode_table(encoder: Encoder, params, tokens, batch_size: int = 256, desc: str = "encode") -> np.ndarray:
  """Embeds every row of a ``pipeline.Tokens`` table: [N, D] float32 (jit once per shape)."""
  fn = jax.jit(lambda p, i, m: encoder.apply({"params": p}, i, m))
  params = jax.device_put(params)
  out = []
  n = len(tokens)
  for start in tqdm(range(0, n, batch_size), desc=desc):
    idx = np.arange(start, min(start + batch_size, n))
    pad = batch_size - len(idx)  # Pad the last chunk to keep one compiled shape.
    ids, mask = tokens.take(np.concatenate([idx, np.zeros(pad, np.int64)]))
    out.append(np.asarray(fn(params, ids, mask))[:len(idx)])
  return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def table_key(**fields: Any) -> str:
  """Cache key of a precomputed table: hash of (teacher, corpus manifest, max length, pooling, ...)."""
  return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cached_table(cache_dir: str | os.PathLike, key: str, make) -> np.ndarray:
  """Loads ``cache_dir/key.npy`` or computes it with ``make()`` and writes it atomically."""
  path = Path(cache_dir) / f"{key}.npy"
  if path.is_file():
    logging.info("Teacher table %s reused from %s", key, path)
    return np.load(path)
  table = np.asarray(make(), np.float32)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(path.name + ".tmp.npy")
  np.save(tmp, table)
  os.replace(tmp, path)
  return table
