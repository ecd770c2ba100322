"""Memory-bounded big batches: GradCache, bfloat16 compute and layer rematerialisation give the plain
step's numbers (exactly for GradCache and remat, within bf16 rounding for mixed precision)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from edistill.models.dual_encoder import DualEncoder
from edistill.train import grad_cache, state as state_lib
from edistill.objective import LossConfig, compute_loss, loss_from_embeddings
from edistill.train.step import train_step
from tests.test_train import ALL_TERMS, _batch, _run, _setup, _teacher_inputs, _without_key_bias

ASYM = LossConfig(label=1.0, score=1.0, query_emb=1.0)


def _variant(student: DualEncoder, **encoder_fields) -> DualEncoder:
  """The same student with its encoders' fields replaced (dropout off, dtype, remat)."""
  clone = lambda e: None if e is None else e.clone(**encoder_fields)
  return DualEncoder(clone(student.query_encoder), clone(student.doc_encoder), student.kind)


def _no_dropout(student: DualEncoder) -> DualEncoder:
  import dataclasses
  cfg = dataclasses.replace(student.query_encoder.config, hidden_dropout=0.0, attention_dropout=0.0)
  return _variant(student, config=cfg)


def _assert_trees_close(a, b, tol) -> float:
  """Every leaf within ``tol`` of ``b``'s largest magnitude in that leaf (float32 summation order differs
  between the two programs); returns the largest such relative difference."""
  def rel(path, x, y):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    r = float(np.abs(x - y).max() / max(np.abs(y).max(), 1e-12))
    assert r <= tol, f"{jax.tree_util.keystr(path)}: {r:.2e} > {tol:.0e}"
    return r
  return max(jax.tree.leaves(jax.tree_util.tree_map_with_path(rel, a, b)))


@pytest.mark.parametrize("kind,cfg,chunks", [("asymmetric", ASYM, (8, 2)), ("untied", ALL_TERMS, (4, 1)),
                                             ("tied", ALL_TERMS, (2,))])
def test_grad_cache_gives_the_plain_loss_and_gradients(fixtures, kind, cfg, chunks):
  batch = _batch(3)
  student, params, teacher, tparams = _setup(fixtures, kind)
  tp, batch = _teacher_inputs(teacher, tparams, batch, "precomputed")
  rng = jax.random.key(5)
  plain_fn = jax.jit(jax.value_and_grad(
      lambda p: compute_loss(p, tp, batch, rng, student=student, teacher=teacher, cfg=cfg, deterministic=True),
      has_aux=True))
  (loss, metrics), grads = plain_fn(params)
  head = lambda p, q, d: loss_from_embeddings(p, q, d, tp, batch, student=student, teacher=teacher, cfg=cfg)
  # The floor: the same plain step run eagerly instead of jitted differs from the jitted one by up to
  # 4.3e-5 of a leaf's largest gradient (untied, float32 summation order); GradCache measures 2-3e-5.
  for chunk in chunks:  # Queries per chunk: 8 = one chunk, 1 = a chunk per query.
    cached_fn = jax.jit(lambda p: grad_cache.value_and_grad(p, batch, rng, student=student, head=head, chunk=chunk,
                                                            deterministic=True))
    (loss_gc, metrics_gc), grads_gc = cached_fn(params)
    np.testing.assert_allclose(loss_gc, loss, rtol=1e-5)
    assert set(metrics_gc) == set(metrics)
    worst = _assert_trees_close(grads_gc, grads, 1e-6 if chunk == 8 else 1e-4)
    print(f"{kind} chunk {chunk}: loss diff {float(loss_gc - loss):.1e}, max rel grad diff {worst:.1e}")
  assert float(loss) > 0 and float(optax_norm(grads)) > 0  # Real numbers, not an empty comparison.


def optax_norm(tree):
  return jnp.sqrt(sum(jnp.sum(x ** 2) for x in jax.tree.leaves(tree)))


def test_grad_cache_chunking_keeps_row_order():
  x = jnp.arange(24).reshape(12, 2)
  chunks = grad_cache.chunk_rows(x, 3)
  assert chunks.shape == (3, 4, 2)
  np.testing.assert_array_equal(chunks[1, :, 0], [2, 8, 14, 20])  # Rows 1, 4, 7, 10.
  np.testing.assert_array_equal(grad_cache.unchunk_rows(chunks), x)
  with pytest.raises(ValueError, match="does not split into 5 chunks"):
    grad_cache.chunk_rows(x, 5)


def test_sharded_grad_cache_step_equals_the_plain_step(fixtures):
  """8 devices, jitted with the train step's shardings, two Adam updates, dropout off."""
  batch, cfg = _batch(), ALL_TERMS
  student, params, teacher, tparams = _setup(fixtures, "untied")
  student = _no_dropout(student)
  tp, batch = _teacher_inputs(teacher, tparams, batch, "precomputed")
  p_plain, m_plain = _run(student, params, teacher, tp, batch, cfg, jax.devices())
  p_gc, m_gc = _run(student, params, teacher, tp, batch, cfg, jax.devices(), grad_cache_chunk=2)
  for a, b in zip(m_plain, m_gc):
    for k in a:
      np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6, err_msg=k)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5),
               _without_key_bias(p_gc), _without_key_bias(p_plain))
  assert m_plain[1]["loss"] != m_plain[0]["loss"]  # The updates were real.


def test_bfloat16_compute_is_close_to_float32_and_keeps_float32_params(fixtures):
  batch = _batch(4)
  student, params, teacher, tparams = _setup(fixtures, "asymmetric")
  tp, batch = _teacher_inputs(teacher, tparams, batch, "precomputed")
  losses = {}
  for dtype in (jnp.float32, jnp.bfloat16):
    s = _variant(student, dtype=dtype)
    losses[dtype] = float(compute_loss(params, tp, batch, jax.random.key(0), student=s, teacher=teacher,
                                       cfg=ASYM, deterministic=True)[0])
  rel = abs(losses[jnp.bfloat16] - losses[jnp.float32]) / losses[jnp.float32]
  print(f"bf16 vs f32 loss: {losses}, rel diff {rel:.1e}")
  assert 0 < rel < 2e-2, losses  # Close, and not trivially equal (bf16 really ran).
  tx = state_lib.make_optimizer(1e-3, 10)
  state = state_lib.create(params, tx, 0)
  new, metrics = jax.jit(lambda st: train_step(st, tp, batch, student=_variant(student, dtype=jnp.bfloat16),
                                               teacher=teacher, cfg=ASYM, tx=tx))(state)
  assert np.isfinite(float(metrics["loss"]))
  dtypes = {x.dtype for x in jax.tree.leaves((new.params, new.opt_state)) if jnp.issubdtype(x.dtype, jnp.floating)}
  assert dtypes == {jnp.dtype(jnp.float32)}
  moved = new.params["query_tower"]["layer_0"]["mlp_in"]["kernel"] - params["query_tower"]["layer_0"]["mlp_in"]["kernel"]
  assert float(jnp.abs(moved).max()) > 0


def test_layer_remat_gives_the_same_loss_and_gradients(fixtures):
  batch = _batch(5)
  student, params, teacher, tparams = _setup(fixtures, "asymmetric")
  tp, batch = _teacher_inputs(teacher, tparams, batch, "precomputed")
  out = {}
  for remat in (False, True):
    s = _variant(student, remat=remat)
    out[remat] = jax.jit(jax.value_and_grad(
        lambda p: compute_loss(p, tp, batch, jax.random.key(1), student=s, teacher=teacher, cfg=ASYM)[0]))(params)
  np.testing.assert_allclose(out[True][0], out[False][0], rtol=1e-6)  # Same dropout masks too.
  print('remat: max rel grad diff', _assert_trees_close(out[True][1], out[False][1], 1e-6))
  jaxpr = {remat: str(jax.make_jaxpr(lambda p: compute_loss(p, tp, batch, jax.random.key(1),
                                                            student=_variant(student, remat=remat), teacher=teacher,
                                                            cfg=ASYM)[0])(params)) for remat in (False, True)}
  assert jaxpr[True].count(" remat2[") == 2 and "remat2[" not in jaxpr[False]  # One per layer.


def test_memory_options_are_validated_with_their_key():
  from edistill import config_lib
  cfg = config_lib.base_config()
  cfg.train.grad_cache_chunk = 5
  with pytest.raises(ValueError, match=r"config.train.grad_cache_chunk=5 must be 0 \(off\) or a positive divisor"):
    config_lib.validate(cfg)
  cfg.train.grad_cache_chunk, cfg.train.remat = 16, "full"
  with pytest.raises(ValueError, match=r"config.train.remat='full'"):
    config_lib.validate(cfg)


def test_the_loop_trains_with_grad_cache_remat_and_bfloat16(tmp_path, tiny_models, isolated_cache):
  from edistill import recipes
  from tests.test_train import _config
  cfg = _config(tiny_models, steps=1, grad_cache_chunk=2, remat="layer")
  cfg.student.dtype = "bfloat16"
  setup = recipes.build(cfg)
  assert setup.student.query_encoder.remat and setup.student.query_encoder.dtype == jnp.bfloat16
  metrics = recipes.train(cfg, tmp_path)
  assert np.isfinite(metrics["loss"]) and metrics["loss"] > 0
