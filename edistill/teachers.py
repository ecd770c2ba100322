"""Frozen teachers: one interface, ``signals(params, batch, needs)``, for what the objective reads.

A teacher is never in the optimizer or the checkpoint. Inside the jitted train step it is
  Teacher (dual encoder, layout ``in_batch``), either
    online       its Encoder applied to the batch's tokens, under ``stop_gradient``, or
    precomputed  rows of embedding tables ``[N, Dt]`` (computed once, e.g. over the whole corpus),
                 gathered by the batch's ``query_index`` / ``doc_index``;
    both give the same numbers for the same inputs (tested), so the choice is only about cost; or
  CrossEncoderTeacher (layout ``per_candidate``): a trained cross-encoder's scores of each query's
    own candidates and (dual head) its pooled pair vectors, precomputed per training example and
    carried in the batch (``recipes/cross_encoder.py`` adds them).
``needs`` names the signals wanted: "scores" (the teacher's scores in its layout), "query" and "doc"
(embedding targets). See ``objective.py`` for the layouts' shapes.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from edistill import losses
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

  layout = "in_batch"

  def signals(self, params, batch, needs: set[str]) -> dict[str, jax.Array]:
    """{"query": [b, Dt], "doc": [b * C, Dt], "scores": [b, b * C]}, those in ``needs`` (and what they use)."""
    out = {}
    if needs & {"query", "scores"}:
      out["query"] = self.query_embeddings(params, batch)
    if needs & {"doc", "scores"}:
      out["doc"] = self.doc_embeddings(params, batch)
    if "scores" in needs:
      out["scores"] = losses.score_matrix(out["query"], out["doc"])
    return out

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


@dataclasses.dataclass(frozen=True)
class CrossEncoderTeacher:
  """A cross-encoder's outputs per training example, carried in the batch: ``teacher_scores`` [b, C]
  (column 0 the positive) and, for the dual head, ``teacher_query_vectors`` / ``teacher_doc_vectors``
  [b, C, H]. Its params are unused (None)."""

  layout = "per_candidate"
  BATCH_KEYS = {"scores": "teacher_scores", "query": "teacher_query_vectors", "doc": "teacher_doc_vectors"}

  def signals(self, params, batch, needs: set[str]) -> dict[str, jax.Array]:
    missing = sorted(self.BATCH_KEYS[n] for n in needs if self.BATCH_KEYS[n] not in batch)
    if missing:
      raise ValueError(f"the cross-encoder teacher has no {missing} in the batch (a 'dual' head gives the vectors).")
    return {n: batch[self.BATCH_KEYS[n]] for n in needs}
