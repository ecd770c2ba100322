"""Frozen teachers: embeddings computed on the fly (stop_gradient) or looked up from a table.

A teacher is never in the optimizer or the checkpoint. Inside the jitted train step it is either
  online       its Encoder applied to the batch's tokens, under ``stop_gradient``, or
  precomputed  rows of embedding tables ``[N, Dt]`` (computed once, e.g. over the whole corpus),
               gathered by the batch's ``query_index`` / ``doc_index``.
Both give the same numbers for the same inputs (tested), so the choice is only about cost.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

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
