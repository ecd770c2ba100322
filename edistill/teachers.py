"""Frozen teachers: one interface, ``signals(params, batch, needs)``, for what the objective reads.

A teacher is never in the optimizer or the checkpoint. Inside the jitted train step it is
  Teacher (dual encoder, layout ``in_batch``), either
    online       its Encoder applied to the batch's tokens, under ``stop_gradient``, or
    precomputed  rows of embedding tables ``[N, Dt]`` (computed once, e.g. over the whole corpus);
                 the tables stay on the host (memory-mapped ``data.tables.RowTable``s) and
                 ``host_inputs`` gathers each host's batch rows into the batch, so a device holds
                 O(batch) of them whatever N is (MS MARCO's 8.8M x 768 float32 table is 27 GB);
    both give the same numbers for the same inputs (tested), so the choice is only about cost; or
  CrossEncoderTeacher (layout ``per_candidate``): a trained cross-encoder's scores of each query's
    own candidates and (dual head) its pooled pair vectors, precomputed per training example and
    carried in the batch (``recipes/cross_encoder.py`` adds them).
``needs`` names the signals wanted: "scores" (the teacher's scores in its layout), "query" and "doc"
(embedding targets). See ``objective.py`` for the layouts' shapes.

A teacher's ``params`` are what a recipe built (encoder weights, host tables); the train loop puts
``device_params(params)`` on the devices and merges ``host_inputs(params, batch)`` into each host batch.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from edistill import losses
from edistill.data import tables as tables_lib
from edistill.models.encoder import Encoder

MODES = ("online", "precomputed")
TABLE_DTYPES = ("float32", "bfloat16", "float16")  # What precomputed rows travel to the device in.


@dataclasses.dataclass(frozen=True)
class Teacher:
  """Static part of a teacher (hashable); its params or tables are passed to the step separately.

  ``params`` for online mode: {"encoder": encoder params}; for precomputed mode (host tables, never
  on a device): {"queries": [Nq, Dt], "docs": [Nd, Dt]} arrays or ``RowTable``s (either may be
  absent if unused). ``table_dtype``: the dtype the gathered rows travel in (bfloat16 halves the
  batch's teacher bytes; the step computes in float32 either way).
  """

  encoder: Encoder
  mode: str = "online"
  table_dtype: str = "float32"

  def __post_init__(self):
    if self.mode not in MODES:
      raise ValueError(f"unknown teacher mode {self.mode!r}; expected one of {MODES}.")
    if self.table_dtype not in TABLE_DTYPES:
      raise ValueError(f"unknown teacher table dtype {self.table_dtype!r}; expected one of {TABLE_DTYPES}.")

  layout = "in_batch"

  def device_params(self, params):
    """What the jitted step receives as ``teacher_params``: the encoder online, nothing precomputed."""
    return params if self.mode == "online" else None

  def host_inputs(self, params, batch) -> dict[str, np.ndarray]:
    """Precomputed: this host batch's table rows, ``teacher_query`` [b, Dt] (by ``query_index``) and
    ``teacher_doc`` [b, C, Dt] (by ``doc_index``), in ``table_dtype``; online: nothing."""
    if self.mode != "precomputed":
      return {}
    dtype = jnp.dtype(self.table_dtype)
    out = {}
    for key, table, index in (("teacher_query", "queries", "query_index"), ("teacher_doc", "docs", "doc_index")):
      if params is not None and params.get(table) is not None:
        out[key] = tables_lib.as_table(params[table]).take(batch[index]).astype(dtype)
    return out

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
      return self._rows(batch, "teacher_query")
    return self._encode(params, batch["query_input_ids"], batch["query_attention_mask"])

  def doc_embeddings(self, params, batch) -> jax.Array:
    """[b * C, Dt] for the batch's documents, flattened row-major (query, candidate)."""
    if self.mode == "precomputed":
      rows = self._rows(batch, "teacher_doc")
      return rows.reshape(-1, rows.shape[-1])
    ids = batch["doc_input_ids"]
    return self._encode(params, ids.reshape(-1, ids.shape[-1]),
                        batch["doc_attention_mask"].reshape(-1, ids.shape[-1]))

  @staticmethod
  def _rows(batch, key: str) -> jax.Array:
    if key not in batch:
      raise ValueError(f"the precomputed teacher's rows {key!r} are not in the batch: merge "
                       f"Teacher.host_inputs(tables, batch) into it (the train loop does).")
    return batch[key].astype(jnp.float32)

  def _encode(self, params, ids, mask):
    emb = self.encoder.apply({"params": params["encoder"]}, ids, mask)
    return jax.lax.stop_gradient(emb)


@dataclasses.dataclass(frozen=True)
class CrossEncoderTeacher:
  """A cross-encoder's outputs per training example, carried in the batch: ``teacher_scores`` [b, C]
  (column 0 the positive) and, for the dual head, ``teacher_query_vectors`` / ``teacher_doc_vectors``
  [b, C, H].

  ``docs``: for an asymmetric student, the precomputed dual encoder whose document embeddings it
  scores against (``student_docs``); its params are then ``{"docs": [Nd, Dt] table}``, gathered per
  host batch like a precomputed ``Teacher``'s. Without it the params are unused (None).
  """

  docs: Teacher | None = None
  layout = "per_candidate"

  def device_params(self, params):
    return None

  def host_inputs(self, params, batch) -> dict:
    """The batch's rows of the ``docs`` table (``teacher_doc`` [b, C, Dt]); the CE's own are already in it."""
    return self.docs.host_inputs(params, batch) if self.docs is not None else {}

  def student_docs(self, params, batch) -> jax.Array:
    """[b * C, Dt]: the ``docs`` dual encoder's embeddings of the batch's documents (an asymmetric student's)."""
    if self.docs is None:
      raise ValueError("an asymmetric student of a cross-encoder scores against a dual encoder's document "
                       "embeddings: build CrossEncoderTeacher(docs=...) (cross_encoder.dual_encoder).")
    return self.docs.doc_embeddings(params, batch)

  BATCH_KEYS = {"scores": "teacher_scores", "query": "teacher_query_vectors", "doc": "teacher_doc_vectors"}

  def signals(self, params, batch, needs: set[str]) -> dict[str, jax.Array]:
    missing = sorted(self.BATCH_KEYS[n] for n in needs if self.BATCH_KEYS[n] not in batch)
    if missing:
      raise ValueError(f"the cross-encoder teacher has no {missing} in the batch (a 'dual' head gives the vectors).")
    return {n: batch[self.BATCH_KEYS[n]] for n in needs}
