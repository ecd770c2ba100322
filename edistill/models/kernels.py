"""The encoder's primitives per backend: the same values, laid out for XLA:CPU or left plain.

XLA:CPU hands dots and their elementwise neighbours to a library (YNNPACK) whose fusion choices
cost a MiniLM forward and train step 10-50 % in places; the ``CPU`` forms below steer it (each
docstring says how and by how much, benchmarks/RESULTS.md). TPU and GPU compilers fuse the plain
forms themselves, and there the tricks would only cost (an extra select pass, a head dimension of
Dh + 1 that breaks the matrix units' tiling), so every other backend gets ``PLAIN``. Both compute
the same function; tests/test_kernels.py checks values and gradients of one against the other.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Kernels:
  """matmul(x [..., in], kernel [in, out]) -> [..., out]; gelu(x) (exact, erf form);
  attention(q [B, N, L, Dh] (scaled), k, v [B, N, L, Dh], key_bias [B, L] float32,
  position_bias [1, N, L, L] | None, dropout(weights) -> weights, dtype) -> context [B, N, L, Dh] float32."""

  name: str
  matmul: Callable
  gelu: Callable
  attention: Callable


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
  return jnp.matmul(dropout(weights).astype(dtype), v, preferred_element_type=jnp.float32) / denom


def plain_attention(q, k, v, key_bias, position_bias, dropout, dtype):
  """softmax(q k^T + bias) v, written as the math reads."""
  scores = jnp.matmul(q, k.swapaxes(-1, -2), preferred_element_type=jnp.float32) + key_bias[:, None, None, :]
  if position_bias is not None:
    scores = scores + position_bias
  weights = jax.nn.softmax(scores, axis=-1)
  return jnp.matmul(dropout(weights).astype(dtype), v, preferred_element_type=jnp.float32)


CPU = Kernels("cpu", cpu_matmul, cpu_gelu, cpu_attention)
PLAIN = Kernels("plain", jnp.matmul, functools.partial(jax.nn.gelu, approximate=False), plain_attention)


def for_backend(backend: str | None = None) -> Kernels:
  """``CPU`` on the cpu backend (default: jax's), ``PLAIN`` on every other."""
  return CPU if (backend or jax.default_backend()) == "cpu" else PLAIN
