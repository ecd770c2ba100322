"""Losses against independent float64 NumPy references (loops), gradients, masking and jit."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from edistill import losses

RTOL = 1e-6
ATOL = 1e-7

# Jitted once per shape: much cheaper than eager dispatch, which compiles every primitive per shape.
label_loss = jax.jit(losses.label_loss)
score_distillation = jax.jit(losses.score_distillation, static_argnums=5)
margin_mse = jax.jit(losses.margin_mse)
embedding_matching = jax.jit(losses.embedding_matching, static_argnums=3)


def _grad(fn, **kwargs):
  return jax.jit(jax.grad(fn, **kwargs))


def _close(actual, expected, rtol=RTOL, atol=ATOL):
  np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=rtol, atol=atol)


def _batch(seed, b=5, hard_negatives=0):
  """float32 student/teacher scores ``[b, b*C]``, positives at ``i*C`` and a false-negative mask.

  Row 0 has every column but its positive masked; row 1 has a couple of false negatives.
  """
  c = 1 + hard_negatives
  n = b * c
  rng = np.random.default_rng(seed)
  s = rng.normal(size=(b, n)).astype(np.float32) * 3
  t = rng.normal(size=(b, n)).astype(np.float32) * 3
  pos = (np.arange(b) * c).astype(np.int32)
  mask = np.zeros((b, n), bool)
  mask[0] = True
  mask[1, [2 * c, n - 1]] = True
  mask[np.arange(b), pos] = False
  return s, t, pos, mask


LAYOUTS = [dict(b=5), dict(b=4, hard_negatives=2)]  # B' = B and B' = 3B.


# --- NumPy references (float64, loops) --------------------------------------------------------------


def _np_log_softmax(x):
  x = np.asarray(x, np.float64)
  m = x.max()
  return x - m - math.log(np.exp(x - m).sum())


def np_label_loss(scores, pos, mask, tau):
  scores = np.asarray(scores, np.float64)
  total, correct = 0.0, 0
  for i in range(scores.shape[0]):
    cols = [j for j in range(scores.shape[1]) if j == pos[i] or not mask[i, j]]
    logits = np.array([scores[i, j] / tau for j in cols], np.float64)
    total -= _np_log_softmax(logits)[cols.index(pos[i])]
    correct += cols[int(np.argmax(logits))] == pos[i]
  return total / scores.shape[0], correct / scores.shape[0]


def np_score_distillation(s, t, mask, tau_s, tau_t, kind):
  s, t = np.asarray(s, np.float64), np.asarray(t, np.float64)
  total = 0.0
  for i in range(s.shape[0]):
    cols = [j for j in range(s.shape[1]) if not mask[i, j]]
    log_ps = _np_log_softmax(s[i, cols] / tau_s)
    log_pt = _np_log_softmax(t[i, cols] / tau_t)
    pt = np.exp(log_pt)
    total += -(pt * log_ps).sum() if kind == "softmax_ce" else (pt * (log_pt - log_ps)).sum()
  return total / s.shape[0]


def np_softmax_ce_grad(s, t, mask, tau_s, tau_t):
  """Analytic d/dS of the mean-over-rows softmax CE: ``(p_s - p_t) / tau_s / B`` on valid columns."""
  s, t = np.asarray(s, np.float64), np.asarray(t, np.float64)
  g = np.zeros(s.shape, np.float64)
  for i in range(s.shape[0]):
    cols = [j for j in range(s.shape[1]) if not mask[i, j]]
    ps = np.exp(_np_log_softmax(s[i, cols] / tau_s))
    pt = np.exp(_np_log_softmax(t[i, cols] / tau_t))
    g[i, cols] = (ps - pt) / tau_s / s.shape[0]
  return g


def np_margin_mse(s, t, pos, mask):
  s, t = np.asarray(s, np.float64), np.asarray(t, np.float64)
  errs = []
  for i in range(s.shape[0]):
    p = pos[i]
    for j in range(s.shape[1]):
      if j != p and not mask[i, j]:
        errs.append(((s[i, p] - s[i, j]) - (t[i, p] - t[i, j])) ** 2)
  return float(np.mean(errs)) if errs else 0.0


def np_embedding_matching(s, t, kernel, bias, kind, weights):
  s, t = np.asarray(s, np.float64), np.asarray(t, np.float64)
  if kernel is not None:
    s = s @ np.asarray(kernel, np.float64) + np.asarray(bias, np.float64)
  w = np.ones(len(s)) if weights is None else np.asarray(weights, np.float64)
  rows = []
  for si, ti in zip(s, t):
    if kind == "l2":
      rows.append(np.linalg.norm(ti - si))
    elif kind == "squared_l2":
      rows.append(np.sum((ti - si) ** 2))
    else:
      rows.append(1.0 - ti @ si / (np.linalg.norm(ti) * np.linalg.norm(si)))
  return float(np.sum(w * np.array(rows)) / w.sum())


# --- score_matrix -----------------------------------------------------------------------------------


def test_score_matrix_matches_numpy_and_is_float32():
  rng = np.random.default_rng(0)
  q, d = rng.normal(size=(3, 8)).astype(np.float32), rng.normal(size=(9, 8)).astype(np.float32)
  out = losses.score_matrix(jnp.asarray(q), jnp.asarray(d))
  assert out.shape == (3, 9) and out.dtype == jnp.float32
  _close(out, q.astype(np.float64) @ d.T.astype(np.float64), rtol=1e-5, atol=1e-5)
  assert losses.score_matrix(jnp.asarray(q, jnp.bfloat16), jnp.asarray(d, jnp.bfloat16)).dtype == jnp.float32


# --- label loss -------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("tau", [1.0, 0.05])
def test_label_loss_matches_reference(layout, tau):
  s, _, pos, mask = _batch(1, **layout)
  loss, metrics = label_loss(jnp.asarray(s), jnp.asarray(pos), jnp.asarray(mask), tau)
  ref_loss, ref_acc = np_label_loss(s, pos, mask, tau)
  _close(loss, ref_loss)
  _close(metrics["accuracy"], ref_acc)
  # Row 0 (every other column masked) is certain: it adds exactly 0 to the loss.
  row0, _ = label_loss(jnp.asarray(s[:1]), jnp.asarray(pos[:1]), jnp.asarray(mask[:1]), tau)
  assert float(row0) == 0.0


def test_label_loss_without_mask_is_plain_cross_entropy():
  s, _, pos, _ = _batch(2)
  loss, _ = label_loss(jnp.asarray(s), jnp.asarray(pos), None, 0.5)
  _close(loss, np_label_loss(s, pos, np.zeros(s.shape, bool), 0.5)[0])
  # bfloat16 scores are computed in float32.
  s16 = jnp.asarray(s, jnp.bfloat16)
  loss16, _ = label_loss(s16, jnp.asarray(pos), None, 0.5)
  assert loss16.dtype == jnp.float32
  _close(loss16, np_label_loss(np.asarray(s16, np.float32), pos, np.zeros(s.shape, bool), 0.5)[0])


def test_label_loss_ignores_masked_scores_and_their_gradients():
  s, _, pos, mask = _batch(3, b=4, hard_negatives=2)
  fn = lambda x, tau: label_loss(x, jnp.asarray(pos), jnp.asarray(mask), tau)[0]
  grad_fn = _grad(fn, argnums=(0, 1))
  base = fn(jnp.asarray(s), 0.3)
  for bump in (100.0, np.inf, np.nan):
    perturbed = np.where(mask, s + bump, s).astype(np.float32)
    assert float(fn(jnp.asarray(perturbed), 0.3)) == float(base)
    g_s, g_tau = grad_fn(jnp.asarray(perturbed), 0.3)
    assert np.all(np.asarray(g_s)[mask] == 0) and np.all(np.isfinite(np.asarray(g_s)))
    assert np.isfinite(float(g_tau))


def test_label_loss_temperature_gradient_matches_finite_differences():
  s, _, pos, mask = _batch(4, b=4, hard_negatives=2)
  tau, h = 0.7, 1e-5
  grad = _grad(lambda t: label_loss(jnp.asarray(s), jnp.asarray(pos), jnp.asarray(mask), t)[0])(tau)
  fd = (np_label_loss(s, pos, mask, tau + h)[0] - np_label_loss(s, pos, mask, tau - h)[0]) / (2 * h)
  _close(grad, fd, rtol=1e-5, atol=1e-6)


# --- score distillation -----------------------------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("kind", losses.DISTILLATION_KINDS)
def test_score_distillation_matches_reference(layout, kind):
  s, t, _, mask = _batch(5, **layout)
  loss, metrics = score_distillation(jnp.asarray(s), jnp.asarray(t), jnp.asarray(mask), 0.5, 2.0, kind)
  _close(loss, np_score_distillation(s, t, mask, 0.5, 2.0, kind))
  _close(metrics["kl"], np_score_distillation(s, t, mask, 0.5, 2.0, "kl"), rtol=1e-5)
  # Row 0 has a single valid column: both distributions are one-hot there and the row costs 0.
  row0, _ = score_distillation(jnp.asarray(s[:1]), jnp.asarray(t[:1]), jnp.asarray(mask[:1]), 0.5, 2.0,
                                      kind)
  assert float(row0) == 0.0


def test_score_distillation_without_mask():
  s, t, _, _ = _batch(6)
  loss, metrics = score_distillation(jnp.asarray(s), jnp.asarray(t), None, 1.0, 1.0, "kl")
  _close(loss, np_score_distillation(s, t, np.zeros(s.shape, bool), 1.0, 1.0, "kl"))
  same, same_metrics = score_distillation(jnp.asarray(s), jnp.asarray(s), None, 1.0, 1.0, "kl")
  assert abs(float(same)) < 1e-6 and float(same_metrics["top1_agreement"]) == 1.0


@pytest.mark.parametrize("layout", LAYOUTS)
def test_score_distillation_student_gradient_is_ps_minus_pt(layout):
  s, t, _, mask = _batch(7, **layout)
  grads = {}
  for kind in losses.DISTILLATION_KINDS:
    fn = lambda x, y, k=kind: score_distillation(x, y, jnp.asarray(mask), 0.5, 2.0, k)[0]
    grads[kind], g_teacher = _grad(fn, argnums=(0, 1))(jnp.asarray(s), jnp.asarray(t))
    assert np.all(np.asarray(g_teacher) == 0)
  _close(grads["softmax_ce"], np_softmax_ce_grad(s, t, mask, 0.5, 2.0), atol=1e-7)
  np.testing.assert_allclose(grads["kl"], grads["softmax_ce"], rtol=1e-6, atol=1e-8)
  assert np.all(np.asarray(grads["kl"])[mask] == 0)


def test_score_distillation_ignores_masked_scores():
  s, t, _, mask = _batch(8, b=4, hard_negatives=2)
  fn = lambda x, y: score_distillation(x, y, jnp.asarray(mask), 0.5, 2.0, "kl")[0]
  base = float(fn(jnp.asarray(s), jnp.asarray(t)))
  grad_fn = _grad(fn)
  for bump in (100.0, -100.0, np.inf):
    s2 = np.where(mask, s + bump, s).astype(np.float32)
    t2 = np.where(mask, t - bump, t).astype(np.float32)
    assert float(fn(jnp.asarray(s2), jnp.asarray(t2))) == base
    assert np.all(np.isfinite(np.asarray(grad_fn(jnp.asarray(s2), jnp.asarray(t2)))))


def test_score_distillation_rejects_unknown_kind():
  s, t, _, mask = _batch(9)
  with pytest.raises(ValueError, match="kind"):
    score_distillation(jnp.asarray(s), jnp.asarray(t), jnp.asarray(mask), 1.0, 1.0, "mse")


# --- Margin-MSE -------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
def test_margin_mse_matches_reference(layout):
  s, t, pos, mask = _batch(10, **layout)
  fn = lambda x, y: margin_mse(x, y, jnp.asarray(pos), jnp.asarray(mask))
  loss, metrics = fn(jnp.asarray(s), jnp.asarray(t))
  _close(loss, np_margin_mse(s, t, pos, mask))
  # Masked columns neither count nor carry gradient; the teacher gets none at all.
  bumped = np.where(mask, s + 100.0, s).astype(np.float32)
  assert float(fn(jnp.asarray(bumped), jnp.asarray(t))[0]) == float(loss)
  g_s, g_t = _grad(lambda x, y: fn(x, y)[0], argnums=(0, 1))(jnp.asarray(s), jnp.asarray(t))
  assert np.all(np.asarray(g_s)[mask] == 0) and np.all(np.asarray(g_t) == 0)
  assert np.isfinite(float(metrics["student_margin"])) and np.isfinite(float(metrics["teacher_margin"]))


def test_margin_mse_without_valid_pairs_is_zero():
  s, t, pos, mask = _batch(11, b=4, hard_negatives=3)
  s, t, pos, mask = s[:1], t[:1], pos[:1], mask[:1]  # Row 0: every column but the positive masked.
  loss, _ = margin_mse(jnp.asarray(s), jnp.asarray(t), jnp.asarray(pos), jnp.asarray(mask))
  assert float(loss) == 0.0
  loss, _ = margin_mse(jnp.asarray(s), jnp.asarray(t), jnp.asarray(pos), None)
  _close(loss, np_margin_mse(s, t, pos, np.zeros_like(mask)))


# --- embedding matching -----------------------------------------------------------------------------


def _embeddings(seed, n=6, ds=4, dt=7):
  rng = np.random.default_rng(seed)
  s = rng.normal(size=(n, ds)).astype(np.float32)
  t = rng.normal(size=(n, dt)).astype(np.float32)
  proj = {"kernel": (rng.normal(size=(ds, dt)) / math.sqrt(ds)).astype(np.float32),
          "bias": rng.normal(size=(dt,)).astype(np.float32) * 0.1}
  w = rng.uniform(0.5, 2.0, size=(n,)).astype(np.float32)
  w[-2:] = 0.0  # Padding rows.
  return s, t, proj, w


@pytest.mark.parametrize("kind", losses.EMBEDDING_KINDS)
@pytest.mark.parametrize("projected, weighted", [(True, True), (False, False)])
def test_embedding_matching_matches_reference(kind, projected, weighted):
  s, t, proj, w = _embeddings(12, ds=4, dt=7 if projected else 4)
  loss, metrics = embedding_matching(jnp.asarray(s), jnp.asarray(t),
                                            jax.tree.map(jnp.asarray, proj) if projected else None, kind,
                                            jnp.asarray(w) if weighted else None)
  kernel, bias = (proj["kernel"], proj["bias"]) if projected else (None, None)
  weights = w if weighted else None
  _close(loss, np_embedding_matching(s, t, kernel, bias, kind, weights))
  _close(metrics["l2"], np_embedding_matching(s, t, kernel, bias, "l2", weights))
  _close(metrics["cosine"], 1.0 - np_embedding_matching(s, t, kernel, bias, "cosine", weights), atol=1e-6)


def test_embedding_matching_padding_rows_do_not_matter():
  s, t, proj, w = _embeddings(13)
  fn = lambda x: embedding_matching(x, jnp.asarray(t), proj, "l2", jnp.asarray(w))[0]
  s2 = s.copy()
  s2[w == 0] += 1e3
  assert float(fn(jnp.asarray(s2))) == pytest.approx(float(fn(jnp.asarray(s))), rel=1e-6)
  assert np.all(np.asarray(_grad(fn)(jnp.asarray(s2)))[w == 0] == 0)
  zero, _ = embedding_matching(jnp.asarray(s), jnp.asarray(t), proj, "l2", jnp.zeros(len(s)))
  assert float(zero) == 0.0


def test_embedding_matching_l2_projection_gradient_matches_analytic():
  s, t, proj, w = _embeddings(14)
  fn = lambda p: embedding_matching(jnp.asarray(s), jnp.asarray(t), p, "l2", jnp.asarray(w))[0]
  grads = _grad(fn)(jax.tree.map(jnp.asarray, proj))
  # L = sum_i w_i ||r_i|| / sum w, r_i = t_i - (s_i K + b): dL/dK = -sum_i w_i s_i^T r_i/||r_i|| / sum w.
  s64, t64 = s.astype(np.float64), t.astype(np.float64)
  r = t64 - (s64 @ proj["kernel"].astype(np.float64) + proj["bias"].astype(np.float64))
  u = w[:, None] * r / np.linalg.norm(r, axis=1, keepdims=True) / w.sum()
  _close(grads["kernel"], -s64.T @ u, rtol=1e-5, atol=1e-6)
  _close(grads["bias"], -u.sum(0), rtol=1e-5, atol=1e-6)
  # The teacher side is constant.
  g_t = _grad(lambda y: embedding_matching(jnp.asarray(s), y, proj, "l2")[0])(jnp.asarray(t))
  assert np.all(np.asarray(g_t) == 0)


@pytest.mark.parametrize("kind", losses.EMBEDDING_KINDS)
def test_embedding_matching_gradient_is_finite_when_student_equals_teacher(kind):
  e = np.random.default_rng(15).normal(size=(3, 4)).astype(np.float32)
  e[0] = 0.0  # Also a zero vector (cosine with a zero norm).
  fn = lambda x: embedding_matching(x, jnp.asarray(e), None, kind)[0]
  # l2: sqrt(0 + 1e-12) = 1e-6 a row; cosine: a zero vector has cosine 0 with anything.
  expected = {"l2": 1e-6, "squared_l2": 0.0, "cosine": 1 / 3}[kind]
  _close(fn(jnp.asarray(e)), expected, rtol=1e-6, atol=1e-7)
  assert np.all(np.isfinite(np.asarray(_grad(fn)(jnp.asarray(e)))))


def test_embedding_matching_flattens_leading_dims():
  s, t, proj, w = _embeddings(16, n=6)
  flat, _ = embedding_matching(jnp.asarray(s), jnp.asarray(t), proj, "cosine", jnp.asarray(w))
  nested, _ = embedding_matching(jnp.asarray(s.reshape(2, 3, -1)), jnp.asarray(t.reshape(2, 3, -1)), proj,
                                        "cosine", jnp.asarray(w.reshape(2, 3)))
  _close(nested, float(flat))


def test_embedding_matching_shape_errors():
  s, t, proj, _ = _embeddings(17, ds=4, dt=7)
  with pytest.raises(ValueError, match="projection is required"):
    embedding_matching(jnp.asarray(s), jnp.asarray(t), None)
  with pytest.raises(ValueError, match="kernel"):
    embedding_matching(jnp.asarray(s), jnp.asarray(t[:, :5]), proj)
  with pytest.raises(ValueError, match="leading shape"):
    embedding_matching(jnp.asarray(s), jnp.asarray(t[:3]), proj)
  with pytest.raises(ValueError, match="kind"):
    embedding_matching(jnp.asarray(s), jnp.asarray(t), proj, "dot")


def test_init_projection():
  from edistill.models.dual_encoder import init_projection
  p = jax.jit(init_projection, static_argnums=(1, 2))(jax.random.PRNGKey(0), 64, 96)
  assert p["kernel"].shape == (64, 96) and p["kernel"].dtype == jnp.float32
  assert p["bias"].shape == (96,) and np.all(np.asarray(p["bias"]) == 0)
  assert 0.7 / 8 < float(jnp.std(p["kernel"])) < 1.3 / 8  # Variance ~ 1 / in_dim.


# --- total loss -------------------------------------------------------------------------------------


def test_total_loss_weights_skips_and_flattens():
  nan = jnp.float32(np.nan)
  terms = {"label": (jnp.float32(2.0), {"accuracy": jnp.float32(0.5)}),
           "score": (jnp.float32(3.0), {"kl": jnp.float32(0.25)}),
           "qemb": (nan, {"l2": nan}),
           "demb": (nan, {})}
  loss, metrics = losses.total_loss(terms, {"label": 1.0, "score": 0.5, "qemb": 0.0})
  assert float(loss) == 3.5
  assert set(metrics) == {"loss", "label/loss", "label/accuracy", "score/loss", "score/kl"}
  assert float(metrics["loss"]) == 3.5 and float(metrics["score/loss"]) == 3.0
  with pytest.raises(ValueError, match="qemb"):
    losses.total_loss({"label": terms["label"]}, {"label": 1.0, "qemb": 5.0})
  # A zero weight for an absent term is fine.
  assert float(losses.total_loss({"label": terms["label"]}, {"label": 1.0, "demb": 0})[0]) == 2.0


# --- jit --------------------------------------------------------------------------------------------


def test_one_jitted_training_objective_matches_references():
  s, t, pos, mask = _batch(18, b=4, hard_negatives=2)
  es, et, proj, w = _embeddings(18)
  args = [jnp.asarray(x) for x in (s, t, pos, mask, es, et, w)]
  weights = {"label": 1.0, "score": 1.0, "margin": 0.1, "qemb": 5.0, "demb": 0.0}

  @jax.jit
  def step(s, t, pos, mask, es, et, w, proj, tau):
    terms = {"label": losses.label_loss(s, pos, mask, tau),
             "score": losses.score_distillation(s, t, mask, tau, 1.0, "softmax_ce"),
             "margin": losses.margin_mse(s, t, pos, mask),
             "qemb": losses.embedding_matching(es, et, proj, "l2", w)}
    return losses.total_loss(terms, weights)

  (loss, metrics), grads = jax.value_and_grad(step, argnums=(0, 7, 8), has_aux=True)(
      *args, jax.tree.map(jnp.asarray, proj), 0.5)
  refs = {"label": np_label_loss(s, pos, mask, 0.5)[0],
          "score": np_score_distillation(s, t, mask, 0.5, 1.0, "softmax_ce"),
          "margin": np_margin_mse(s, t, pos, mask),
          "qemb": np_embedding_matching(es, et, proj["kernel"], proj["bias"], "l2", w)}
  for name, ref in refs.items():
    _close(metrics[f"{name}/loss"], ref)
  _close(loss, sum(weights[k] * v for k, v in refs.items()))
  assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree.leaves(grads))
  q = jax.jit(losses.score_matrix)(jnp.asarray(es), jnp.asarray(es))
  assert q.shape == (6, 6) and q.dtype == jnp.float32
