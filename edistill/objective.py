"""The EmbedDistill objective: one registry of loss terms and one ``compute_loss`` for every teacher
(and ``cross_encoder_loss``, the loss a cross-encoder teacher itself is trained with).

A term (``Term``) is a pure function of the batch's ``Signals`` and the ``LossConfig``, plus what it
needs from the teacher; ``TERMS`` lists them in the order the total sums them. ``LossConfig``'s
weight fields, the config's ``loss`` section (``config_lib``), its validation and whether a run loads
a teacher all derive from ``TERMS``. A new term is its loss function (``losses.py`` or a new
module) plus one ``Term`` below.

Scores are computed on the GLOBAL batch inside jit: the batch is sharded over the ``data`` axis and
GSPMD gathers the embeddings for the [B, B*C] score matrices, so in-batch negatives span every
device (never emulate this with microbatches, whose negatives would be per-microbatch only).

Teachers (``teachers.py``) come in two layouts. A dual-encoder teacher is ``in_batch``: its scores
are ``T = t_q t_d^T`` over the same [B, B*C] columns as the student's. A cross-encoder teacher is
``per_candidate``: it scored only each query's own C candidates, [B, C], and its embedding targets
are the pooled vectors of each (query, candidate) pair, [B, C, H]. Score terms compare the student
with the teacher in the teacher's layout; the label term always uses the in-batch matrix.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from edistill import losses
from edistill.models import cross_encoder as ce_lib
from edistill.models.dual_encoder import project

Metrics = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class Signals:
  """What the terms of one global batch read (B queries, C candidates each, B' = B * C).

  scores          float32 [B, B']  student in-batch scores (projected queries for an asymmetric student)
  positive_col    int32 [B]; negative_mask bool [B, B'] (false negatives: see ``losses``)
  student_scores  the student's scores in the teacher's layout: ``scores`` or [B, C] per candidate
  teacher_scores  the teacher's, same layout; teacher_positive_col / teacher_mask for that layout
  query_emb       [B, Ds] student query embeddings, before any projection
  doc_emb         [B', Ds] student document embeddings (an asymmetric student's are the teacher's)
  teacher_query   [B, Dt] (in_batch) or [B, C, H] (per_candidate) embedding targets; teacher_doc likewise
  params          the student's parameters (the terms use its projection heads)
  A signal no active term needs is None.
  """

  scores: jax.Array
  positive_col: jax.Array
  negative_mask: jax.Array
  student_scores: jax.Array | None
  teacher_scores: jax.Array | None
  teacher_positive_col: jax.Array | None
  teacher_mask: jax.Array | None
  query_emb: jax.Array
  doc_emb: jax.Array
  teacher_query: jax.Array | None
  teacher_doc: jax.Array | None
  params: Any
  asymmetric: bool = False


@dataclasses.dataclass(frozen=True)
class Term:
  """name: the config key (``config.loss.<name>`` is its weight); fn(signals, cfg) -> (loss, metrics);
  needs: the teacher signals it reads ("scores", "query", "doc"); default: its weight when unset."""

  name: str
  fn: Callable[[Signals, Any], tuple[jax.Array, Metrics]]
  needs: tuple[str, ...]
  default: float
  doc: str


def _label(x: Signals, cfg) -> tuple[jax.Array, Metrics]:
  return losses.label_loss(x.scores, x.positive_col, x.negative_mask, cfg.temperature)


def _score(x: Signals, cfg) -> tuple[jax.Array, Metrics]:
  return losses.score_distillation(x.student_scores, x.teacher_scores, x.teacher_mask, cfg.student_temperature,
                                   cfg.teacher_temperature, cfg.score_kind)


def _margin_mse(x: Signals, cfg) -> tuple[jax.Array, Metrics]:
  return losses.margin_mse(x.student_scores, x.teacher_scores, x.teacher_positive_col, x.teacher_mask)


def _query_emb(x: Signals, cfg) -> tuple[jax.Array, Metrics]:
  q = x.query_emb  # [B, Ds], matched against each of the teacher's targets for its query.
  q = jnp.broadcast_to(q.reshape(q.shape[0], *(1,) * (x.teacher_query.ndim - 2), q.shape[-1]),
                       (*x.teacher_query.shape[:-1], q.shape[-1]))
  # An asymmetric student of a cross-encoder scores through query_projection (into its dual encoder's
  # document space) and matches the CE's pooled query vectors through a head of its own.
  head = x.params.get("query_match_projection", x.params.get("query_projection"))
  return losses.embedding_matching(q, x.teacher_query, head, cfg.emb_kind)


def _doc_emb(x: Signals, cfg) -> tuple[jax.Array, Metrics]:
  if x.asymmetric:
    raise ValueError("doc_emb matching is meaningless for an asymmetric student (its documents are the teacher's).")
  d = x.doc_emb.reshape(*x.teacher_doc.shape[:-1], x.doc_emb.shape[-1])
  return losses.embedding_matching(d, x.teacher_doc, x.params.get("doc_projection"), cfg.emb_kind)


TERMS: dict[str, Term] = {t.name: t for t in (
    Term("label", _label, (), 1.0, "one-hot cross-entropy over the in-batch scores at ``temperature``"),
    Term("score", _score, ("scores",), 1.0,
         "score distillation (``score_kind``) of the student's scores to the teacher's, tau_s / tau_t"),
    Term("margin_mse", _margin_mse, ("scores",), 0.0, "Margin-MSE of (positive - negative) score margins"),
    Term("query_emb", _query_emb, ("query",), 1.0, "embedding matching of the projected queries (``emb_kind``)"),
    Term("doc_emb", _doc_emb, ("doc",), 0.0, "embedding matching of the projected documents (``emb_kind``)"),
)}

# The settings every term may read, with their defaults: the rest of ``config.loss``.
SETTINGS = {
    "temperature": 0.05,  # Label loss (student scores).
    "student_temperature": 0.05,  # Score distillation.
    "teacher_temperature": 0.05,
    "score_kind": "softmax_ce",  # or "kl" (losses.DISTILLATION_KINDS)
    "emb_kind": "l2",  # "l2" (paper), "squared_l2", "cosine" (losses.EMBEDDING_KINDS)
}


def _weights(self) -> dict[str, float]:
  return {t: getattr(self, t) for t in TERMS}


def _needs(self) -> set[str]:
  """The teacher signals the active (nonzero-weight) terms read."""
  return {n for t in TERMS.values() if getattr(self, t.name) for n in t.needs}


def _needs_teacher(self) -> bool:
  return bool(_needs(self))


LossConfig = dataclasses.make_dataclass(
    "LossConfig",
    [(t.name, float, dataclasses.field(default=t.default)) for t in TERMS.values()]
    + [(k, type(v), dataclasses.field(default=v)) for k, v in SETTINGS.items()],
    frozen=True,
    namespace={"weights": _weights, "needs": _needs, "needs_teacher": _needs_teacher,
               "__doc__": "Which terms, with which weights (0 disables a term; fields named by ``TERMS``), and "
                          "the ``SETTINGS``."})
LossConfig.__module__ = __name__


def loss_config(loss_cfg) -> LossConfig:
  """The ``LossConfig`` of a config's ``loss`` section."""
  return LossConfig(**{f.name: loss_cfg[f.name] for f in dataclasses.fields(LossConfig)})


def compute_loss(params, teacher_params, batch, rng, *, student, teacher, cfg: LossConfig,
                 deterministic: bool = False) -> tuple[jax.Array, Metrics]:
  """Weighted loss of one global batch (see module doc); returns (loss, metrics)."""
  q_rng, d_rng = jax.random.split(rng)
  q_s = student.encode_queries(params, batch["query_input_ids"], batch["query_attention_mask"], deterministic, q_rng)
  d_s = None
  if student.kind != "asymmetric":  # An asymmetric student's batches need no document tokens.
    b, c, ld = batch["doc_input_ids"].shape
    d_s = student.encode_docs(params, batch["doc_input_ids"].reshape(b * c, ld),
                              batch["doc_attention_mask"].reshape(b * c, ld), deterministic, d_rng)
  return loss_from_embeddings(params, q_s, d_s, teacher_params, batch, student=student, teacher=teacher, cfg=cfg)


def loss_from_embeddings(params, q_s, d_s, teacher_params, batch, *, student, teacher,
                         cfg: LossConfig) -> tuple[jax.Array, Metrics]:
  """The loss given the student's embeddings: ``q_s`` [B, Ds] of the queries, ``d_s`` [B*C, Ds] of the
  documents (None for an asymmetric student, whose documents are the teacher's). Uses only the
  projection heads of ``params`` (GradCache differentiates it with respect to the embeddings)."""
  b, c = batch["doc_index"].shape
  positive_col = jnp.arange(b, dtype=jnp.int32) * c
  mask = batch["negative_mask"]
  asymmetric = student.kind == "asymmetric"
  if asymmetric and teacher is None:
    raise ValueError("an asymmetric student needs a teacher for its document embeddings.")
  in_batch = teacher is not None and teacher.layout == "in_batch"
  needs = cfg.needs() | ({"doc"} if asymmetric and in_batch else set())
  if needs and teacher is None:
    raise ValueError(f"the loss needs a teacher (its {sorted(needs)}), but none was given.")
  got = teacher.signals(teacher_params, batch, needs) if needs else {}
  if asymmetric:  # A dual-encoder teacher's documents, or a cross-encoder teacher's dual encoder's.
    d_s = got["doc"] if in_batch else teacher.student_docs(teacher_params, batch)
    q_scored = project(params.get("query_projection"), q_s)
  else:
    q_scored = q_s
  scores = losses.score_matrix(q_scored, d_s)
  s_t = t_s = t_pos = t_mask = None
  if "scores" in needs:
    t_s = got["scores"]
    if teacher.layout == "in_batch":
      s_t, t_pos, t_mask = scores, positive_col, mask
    else:  # Each query's own candidates, column 0 its positive.
      s_t, t_pos = losses.candidate_scores(q_scored, d_s.reshape(b, c, -1)), jnp.zeros(b, jnp.int32)
  x = Signals(scores, positive_col, mask, s_t, t_s, t_pos, t_mask, q_s, d_s, got.get("query"), got.get("doc"), params,
              asymmetric)
  terms = {name: t.fn(x, cfg) for name, t in TERMS.items() if getattr(cfg, name)}
  return losses.total_loss(terms, cfg.weights())


def cross_encoder_loss(params, batch, rng, *, model: ce_lib.CrossEncoder, temperature: float,
                       deterministic: bool = False) -> tuple[jax.Array, Metrics]:
  """A cross-encoder's own training loss (recipes/cross_encoder.py): listwise softmax CE over each
  query's candidates, ``mean_i [logsumexp_k s_ik/tau - s_i,p_i/tau]``. ``batch``: pair arrays
  ``[b, K, L]``, ``positive_col`` int32 [b], ``candidate_mask`` bool [b, K] (True: takes part)."""
  scores = ce_lib.apply_flat(model, params, batch, deterministic, rng)  # [b, K]
  terms = {"label": losses.label_loss(scores, batch["positive_col"], ~batch["candidate_mask"], temperature)}
  return losses.total_loss(terms, {"label": 1.0})
