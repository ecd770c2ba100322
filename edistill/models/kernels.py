"""The encoder's primitives per backend: the same values, laid out for XLA:CPU or left plain.

XLA:CPU hands dots and their elementwise neighbours to a library (YNNPACK) whose fusion choices
cost a MiniLM forward and train step 10-50 % in places; the ``CPU`` forms below steer it (each
docstring says how and by how much, benchmarks/RESULTS.md). TPU and GPU compilers fuse the plain
forms themselves, and there the tricks would only cost (an extra select pass, a head dimension of
Dh + 1 that breaks the matrix units' tiling), so every other backend gets ``PLAIN``, whose GELU and
LayerNorm recompute their backward pass from their input instead of storing intermediates (on an
accelerator the step is bound by memory traffic outside the matmuls). ``CUDNN`` is
``PLAIN`` with cuDNN's fused (flash) attention, chosen by name (``for_backend(name="cudnn")``, an
``Encoder``'s ``kernels``). All compute the same function; tests/test_kernels.py checks values and
gradients of one against the other.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Kernels:
  """matmul(x [..., in], kernel [in, out]) -> [..., out]; gelu(x) (exact, erf form);
  attention(q [B, N, L, Dh] (scaled), k, v [B, N, L, Dh], key_bias [B, L] float32,
  position_bias [1, N, L, L] | None, dropout(weights) -> weights or None (no dropout), dtype)
  -> context [B, N, L, Dh] (float32, or ``dtype`` from a fused kernel)."""

  name: str
  matmul: Callable
  gelu: Callable
  attention: Callable
  # seq_attention(q, k, v [B, L, N, Dh] unscaled, key_bias, position_bias, dropout, dtype, scale) ->
  # [B, L, N, Dh]: attention on the sequence-major layout a fused kernel reads. When set, the encoder
  # makes q, k and v in that layout directly and never splits heads (None: it calls ``attention``).
  seq_attention: Callable | None = None
  # layer_norm(x [..., H], scale [H], bias [H] float32, eps) -> [..., H] in x.dtype (float32 math);
  # masked_sum(states [B, L, H], mask [B, L] 0/1) -> [B, H] float32. Every Kernels below sets both.
  layer_norm: Callable = None
  masked_sum: Callable = None


def _materialise(x: jax.Array) -> jax.Array:
  """``x`` as its own buffer: a select XLA can neither fold into a dot nor absorb into a library
  dot fusion (NaN stays NaN, so no value changes)."""
  return jnp.where(jnp.isnan(x), x, x)


@jax.custom_vjp
def cpu_matmul(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """``x @ kernel`` with a backward pass laid out for XLA:CPU.

  Autodiff's input gradient ``dy @ kernel.T`` reaches the dot as a transposed operand, which
  XLA:CPU's dot library runs ~1.5x slower than a plain one; transposing the (small) kernel
  into its own buffer first makes it a plain matmul (a MiniLM train step's gradient: 11 % faster).
  """
  return x @ kernel


def _matmul_fwd(x, kernel):
  return x @ kernel, (x, kernel)


def _matmul_bwd(res, dy):
  x, kernel = res
  dx = dy @ _materialise(kernel.T)
  dkernel = x.reshape(-1, x.shape[-1]).T @ dy.reshape(-1, dy.shape[-1])
  return dx, dkernel


cpu_matmul.defvjp(_matmul_fwd, _matmul_bwd)


def cpu_gelu(x: jax.Array) -> jax.Array:
  """Exact GELU ending in a select.

  XLA:CPU pulls cheap elementwise producers of a matmul into its library dot fusion. A plain
  ``x * erfc(..) / 2`` is split there: the erfc part in one loop, the bias add in another, and the
  final products re-read by the next matmul from three [B, L, I] arrays (one a materialised 0.5). A
  select is not absorbed, so bias add + GELU become one loop and the matmul reads one array: 8 % of
  the MiniLM forward on CPU. Selecting on x, not on the output, measured 11 % faster.
  """
  return jnp.where(jnp.isnan(x), x, jax.nn.gelu(x, approximate=False))


@jax.custom_vjp
def recompute_gelu(x: jax.Array) -> jax.Array:
  """Exact GELU whose backward pass keeps only ``x`` and recomputes the rest.

  Autodiff of the erfc form keeps three [B, L, I] arrays per layer for the backward pass (x / 2,
  the erfc value, -x / sqrt 2): 1.5 GB more written and read per layer of a 12 x 768 train step at
  512 x 160 tokens than this (benchmarks/RESULTS.md), where the recomputed erf costs nothing against
  memory bandwidth. Math in float32, results in ``x.dtype``.
  """
  return _gelu_fwd(x)[0]


def _phi_cdf(x32: jax.Array) -> jax.Array:
  return 0.5 * jax.lax.erfc(x32 * (-1 / math.sqrt(2)))


def _gelu_fwd(x):
  x32 = x.astype(jnp.float32)
  return (x32 * _phi_cdf(x32)).astype(x.dtype), x


def _gelu_bwd(x, dy):
  # The barrier keeps XLA from sharing the forward's float32 copy of x with this pass: it would
  # store that copy (twice x's bytes) instead of x.
  x32 = jax.lax.optimization_barrier(x).astype(jnp.float32)
  slope = _phi_cdf(x32) + x32 * jnp.exp(-0.5 * x32 * x32) * (1 / math.sqrt(2 * math.pi))  # Phi(x) + x phi(x).
  return ((dy.astype(jnp.float32) * slope).astype(dy.dtype),)


recompute_gelu.defvjp(_gelu_fwd, _gelu_bwd)


def autodiff_layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float) -> jax.Array:
  """LayerNorm over the last axis with exact (two-pass) variance in float32, as PyTorch computes it;
  ``x [..., H]`` in any float dtype, ``scale``/``bias [H]`` float32; the result in ``x.dtype``."""
  return _layer_norm_fwd(x, scale, bias, eps)[0]


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def recompute_layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float) -> jax.Array:
  """``autodiff_layer_norm`` whose backward pass keeps ``x`` and each row's mean and 1/std only.

  Autodiff keeps float32 [B, L, H] intermediates (x - mean and its scaled forms) for every
  LayerNorm, two of them per layer; recomputing them from ``x`` reads half or less
  (benchmarks/RESULTS.md).
  """
  return _layer_norm_fwd(x, scale, bias, eps)[0]


def _layer_norm_fwd(x, scale, bias, eps):
  x32 = x.astype(jnp.float32)
  mean = x32.mean(-1, keepdims=True)
  centred = x32 - mean
  rstd = jax.lax.rsqrt(jnp.mean(centred * centred, -1, keepdims=True) + eps)
  return (centred * (rstd * scale) + bias).astype(x.dtype), (x, mean, rstd, scale)


def _layer_norm_bwd(eps, res, dy):
  x, mean, rstd, scale = res
  xhat = (jax.lax.optimization_barrier(x).astype(jnp.float32) - mean) * rstd  # Barrier: see _gelu_bwd.
  dy32 = dy.astype(jnp.float32)
  g = dy32 * scale
  dx = rstd * (g - g.mean(-1, keepdims=True) - xhat * jnp.mean(g * xhat, -1, keepdims=True))
  rows = tuple(range(dy.ndim - 1))
  return dx.astype(x.dtype), jnp.sum(dy32 * xhat, rows), jnp.sum(dy32, rows)


recompute_layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


def reduce_masked_sum(states: jax.Array, mask: jax.Array) -> jax.Array:
  """sum_l mask[b, l] states[b, l, :] in float32, as a reduce over L."""
  return (states.astype(jnp.float32) * mask.astype(jnp.float32)[..., None]).sum(1)


def matmul_masked_sum(states: jax.Array, mask: jax.Array) -> jax.Array:
  """``reduce_masked_sum`` as a batched matmul with two weight rows, the mask and zeros.

  XLA:GPU lays a reduce over L out with L minor, and that layout spreads back through the whole
  forward pass: [B, H, L] states with transposes at every layer, twice the memory traffic of an
  MPNet-base encoding pass (benchmarks/RESULTS.md). A one-row matmul is rewritten into that reduce;
  two rows stay a matmul, in the row-major layout.
  """
  weights = jnp.stack([mask.astype(states.dtype), jnp.zeros(mask.shape, states.dtype)], axis=1)  # [B, 2, L]
  return jnp.einsum("bkl,blh->bkh", weights, states, preferred_element_type=jnp.float32)[:, 0]


def cpu_attention(q, k, v, key_bias, position_bias, dropout, dtype):
  """softmax(q k^T + bias) v for XLA:CPU.

  The key mask rides in the score matmul as one extra dimension (q: 1, k: bias) instead of a
  broadcast [B, N, L, L] add that XLA:CPU would materialise; softmax(s) @ v is computed as
  (exp(s - max) @ v) / sum(exp(s - max)), so the division runs over [B, N, L, Dh] instead of
  [B, N, L, L] (2x faster attention on CPU).
  """
  q = jnp.concatenate([q, jnp.ones((*q.shape[:-1], 1), q.dtype)], axis=-1)
  k = jnp.concatenate([k, jnp.broadcast_to(key_bias[:, None, :, None], (*k.shape[:-1], 1)).astype(k.dtype)], axis=-1)
  scores = jnp.matmul(q, k.swapaxes(-1, -2), preferred_element_type=jnp.float32)
  if position_bias is not None:
    scores = scores + position_bias
  weights = jnp.exp(scores - jax.lax.stop_gradient(scores.max(-1, keepdims=True)))
  denom = weights.sum(-1, keepdims=True)
  weights = weights if dropout is None else dropout(weights)
  return jnp.matmul(weights.astype(dtype), v, preferred_element_type=jnp.float32) / denom


def plain_attention(q, k, v, key_bias, position_bias, dropout, dtype):
  """softmax(q k^T + bias) v, written as the math reads."""
  scores = jnp.matmul(q, k.swapaxes(-1, -2), preferred_element_type=jnp.float32) + key_bias[:, None, None, :]
  if position_bias is not None:
    scores = scores + position_bias
  weights = jax.nn.softmax(scores, axis=-1)
  weights = weights if dropout is None else dropout(weights)
  return jnp.matmul(weights.astype(dtype), v, preferred_element_type=jnp.float32)


def fused_attention(q, k, v, key_bias, position_bias, dropout, dtype, implementation="cudnn"):
  """``fused_seq_attention`` on the heads-major layout ([B, N, L, Dh], q scaled) of ``Kernels.attention``."""
  heads = lambda x: x.swapaxes(1, 2)
  return heads(fused_seq_attention(heads(q), heads(k), heads(v), key_bias, position_bias, dropout, dtype, 1.0,
                                   implementation))


def fused_seq_attention(q, k, v, key_bias, position_bias, dropout, dtype, scale, implementation="cudnn"):
  """softmax(scale q k^T + bias) v on sequence-major q, k, v [B, L, N, Dh] (the API's layout: no
  transpose on either side of the call) as one ``jax.nn.dot_product_attention``
  (``implementation="cudnn"``: cuDNN's flash attention, no [B, N, L, L] scores in memory; ``"xla"``:
  the same math, for tests).

  Padding rides as each row's count of unmasked keys (``key_value_seq_lengths``), so the keys must
  be right-padded (a mask that is a prefix), as every edistill tokenizer and pair packer writes them;
  MPNet's position bias goes in as the bias (its gradient comes back). Where the fused kernel cannot
  serve, ``plain_attention`` does: attention dropout on (the public API has none) or, for cuDNN, a
  compute dtype other than bfloat16/float16.
  """
  if dropout is not None or (implementation == "cudnn" and q.dtype not in (jnp.bfloat16, jnp.float16)):
    heads = lambda x: x.swapaxes(1, 2)
    q = q * jnp.asarray(scale, q.dtype)
    return heads(plain_attention(heads(q), heads(k), heads(v), key_bias, position_bias, dropout, dtype))
  lengths = jnp.sum(key_bias == 0, axis=-1, dtype=jnp.int32)
  bias = None if position_bias is None else position_bias.astype(q.dtype)
  return jax.nn.dot_product_attention(q, k, v, bias, scale=scale, key_value_seq_lengths=lengths,
                                      implementation=implementation)


CPU = Kernels("cpu", cpu_matmul, cpu_gelu, cpu_attention, layer_norm=autodiff_layer_norm,
              masked_sum=reduce_masked_sum)
PLAIN = Kernels("plain", jnp.matmul, recompute_gelu, plain_attention, layer_norm=recompute_layer_norm,
                masked_sum=matmul_masked_sum)
CUDNN = dataclasses.replace(PLAIN, name="cudnn", attention=fused_attention, seq_attention=fused_seq_attention)
BY_NAME = {k.name: k for k in (CPU, PLAIN, CUDNN)}


def for_backend(backend: str | None = None, name: str | None = None) -> Kernels:
  """The kernels called ``name``; without one, ``CPU`` on the cpu backend (default: jax's) and
  ``PLAIN`` on every other."""
  if name is not None:
    if name not in BY_NAME:
      raise ValueError(f"unknown kernels {name!r}; expected one of {sorted(BY_NAME)}.")
    return BY_NAME[name]
  return CPU if (backend or jax.default_backend()) == "cpu" else PLAIN
