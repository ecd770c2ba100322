"""EmbedDistill losses over in-batch score matrices and embeddings, as pure (jit-able) JAX functions.

Notation: ``S`` student and ``T`` teacher scores, ``[B, B']`` float, row ``i`` a query and column
``j`` an in-batch document (``B' = B``, or ``B * (1 + k)`` with ``k`` hard negatives per query);
``positive_col`` int32 ``[B]`` the column of each query's positive; ``negative_mask`` bool
``[B, B']`` True where an in-batch document is relevant to the query but is not its own positive (a
false negative): such columns are left out of every softmax and every pair, as if absent.

Every loss returns ``(loss, metrics)``: a float32 scalar and a dict of float32 scalars. Inputs may be
any float dtype (e.g. bfloat16 scores); everything is computed in float32. Masked entries are
replaced by zero *before* any arithmetic and by a large finite negative after scaling, so any value
there (even inf/NaN) changes neither the loss nor any gradient, and nothing overflows to NaN.
"""
from __future__ import annotations

import numbers
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from edistill.models.dual_encoder import project

# Logit for excluded columns: exp(_MASKED - max) underflows to exactly 0 in float32, yet stays finite
# so that a row's max and differences never produce inf - inf = NaN.
_MASKED = -1e9

DISTILLATION_KINDS = ("softmax_ce", "kl")
EMBEDDING_KINDS = ("l2", "squared_l2", "cosine")

Metrics = dict[str, jax.Array]


def score_matrix(q_emb: jax.Array, d_emb: jax.Array) -> jax.Array:
  """In-batch scores ``S[i, j] = <q_i, d_j>``: ``[B, D] x [B', D] -> [B, B']`` float32.

  Accumulates in float32 whatever the embedding dtype.
  """
  return jnp.einsum("bd,nd->bn", q_emb, d_emb, preferred_element_type=jnp.float32)


def candidate_scores(q_emb: jax.Array, d_emb: jax.Array) -> jax.Array:
  """Each query against its own candidates, ``s[i, c] = <q_i, d_ic>``: ``[B, D] x [B, C, D] -> [B, C]``
  float32 (the columns ``i*C .. i*C+C-1`` of row ``i`` of ``score_matrix``, e.g. for a cross-encoder
  teacher that scored only those pairs)."""
  return jnp.einsum("bd,bcd->bc", q_emb, d_emb, preferred_element_type=jnp.float32)


def _valid(scores: jax.Array, negative_mask: jax.Array | None) -> jax.Array:
  """bool ``[B, B']``: columns that take part in row ``i``'s softmax."""
  if negative_mask is None:
    return jnp.ones(scores.shape, bool)
  return jnp.logical_not(negative_mask)


def _masked_logits(scores: jax.Array, valid: jax.Array, temperature) -> jax.Array:
  """float32 ``where(valid, scores / temperature, _MASKED)``.

  Scores are zeroed before the division too: otherwise an inf in a masked column would make the
  gradient w.r.t. the temperature ``0 * inf = NaN``.
  """
  scores = jnp.where(valid, scores.astype(jnp.float32), 0.0)
  return jnp.where(valid, scores / jnp.asarray(temperature, jnp.float32), _MASKED)


def label_loss(scores: jax.Array, positive_col: jax.Array, negative_mask: jax.Array | None,
               temperature) -> tuple[jax.Array, Metrics]:
  """One-hot softmax cross-entropy, mean over rows.

  ``L = mean_i [ logsumexp_{j valid} (S_ij / tau) - S_{i,p_i} / tau ]``, valid = not in
  ``negative_mask`` (the target column always counts, even if the mask marks it).

  Args:
    scores: ``[B, B']`` float.
    positive_col: ``[B]`` int, the target column of each row.
    negative_mask: ``[B, B']`` bool or None (no column excluded).
    temperature: scalar tau > 0 (Python float or array; differentiable).

  Returns:
    ``(loss, {"accuracy"})``: accuracy = fraction of rows whose argmax over valid columns is the target.
  """
  onehot = jax.nn.one_hot(positive_col, scores.shape[-1], dtype=jnp.bool_)
  valid = jnp.logical_or(_valid(scores, negative_mask), onehot)
  logits = _masked_logits(scores, valid, temperature)
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  nll = -jnp.take_along_axis(log_probs, positive_col[:, None].astype(jnp.int32), axis=-1)[:, 0]
  accuracy = jnp.mean((jnp.argmax(logits, axis=-1) == positive_col).astype(jnp.float32))
  return jnp.mean(nll), {"accuracy": accuracy}


def score_distillation(student_scores: jax.Array, teacher_scores: jax.Array,
                       negative_mask: jax.Array | None, student_temperature, teacher_temperature,
                       kind: str = "softmax_ce") -> tuple[jax.Array, Metrics]:
  """Listwise in-batch score matching, mean over rows (no gradient into the teacher).

  With ``p_t = softmax(T_i / tau_t)`` and ``log p_s = log_softmax(S_i / tau_s)`` over the valid
  columns of row ``i``:
    "softmax_ce": ``L_i = -sum_j p_t,ij log p_s,ij``
    "kl":         ``L_i = sum_j p_t,ij (log p_t,ij - log p_s,ij)``  (= softmax_ce - H(p_t))
  Both have the student gradient ``dL_i/dS_ij = (p_s,ij - p_t,ij) / tau_s``.

  Args:
    student_scores, teacher_scores: ``[B, B']`` float.
    negative_mask: ``[B, B']`` bool or None; masked columns are excluded from both softmaxes.
    student_temperature, teacher_temperature: scalars > 0.
    kind: "softmax_ce" or "kl" (static).

  Returns:
    ``(loss, {"kl", "top1_agreement"})``: the mean KL whatever ``kind``, and the fraction of rows
    where the student's and the teacher's argmax over valid columns coincide.
  """
  if kind not in DISTILLATION_KINDS:
    raise ValueError(f"Unknown score distillation kind {kind!r}; expected one of {DISTILLATION_KINDS}.")
  valid = _valid(student_scores, negative_mask)
  s_logits = _masked_logits(student_scores, valid, student_temperature)
  t_logits = jax.lax.stop_gradient(_masked_logits(teacher_scores, valid, teacher_temperature))
  log_ps = jax.nn.log_softmax(s_logits, axis=-1)
  log_pt = jax.nn.log_softmax(t_logits, axis=-1)
  pt = jnp.exp(log_pt)
  # Masked terms are dropped explicitly (p_t is 0 there already, but 0 * log(0) must not be relied on).
  ce = -jnp.sum(jnp.where(valid, pt * log_ps, 0.0), axis=-1)
  kl = jnp.sum(jnp.where(valid, pt * (log_pt - log_ps), 0.0), axis=-1)
  agree = jnp.argmax(s_logits, axis=-1) == jnp.argmax(t_logits, axis=-1)
  loss = ce if kind == "softmax_ce" else kl
  return jnp.mean(loss), {"kl": jnp.mean(kl), "top1_agreement": jnp.mean(agree.astype(jnp.float32))}


def margin_mse(student_scores: jax.Array, teacher_scores: jax.Array, positive_col: jax.Array,
               negative_mask: jax.Array | None) -> tuple[jax.Array, Metrics]:
  """Margin-MSE (Hofstätter et al., 2020), mean over valid (query, negative) pairs.

  ``L = mean_{(i, j) valid} ((S_{i,p_i} - S_ij) - (T_{i,p_i} - T_ij))^2``, a pair valid when
  ``j != p_i`` and ``j`` is not in ``negative_mask``. 0 when no pair is valid. No gradient into the
  teacher.

  Returns:
    ``(loss, {"student_margin", "teacher_margin"})``: mean margins over the valid pairs.
  """
  onehot = jax.nn.one_hot(positive_col, student_scores.shape[-1], dtype=jnp.bool_)
  pairs = jnp.logical_and(_valid(student_scores, negative_mask), jnp.logical_not(onehot))
  col = positive_col[:, None].astype(jnp.int32)

  def margins(scores):
    scores = jnp.where(pairs | onehot, scores.astype(jnp.float32), 0.0)  # See _masked_logits.
    return jnp.take_along_axis(scores, col, axis=-1) - scores  # [B, B']

  s_margin = margins(student_scores)
  t_margin = jax.lax.stop_gradient(margins(teacher_scores))
  count = jnp.sum(pairs.astype(jnp.float32))
  denom = jnp.maximum(count, 1.0)

  def pair_mean(x):
    return jnp.sum(jnp.where(pairs, x, 0.0)) / denom

  return pair_mean(jnp.square(s_margin - t_margin)), {"student_margin": pair_mean(s_margin),
                                                       "teacher_margin": pair_mean(t_margin)}


def _safe_norm(sq: jax.Array) -> jax.Array:
  """``sqrt(sq)`` with a finite gradient at 0 (``sqrt(sq + eps)``, eps = 1e-12).

  The offset adds at most 1e-6 to a distance (only noticeable when student and teacher coincide)
  and bounds the gradient of ``||x||`` by 1 near ``x = 0`` instead of ``x / ||x||`` -> NaN at 0.
  """
  return jnp.sqrt(sq + 1e-12)


def embedding_matching(student_emb: jax.Array, teacher_emb: jax.Array,
                       projection_params: Mapping[str, jax.Array] | None, kind: str = "l2",
                       weights: jax.Array | None = None) -> tuple[jax.Array, Metrics]:
  """Embedding matching between ``t_i`` and ``P(s_i)``, a (weighted) mean over rows.

  With ``r_i = t_i - P(s_i)``:
    "l2":         ``L = mean_i ||r_i||_2`` (plain, not squared, as in the paper; see ``_safe_norm``)
    "squared_l2": ``L = mean_i ||r_i||_2^2``
    "cosine":     ``L = mean_i (1 - cos(t_i, P(s_i)))``, each norm floored at 1e-8 (as torch does)
  ``mean_i`` is ``sum_i w_i L_i / sum_i w_i`` with ``weights`` (e.g. 0 for padding rows; 0 when all
  weights are 0), the plain mean without. No gradient into the teacher.

  Args:
    student_emb: ``[N, Ds]`` float (leading dims beyond one are flattened, e.g. ``[B, C, Ds]``).
    teacher_emb: ``[N, Dt]`` float, same leading dims.
    projection_params: ``{"kernel": [Ds, Dt], "bias": [Dt]}`` or None for the identity (Ds == Dt).
    kind: "l2", "squared_l2" or "cosine" (static).
    weights: ``[N]`` float (same leading dims) or None.

  Returns:
    ``(loss, {"l2", "cosine"})``: the (weighted) mean distance and cosine similarity whatever ``kind``.

  Raises:
    ValueError (at trace time) on an unknown kind or mismatched shapes.
  """
  if kind not in EMBEDDING_KINDS:
    raise ValueError(f"Unknown embedding matching kind {kind!r}; expected one of {EMBEDDING_KINDS}.")
  ds, dt = student_emb.shape[-1], teacher_emb.shape[-1]
  if student_emb.shape[:-1] != teacher_emb.shape[:-1]:
    raise ValueError(f"Student {student_emb.shape} and teacher {teacher_emb.shape} embeddings differ in "
                     "leading shape.")
  if projection_params is None and ds != dt:
    raise ValueError(f"Student dim {ds} != teacher dim {dt}: a projection is required.")
  if projection_params is not None and tuple(projection_params["kernel"].shape) != (ds, dt):
    raise ValueError(f"Projection kernel {tuple(projection_params['kernel'].shape)} does not map the "
                     f"student dim {ds} to the teacher dim {dt}.")
  s = project(projection_params, student_emb.astype(jnp.float32)).reshape(-1, dt)
  t = jax.lax.stop_gradient(teacher_emb.astype(jnp.float32).reshape(-1, dt))
  sq = jnp.sum(jnp.square(t - s), axis=-1)
  l2 = _safe_norm(sq)
  s_norm = jnp.sqrt(jnp.maximum(jnp.sum(jnp.square(s), axis=-1), 1e-16))
  t_norm = jnp.sqrt(jnp.maximum(jnp.sum(jnp.square(t), axis=-1), 1e-16))
  cosine = jnp.sum(t * s, axis=-1) / (s_norm * t_norm)
  per_row = {"l2": l2, "squared_l2": sq, "cosine": 1.0 - cosine}[kind]

  if weights is None:
    mean = jnp.mean
  else:
    w = weights.astype(jnp.float32).reshape(-1)
    total = jnp.sum(w)
    safe_total = jnp.where(total != 0, total, 1.0)

    def mean(x):
      return jnp.where(total != 0, jnp.sum(w * x) / safe_total, 0.0)

  return mean(per_row), {"l2": mean(l2), "cosine": mean(cosine)}


def total_loss(terms: Mapping[str, tuple[jax.Array, Metrics]],
               weights: Mapping[str, Any]) -> tuple[jax.Array, Metrics]:
  """Weighted sum ``L = sum_k w_k L_k`` of named terms.

  A term whose weight is missing or a concrete 0 is skipped entirely (not even multiplied by 0, so a
  NaN there cannot poison the total); weights are normally Python floats, and a traced weight always
  counts. A nonzero weight for a term that is not in ``terms`` is an error (a silently dropped term).

  Returns:
    ``(L, metrics)`` with ``"loss"`` = L, ``"<term>/loss"`` = the unweighted L_k and
    ``"<term>/<metric>"`` for each included term.
  """
  missing = sorted(k for k, w in weights.items() if k not in terms and not _is_zero(w))
  if missing:
    raise ValueError(f"Nonzero loss weights for terms that were not computed: {missing}.")
  total = jnp.zeros((), jnp.float32)
  metrics: Metrics = {}
  for name, (loss, term_metrics) in terms.items():
    w = weights.get(name)
    if w is None or _is_zero(w):
      continue
    total = total + jnp.asarray(w, jnp.float32) * jnp.asarray(loss, jnp.float32)
    metrics[f"{name}/loss"] = loss
    metrics.update({f"{name}/{k}": v for k, v in term_metrics.items()})
  metrics["loss"] = total
  return total, metrics


def _is_zero(w: Any) -> bool:
  return w is None or (isinstance(w, numbers.Number) and w == 0)
