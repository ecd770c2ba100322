"""The encoder's CPU kernel forms compute the plain ones' function, values and gradients."""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from edistill.models import encoder, kernels


def test_each_backend_gets_its_kernels():
  assert kernels.for_backend("cpu") is kernels.CPU
  assert kernels.for_backend("tpu") is kernels.for_backend("gpu") is kernels.PLAIN
  assert kernels.for_backend() is kernels.CPU  # These tests run on CPU.
  assert kernels.for_backend(name="cudnn") is kernels.CUDNN and kernels.for_backend("cpu", "plain") is kernels.PLAIN
  with pytest.raises(ValueError, match="unknown kernels"):
    kernels.for_backend(name="flash")


def _attention_inputs(seed=0, b=2, n=3, length=6, dh=4):
  rng = np.random.default_rng(seed)
  q, k, v = (rng.standard_normal((b, n, length, dh)).astype(np.float32) for _ in range(3))
  mask = np.ones((b, length), np.float32)
  mask[1, 4:] = 0  # Padding keys in the second row.
  key_bias = np.where(mask > 0, 0.0, np.finfo(np.float32).min).astype(np.float32)
  position_bias = rng.standard_normal((1, n, length, length)).astype(np.float32)
  return q, k, v, key_bias, position_bias


@pytest.mark.parametrize("with_position_bias", [False, True])
def test_cpu_attention_equals_plain_softmax_attention_and_its_gradient(with_position_bias):
  q, k, v, key_bias, pb = _attention_inputs()
  pb = pb if with_position_bias else None
  w = np.random.default_rng(1).standard_normal(q.shape).astype(np.float32)

  def loss(kern, q, k, v):
    return jnp.sum(w * kern.attention(q, k, v, key_bias, pb, lambda x: x, jnp.float32))

  ref = kernels.PLAIN.attention(q, k, v, key_bias, pb, lambda x: x, jnp.float32)
  # NumPy float64 reference: softmax over unmasked keys.
  s = np.einsum("bnqd,bnkd->bnqk", q.astype(np.float64), k) + key_bias[:, None, None, :] + (0 if pb is None else pb)
  p = np.exp(s - s.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  np.testing.assert_allclose(np.asarray(ref), np.einsum("bnqk,bnkd->bnqd", p, v), atol=1e-5)
  np.testing.assert_allclose(np.asarray(kernels.CPU.attention(q, k, v, key_bias, pb, lambda x: x, jnp.float32)),
                             np.asarray(ref), atol=1e-5)
  g_cpu = jax.grad(lambda *a: loss(kernels.CPU, *a), argnums=(0, 1, 2))(q, k, v)
  g_plain = jax.grad(lambda *a: loss(kernels.PLAIN, *a), argnums=(0, 1, 2))(q, k, v)
  for a, b in zip(g_cpu, g_plain):
    assert np.abs(np.asarray(b)).max() > 0.1
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def test_cpu_gelu_and_matmul_equal_the_plain_ones_and_keep_nan():
  x = np.linspace(-4, 4, 33, dtype=np.float32)
  np.testing.assert_allclose(np.asarray(kernels.CPU.gelu(x)), np.asarray(kernels.PLAIN.gelu(x)), atol=1e-7)
  np.testing.assert_allclose(np.asarray(jax.grad(lambda a: kernels.CPU.gelu(a).sum())(x)),
                             np.asarray(jax.grad(lambda a: kernels.PLAIN.gelu(a).sum())(x)), atol=1e-6)
  assert np.isnan(np.asarray(kernels.CPU.gelu(np.array([np.nan], np.float32)))).all()
  a = np.random.default_rng(2).standard_normal((3, 5)).astype(np.float32)
  kern = np.random.default_rng(3).standard_normal((5, 4)).astype(np.float32)
  np.testing.assert_allclose(np.asarray(kernels.CPU.matmul(a, kern)), np.asarray(kernels.PLAIN.matmul(a, kern)),
                             atol=1e-6)


@pytest.mark.parametrize("arch", ["bert", "mpnet"])
def test_an_encoder_on_the_plain_kernels_gives_the_cpu_kernels_embeddings_and_gradients(monkeypatch, arch):
  cfg = encoder.TransformerConfig(arch, 40, 16, 2, 2, 32, 24, 1e-12)
  model = encoder.Encoder(cfg, normalize=True)
  ids = np.array([[5, 7, 9, 11, 2, 0], [3, 4, 0, 0, 0, 0]], np.int32)
  mask = (ids > 0).astype(np.int32)
  params = model.init(jax.random.key(0), ids, mask)["params"]
  target = np.random.default_rng(4).standard_normal((2, 16)).astype(np.float32)

  def run():
    loss = lambda p: jnp.sum(target * model.apply({"params": p}, ids, mask))
    return jax.jit(jax.value_and_grad(loss))(params), model.apply({"params": params}, ids, mask)

  (l_cpu, g_cpu), e_cpu = run()
  used = []
  plain = dataclasses.replace(kernels.PLAIN, attention=lambda *a: used.append(1) or kernels.PLAIN.attention(*a))
  monkeypatch.setattr(kernels, "for_backend", lambda backend=None, name=None: plain)
  (l_plain, g_plain), e_plain = run()
  assert used  # The encoder asked for its kernels.
  np.testing.assert_allclose(np.asarray(e_plain), np.asarray(e_cpu), atol=1e-5)
  np.testing.assert_allclose(float(l_plain), float(l_cpu), atol=1e-5)
  for a, b in zip(jax.tree.leaves(g_cpu), jax.tree.leaves(g_plain)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("with_position_bias", [False, True])
def test_fused_attention_equals_plain_attention_and_its_gradients(with_position_bias):
  """The fused form's math (its XLA implementation here; cuDNN needs a GPU): padding as per-row key
  counts, the position bias as the bias, and that bias's gradient too."""
  q, k, v, key_bias, pb = _attention_inputs(length=8)
  pb = pb if with_position_bias else None
  w = np.random.default_rng(5).standard_normal(q.shape).astype(np.float32)
  fused = functools.partial(kernels.fused_attention, implementation="xla")

  def loss(attention, q, k, v, pb):
    return jnp.sum(w * attention(q, k, v, key_bias, pb, None, jnp.float32))

  args = (q, k, v, pb)
  np.testing.assert_allclose(np.asarray(fused(q, k, v, key_bias, pb, None, jnp.float32)),
                             np.asarray(kernels.plain_attention(q, k, v, key_bias, pb, None, jnp.float32)), atol=1e-5)
  argnums = (0, 1, 2, 3) if with_position_bias else (0, 1, 2)
  g_fused = jax.grad(lambda *a: loss(fused, *a), argnums=argnums)(*args)
  g_plain = jax.grad(lambda *a: loss(kernels.plain_attention, *a), argnums=argnums)(*args)
  for a, b in zip(g_fused, g_plain):
    assert np.abs(np.asarray(b)).max() > 0.1
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def test_fused_attention_falls_back_to_plain_where_cudnn_cannot_serve(monkeypatch):
  """float32 (cuDNN takes bf16/f16) or attention dropout on: the plain form, never the fused call."""
  q, k, v, key_bias, pb = _attention_inputs()
  monkeypatch.setattr(jax.nn, "dot_product_attention", lambda *a, **kw: pytest.fail("fused call"))
  ref = kernels.plain_attention(q, k, v, key_bias, pb, None, jnp.float32)
  np.testing.assert_allclose(np.asarray(kernels.CUDNN.attention(q, k, v, key_bias, pb, None, jnp.float32)),
                             np.asarray(ref))
  halve = lambda weights: weights / 2
  np.testing.assert_allclose(np.asarray(kernels.fused_attention(q, k, v, key_bias, pb, halve, jnp.float32,
                                                                implementation="xla")), np.asarray(ref) / 2,
                             rtol=1e-6)


def test_an_encoder_on_named_kernels_computes_the_same_embeddings():
  cfg = encoder.TransformerConfig("mpnet", 40, 16, 2, 2, 32, 24, 1e-12)
  ids = np.array([[5, 7, 9, 11, 2, 4], [3, 4, 6, 1, 1, 1]], np.int32)
  mask = (ids != 1).astype(np.int32)
  base = encoder.Encoder(cfg, normalize=True)
  params = base.init(jax.random.key(0), ids, mask)["params"]
  ref = base.apply({"params": params}, ids, mask)
  for name in ("plain", "cudnn"):  # cudnn on float32: its plain fallback.
    out = base.clone(kernels=name).apply({"params": params}, ids, mask)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-5)


@pytest.mark.parametrize("arch", ["bert", "mpnet"])
def test_the_sequence_major_attention_path_computes_the_encoders_values_and_gradients(monkeypatch, arch):
  """Kernels with ``seq_attention`` (cuDNN's: q, k, v from their own kernel blocks, no head split)
  give the heads-major path's embeddings and parameter gradients: the fused math in its XLA form
  here, and cuDNN's float32 fallback."""
  cfg = encoder.TransformerConfig(arch, 40, 16, 2, 2, 32, 24, 1e-12, hidden_dropout=0.0, attention_dropout=0.0)
  ids = np.array([[5, 7, 9, 11, 2, 4], [3, 4, 6, 1, 1, 1]], np.int32)
  mask = (ids != 1).astype(np.int32)
  base = encoder.Encoder(cfg, normalize=True)
  params = base.init(jax.random.key(0), ids, mask)["params"]
  w = np.random.default_rng(1).standard_normal((2, 16)).astype(np.float32)
  run = lambda model: jax.value_and_grad(lambda p: jnp.sum(w * model.apply({"params": p}, ids, mask)))(params)
  ref, g_ref = run(base.clone(kernels="plain"))
  calls = []
  seq = lambda *a: calls.append(1) or kernels.fused_seq_attention(*a, implementation="xla")
  xla = dataclasses.replace(kernels.CUDNN, name="cudnn_xla", seq_attention=seq)
  monkeypatch.setitem(kernels.BY_NAME, "cudnn_xla", xla)
  for name in ("cudnn_xla", "cudnn"):
    got, g = run(base.clone(kernels=name))
    np.testing.assert_allclose(float(got), float(ref), atol=1e-5)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref)):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
  assert calls  # The sequence-major path ran (once a layer per trace).


def _residual_bytes(fn, *args) -> int:
  """Bytes a VJP of ``fn`` keeps for its backward pass (the leaves of the pullback)."""
  _, pullback = jax.vjp(fn, *args)
  return sum(leaf.nbytes for leaf in jax.tree.leaves(pullback))


def test_plain_gelu_is_the_exact_gelu_and_its_backward_keeps_only_the_input():
  from scipy import special
  x = np.linspace(-6, 6, 97, dtype=np.float32)
  x64 = x.astype(np.float64)
  np.testing.assert_allclose(np.asarray(kernels.PLAIN.gelu(x)), 0.5 * x64 * special.erfc(-x64 / np.sqrt(2)), atol=2e-6)
  slope = 0.5 * special.erfc(-x64 / np.sqrt(2)) + x64 * np.exp(-x64 ** 2 / 2) / np.sqrt(2 * np.pi)
  np.testing.assert_allclose(np.asarray(jax.vmap(jax.grad(kernels.PLAIN.gelu))(x)), slope, atol=2e-6)
  h = jnp.asarray(np.random.default_rng(0).standard_normal((8, 64)), jnp.bfloat16)
  assert _residual_bytes(kernels.PLAIN.gelu, h) == h.nbytes
  assert _residual_bytes(functools.partial(jax.nn.gelu, approximate=False), h) >= 3 * h.nbytes  # What it replaced.


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_recomputing_layer_norm_equals_autodiffs_values_and_gradients_and_keeps_less(dtype):
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal((3, 5, 16)) * 3 + 1, dtype)
  scale, bias = (jnp.asarray(rng.standard_normal(16), jnp.float32) for _ in range(2))
  w = jnp.asarray(rng.standard_normal((3, 5, 16)), jnp.float32)
  loss = lambda f, *a: jnp.sum(w * f(*a, 1e-5).astype(jnp.float32))
  tol = 1e-5 if dtype == jnp.float32 else 2e-2
  np.testing.assert_allclose(np.asarray(kernels.recompute_layer_norm(x, scale, bias, 1e-5), np.float32),
                             np.asarray(kernels.autodiff_layer_norm(x, scale, bias, 1e-5), np.float32), atol=tol)
  grads = [jax.grad(lambda *a: loss(f, *a), argnums=(0, 1, 2))(x, scale, bias)
           for f in (kernels.recompute_layer_norm, kernels.autodiff_layer_norm)]
  for got, want in zip(*grads):
    assert np.abs(np.asarray(want, np.float32)).max() > 0.1
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32), atol=tol * 10, rtol=tol)
  if dtype == jnp.bfloat16:
    kept = _residual_bytes(lambda a: kernels.recompute_layer_norm(a, scale, bias, 1e-5), x)
    assert kept <= x.nbytes + 2 * 4 * 15 + scale.nbytes  # x, each row's mean and 1/std, the scale.
    assert _residual_bytes(lambda a: kernels.autodiff_layer_norm(a, scale, bias, 1e-5), x) >= 2 * x.nbytes


def test_the_cpu_layer_norm_is_flaxs_to_the_bit():
  """The CPU kernels' LayerNorm computes nn.LayerNorm's exact-variance float32 form (what earlier
  checkpoints and the PyTorch parity fixtures were made with)."""
  import flax.linen as nn
  x = np.random.default_rng(2).standard_normal((4, 7, 16)).astype(np.float32) * 5
  ln = nn.LayerNorm(epsilon=1e-12, use_fast_variance=False, dtype=jnp.float32)
  params = {"scale": np.random.default_rng(3).standard_normal(16).astype(np.float32),
            "bias": np.random.default_rng(4).standard_normal(16).astype(np.float32)}
  want = ln.apply({"params": params}, x)
  got = kernels.CPU.layer_norm(jnp.asarray(x), params["scale"], params["bias"], 1e-12)
  np.testing.assert_array_equal(np.asarray(jax.jit(lambda a: a)(got)), np.asarray(want))


def test_position_rows_get_their_gradient_from_a_matmul_not_a_batch_reduction():
  """The rows' gradient (a sum over the batch) is a dot_general: a reduction over the batch axis
  lays XLA:GPU's whole backward residual stream out batch-minor, with a transpose at every matmul."""
  rng = np.random.default_rng(5)
  x = jnp.asarray(rng.standard_normal((4, 6, 8)), jnp.float32)
  rows = jnp.asarray(rng.standard_normal((6, 8)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((4, 6, 8)), jnp.float32)
  grad = lambda f: jax.grad(lambda a, r: jnp.sum(w * jnp.tanh(f(a, r))), argnums=(0, 1))
  got, want = grad(encoder.add_positions)(x, rows), grad(lambda a, r: a + r[None])(x, rows)
  for a, b in zip(got, want):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
  backward = lambda f: str(jax.make_jaxpr(lambda a, r, ct: jax.vjp(f, a, r)[1](ct))(x, rows, w))
  assert "dot_general" in backward(encoder.add_positions) and "reduce_sum" not in backward(encoder.add_positions)
  assert "reduce_sum" in backward(lambda a, r: a + r[None])  # What it replaced.


def test_the_matmul_masked_sum_equals_the_reduce_and_stays_a_matmul():
  """PLAIN's masked sum (mean pooling's numerator) equals the CPU's reduce, values and gradients, and
  is a two-row batched matmul: a reduce over L (or a one-row matmul, which XLA rewrites into one)
  lays XLA:GPU's whole forward pass out [B, H, L]."""
  rng = np.random.default_rng(6)
  states = jnp.asarray(rng.standard_normal((3, 5, 8)), jnp.float32)
  mask = jnp.asarray([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], jnp.int32)
  w = jnp.asarray(rng.standard_normal((3, 8)), jnp.float32)
  np.testing.assert_allclose(np.asarray(kernels.PLAIN.masked_sum(states, mask)),
                             np.asarray(states * mask[..., None]).sum(1), atol=1e-5)
  grads = [jax.grad(lambda s: jnp.sum(w * f(s, mask)))(states) for f in (kernels.PLAIN.masked_sum,
                                                                           kernels.CPU.masked_sum)]
  np.testing.assert_allclose(np.asarray(grads[0]), np.asarray(grads[1]), atol=1e-6)
  jaxpr = jax.make_jaxpr(kernels.PLAIN.masked_sum)(states, mask).jaxpr
  dots = [e for e in jaxpr.eqns if e.primitive.name == "dot_general"]
  assert len(dots) == 1 and dots[0].invars[0].aval.shape == (3, 2, 5)
  assert not any(e.primitive.name == "reduce_sum" for e in jaxpr.eqns)


def test_the_plain_kernels_custom_vjps_give_the_same_gradients_under_remat():
  """The recomputing GELU / LayerNorm and the position rows' VJP inside ``nn.remat`` layers."""
  cfg = encoder.TransformerConfig("bert", 40, 16, 2, 2, 32, 24, 1e-12, hidden_dropout=0.0, attention_dropout=0.0)
  ids = np.array([[5, 7, 9, 11, 2, 4], [3, 4, 6, 1, 0, 0]], np.int32)
  mask = (ids > 0).astype(np.int32)
  base = encoder.Encoder(cfg, normalize=True, kernels="plain")
  params = base.init(jax.random.key(0), ids, mask)["params"]
  w = np.random.default_rng(7).standard_normal((2, 16)).astype(np.float32)
  run = lambda m: jax.jit(jax.value_and_grad(lambda p: jnp.sum(w * m.apply({"params": p}, ids, mask))))(params)
  (loss, grads), (loss_remat, grads_remat) = run(base), run(base.clone(remat=True))
  np.testing.assert_allclose(float(loss_remat), float(loss), rtol=1e-6)
  for a, b in zip(jax.tree.leaves(grads_remat), jax.tree.leaves(grads)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
