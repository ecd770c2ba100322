"""Dual encoders: a query tower and a document tower, tied, untied or asymmetric.

Student parameters are one explicit pytree:
  {"query_tower": encoder params, "doc_tower": encoder params (untied only),
   "query_projection": {"kernel", "bias"} (when matching the teacher's query embeddings),
   "doc_projection":   {"kernel", "bias"} (symmetric students matching document embeddings)}
The projections map the student's embedding space onto the teacher's for embedding matching (and,
for an asymmetric student, for scoring against the teacher's document embeddings): they are part
of the trained state and of every checkpoint.

Kinds:
  tied        one tower encodes queries and documents.
  untied      separate query and document towers.
  asymmetric  a trained query tower; documents are encoded by the frozen teacher, so query scores
              are P(q_student) . d_teacher.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from edistill.models.encoder import Encoder

KINDS = ("tied", "untied", "asymmetric")


@dataclasses.dataclass(frozen=True)
class DualEncoder:
  """Static structure (hashable, safe as a jit static argument); parameters live outside."""

  query_encoder: Encoder
  doc_encoder: Encoder | None = None  # Untied only.
  kind: str = "tied"

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"unknown dual-encoder kind {self.kind!r}; expected one of {KINDS}.")
    if (self.kind == "untied") != (self.doc_encoder is not None):
      raise ValueError("an untied dual encoder needs a doc_encoder; other kinds must not have one.")

  def encode_queries(self, params, input_ids, attention_mask, deterministic=True, rng=None) -> jax.Array:
    """[B, Lq] -> [B, Ds] float32 (student space)."""
    return _apply(self.query_encoder, params["query_tower"], input_ids, attention_mask, deterministic, rng)

  def encode_docs(self, params, input_ids, attention_mask, deterministic=True, rng=None) -> jax.Array:
    """[N, Ld] -> [N, Ds] float32; not defined for asymmetric students (the teacher encodes docs)."""
    if self.kind == "asymmetric":
      raise ValueError("an asymmetric student has no document tower: documents use the teacher's.")
    module, tower = (self.doc_encoder, "doc_tower") if self.kind == "untied" else (self.query_encoder, "query_tower")
    return _apply(module, params[tower], input_ids, attention_mask, deterministic, rng)


def _apply(module: Encoder, params, input_ids, attention_mask, deterministic, rng):
  rngs = None if deterministic else {"dropout": rng}
  return module.apply({"params": params}, input_ids, attention_mask, deterministic=deterministic, rngs=rngs)


def project(projection, emb: jax.Array) -> jax.Array:
  """Linear projection ``emb @ kernel + bias`` ([..., Ds] -> [..., Dt]) in float32; identity when None."""
  if projection is None:
    return emb
  kernel = jnp.asarray(projection["kernel"], jnp.float32)
  return jnp.einsum("...i,io->...o", emb, kernel, preferred_element_type=jnp.float32) + projection["bias"]


def init_projection(rng: jax.Array, in_dim: int, out_dim: int) -> dict[str, jax.Array]:
  """Student -> teacher projection params: LeCun-normal kernel [in, out] (as a Flax Dense), zero bias.

  Not identity-initialised: when the dims are equal the projection is simply omitted (identity).
  """
  kernel = jax.nn.initializers.lecun_normal()(rng, (in_dim, out_dim), jnp.float32)
  return {"kernel": kernel, "bias": jnp.zeros((out_dim,), jnp.float32)}


def standalone_towers(student: DualEncoder, params) -> dict[str, tuple[Encoder, dict]]:
  """Each trained tower as one plain ``Encoder`` and its params, computing what retrieval uses.

  tied: ``{"encoder"}``; untied: ``{"query_encoder", "doc_encoder"}``; asymmetric:
  ``{"query_encoder"}`` with ``query_projection`` folded in as the Encoder's projection head, after
  the tower's own normalisation (``normalize_first``): documents stay with the teacher. A tied or
  untied student's projections only served embedding matching during training and are left out.
  """
  query = student.query_encoder.clone(remat=False)
  if student.kind == "tied":
    return {"encoder": (query, params["query_tower"])}
  if student.kind == "untied":
    return {"query_encoder": (query, params["query_tower"]),
            "doc_encoder": (student.doc_encoder.clone(remat=False), params["doc_tower"])}
  projection = params.get("query_projection")
  if projection is None:  # Same width as the teacher: no projection was needed.
    return {"query_encoder": (query, params["query_tower"])}
  if query.projection_dim:
    raise ValueError("cannot fold query_projection into a query tower that has its own projection head.")
  folded = query.clone(projection_dim=int(projection["kernel"].shape[1]), normalize_first=query.normalize)
  return {"query_encoder": (folded, {**params["query_tower"], "projection": projection})}
