"""The EmbedDistill train step: one pure function, jitted once with in/out shardings and donation.

Scores are computed on the GLOBAL batch inside jit: the batch is sharded over the ``data`` axis and
GSPMD gathers the embeddings for the [B, B*C] score matrices, so in-batch negatives span every
device (never emulate this with microbatches, whose negatives would be per-microbatch only).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from edistill import losses
from edistill.models.dual_encoder import DualEncoder, project
from edistill.teachers import Teacher
from edistill.train import grad_cache
from edistill.train.state import TrainState

TERMS = ("label", "score", "margin_mse", "query_emb", "doc_emb")


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """Which terms, with which weights (0 disables a term) and settings."""

  label: float = 1.0
  score: float = 0.0
  margin_mse: float = 0.0
  query_emb: float = 0.0
  doc_emb: float = 0.0
  temperature: float = 0.05  # Label loss (student scores).
  student_temperature: float = 0.05  # Score distillation.
  teacher_temperature: float = 0.05
  score_kind: str = "softmax_ce"  # or "kl"
  emb_kind: str = "l2"  # "l2" (paper), "squared_l2", "cosine"

  def weights(self) -> dict[str, float]:
    return {t: getattr(self, t) for t in TERMS}

  def needs_teacher(self) -> bool:
    return any(getattr(self, t) for t in ("score", "margin_mse", "query_emb", "doc_emb"))


def compute_loss(params, teacher_params, batch, rng, *, student: DualEncoder, teacher: Teacher | None,
                 cfg: LossConfig, deterministic: bool = False) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Weighted EmbedDistill loss of one global batch (see module doc); returns (loss, metrics)."""
  q_rng, d_rng = jax.random.split(rng)
  b, c, ld = batch["doc_input_ids"].shape
  q_s = student.encode_queries(params, batch["query_input_ids"], batch["query_attention_mask"], deterministic, q_rng)
  d_s = None
  if student.kind != "asymmetric":
    d_s = student.encode_docs(params, batch["doc_input_ids"].reshape(b * c, ld),
                              batch["doc_attention_mask"].reshape(b * c, ld), deterministic, d_rng)
  return loss_from_embeddings(params, q_s, d_s, teacher_params, batch, student=student, teacher=teacher, cfg=cfg)


def loss_from_embeddings(params, q_s, d_s, teacher_params, batch, *, student: DualEncoder, teacher: Teacher | None,
                         cfg: LossConfig) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The loss given the student's embeddings: ``q_s`` [B, Ds] of the queries, ``d_s`` [B*C, Ds] of the
  documents (None for an asymmetric student, whose documents are the teacher's). Uses only the
  projection heads of ``params`` (GradCache differentiates it with respect to the embeddings)."""
  b, c, _ = batch["doc_input_ids"].shape
  positive_col = jnp.arange(b, dtype=jnp.int32) * c
  mask = batch["negative_mask"]
  t_q = t_d = None
  if teacher is not None and (cfg.needs_teacher() or student.kind == "asymmetric"):
    t_q = teacher.query_embeddings(teacher_params, batch)
    t_d = teacher.doc_embeddings(teacher_params, batch)
  if student.kind == "asymmetric":
    if t_d is None:
      raise ValueError("an asymmetric student needs a teacher for its document embeddings.")
    q_scored, d_s = project(params.get("query_projection"), q_s), t_d
  else:
    q_scored = q_s
  s_scores = losses.score_matrix(q_scored, d_s)
  terms = {}
  if cfg.label:
    terms["label"] = losses.label_loss(s_scores, positive_col, mask, cfg.temperature)
  if cfg.score or cfg.margin_mse:
    t_scores = losses.score_matrix(t_q, t_d)
    if cfg.score:
      terms["score"] = losses.score_distillation(s_scores, t_scores, mask, cfg.student_temperature,
                                                 cfg.teacher_temperature, cfg.score_kind)
    if cfg.margin_mse:
      terms["margin_mse"] = losses.margin_mse(s_scores, t_scores, positive_col, mask)
  if cfg.query_emb:
    terms["query_emb"] = losses.embedding_matching(q_s, t_q, params.get("query_projection"), cfg.emb_kind)
  if cfg.doc_emb:
    if student.kind == "asymmetric":
      raise ValueError("doc_emb matching is meaningless for an asymmetric student (its documents are the teacher's).")
    terms["doc_emb"] = losses.embedding_matching(d_s, t_d, params.get("doc_projection"), cfg.emb_kind)
  return losses.total_loss(terms, cfg.weights())


def train_step(state: TrainState, teacher_params, batch, *, student: DualEncoder, teacher: Teacher | None,
               cfg: LossConfig, tx: optax.GradientTransformation,
               grad_cache_chunk: int = 0) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer step; metrics include the loss terms, grad norm and the learning-rate step.

  ``grad_cache_chunk > 0`` computes the same loss and gradients with GradCache (``grad_cache.py``):
  the towers see ``grad_cache_chunk`` queries at a time, the loss still sees the whole global batch.
  """
  if grad_cache_chunk:
    head = lambda p, q_s, d_s: loss_from_embeddings(p, q_s, d_s, teacher_params, batch, student=student,
                                                    teacher=teacher, cfg=cfg)
    value_and_grad = lambda params, rng: grad_cache.value_and_grad(params, batch, rng, student=student, head=head,
                                                                   chunk=grad_cache_chunk)
    return _apply(state, value_and_grad, tx)
  loss_fn = lambda params, rng: compute_loss(params, teacher_params, batch, rng, student=student, teacher=teacher,
                                             cfg=cfg)
  return gradient_step(state, loss_fn, tx)


def gradient_step(state: TrainState, loss_fn, tx: optax.GradientTransformation) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer step on ``loss_fn(params, rng) -> (loss, metrics)`` (any model: also the CE trainers)."""
  return _apply(state, jax.value_and_grad(loss_fn, has_aux=True), tx)


def _apply(state: TrainState, value_and_grad, tx: optax.GradientTransformation) -> tuple[TrainState, dict[str, jax.Array]]:
  """``value_and_grad(params, rng) -> ((loss, metrics), grads)``, then the optimizer update."""
  rng, step_rng = jax.random.split(jax.random.wrap_key_data(state.rng))
  step_rng = jax.random.fold_in(step_rng, state.step)
  (loss, metrics), grads = value_and_grad(state.params, step_rng)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {**metrics, "grad_norm": optax.global_norm(grads)}
  new = state.replace(step=state.step + 1, params=params, opt_state=opt_state, rng=jax.random.key_data(rng))
  return new, metrics


def jit_train_step(student: DualEncoder, teacher: Teacher | None, cfg: LossConfig, tx: optax.GradientTransformation,
                   state_shardings, teacher_shardings, batch_sharding, grad_cache_chunk: int = 0):
  """``train_step`` jitted with explicit shardings; the state is donated (updated in place)."""
  fn = lambda state, teacher_params, batch: train_step(state, teacher_params, batch, student=student,
                                                       teacher=teacher, cfg=cfg, tx=tx,
                                                       grad_cache_chunk=grad_cache_chunk)
  return jax.jit(fn, in_shardings=(state_shardings, teacher_shardings, batch_sharding),
                 out_shardings=(state_shardings, None), donate_argnums=(0,))
