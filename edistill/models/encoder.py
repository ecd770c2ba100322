"""Transformer text encoders (BERT family and MPNet) as pure-functional Flax linen modules.

Both architectures are post-LayerNorm transformers; they differ only in the embeddings and the
attention bias:

* BERT (MiniLM is BERT): word + absolute position + token-type embeddings; no attention bias.
* MPNet: word + absolute position embeddings (positions start at ``pad_token_id + 1`` and skip
  padding, as fairseq/HF do) and a T5-style bucketed relative position bias shared by all layers.

Shapes: ``input_ids``/``attention_mask``/``token_type_ids`` are int32 ``[B, L]``; token states are
``[B, L, H]``; pooled embeddings ``[B, D]`` with ``D = projection_dim or H``. Parameters are float32;
``dtype`` is the compute dtype (LayerNorm statistics, softmax and pooling stay in float32).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from edistill.models import arch as arch_lib
from edistill.models import kernels

POOLINGS = ("mean", "cls")


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Architecture hyper-parameters (mirrors the fields of an HF ``config.json``)."""

  arch: str
  vocab_size: int
  hidden_size: int
  num_layers: int
  num_heads: int
  intermediate_size: int
  max_position_embeddings: int
  layer_norm_eps: float
  hidden_act: str = "gelu"
  type_vocab_size: int = 2  # BERT only.
  pad_token_id: int = 0
  relative_attention_num_buckets: int = 32  # MPNet only.
  hidden_dropout: float = 0.1
  attention_dropout: float = 0.1

  def __post_init__(self):
    arch_lib.get(self.arch)  # Raises naming the known families.
    if self.hidden_size % self.num_heads:
      raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}.")
    if self.hidden_act not in _ACTIVATIONS:
      raise ValueError(f"Unsupported hidden_act {self.hidden_act!r}; expected one of {sorted(_ACTIVATIONS)}.")

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  def with_layers(self, num_layers: int) -> "TransformerConfig":
    """The same architecture cut to its first ``num_layers`` layers."""
    if not 1 <= num_layers <= self.num_layers:
      raise ValueError(f"num_layers must be in [1, {self.num_layers}], got {num_layers}.")
    return dataclasses.replace(self, num_layers=num_layers)


_ACTIVATIONS = {  # name -> fn(x, kernels).
    "gelu": lambda x, kern: kern.gelu(x),  # Exact (erf) GELU, as HF's "gelu".
    "gelu_new": lambda x, kern: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x, kern: jax.nn.gelu(x, approximate=True),
    "relu": lambda x, kern: jax.nn.relu(x),
}


class _LayerNormParams(nn.Module):
  """``nn.LayerNorm``'s parameters (``scale`` [H] ones, ``bias`` [H] zeros) without applying them."""

  features: int

  @nn.compact
  def __call__(self):
    return (self.param("scale", nn.initializers.ones_init(), (self.features,)),
            self.param("bias", nn.initializers.zeros_init(), (self.features,)))


class _LayerNorm(nn.Module):
  """LayerNorm with exact (two-pass) variance in float32, as PyTorch computes it, on the backend's
  ``kernels.layer_norm``; the result in the input's dtype."""

  eps: float
  kernels: str | None = None

  @nn.compact
  def __call__(self, x):
    scale, bias = _LayerNormParams(x.shape[-1], name="ln")()
    return kernels.for_backend(name=self.kernels).layer_norm(x, scale, bias, self.eps)


class _LinearParams(nn.Module):
  """Holds a Dense layer's ``kernel [in, out]`` and ``bias [out]`` without applying it."""

  features_in: int
  features_out: int

  @nn.compact
  def __call__(self):
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (self.features_in, self.features_out))
    return kernel, self.param("bias", nn.initializers.zeros_init(), (self.features_out,))


class _Dense(nn.Module):
  """``nn.Dense`` (same parameter names and initialisers) on the backend's ``kernels.matmul``."""

  features: int
  dtype: Any = jnp.float32
  kernels: str | None = None

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (x.shape[-1], self.features))
    bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
    kern = kernels.for_backend(name=self.kernels)
    return kern.matmul(x.astype(self.dtype), kernel.astype(self.dtype)) + bias.astype(self.dtype)


class SelfAttention(nn.Module):
  """Multi-head self-attention.

  ``key_bias`` [B, L] float32 is added to every query's score for that key (0 for tokens, a large
  negative for padding); ``position_bias`` [1, N, L, L] optional (MPNet). The q/k/v projections are
  one fused ``qkv`` Dense [H, 3H] (columns: query | key | value, heads-major within each).
  ``kernels``: the name of the ``kernels.Kernels`` to run on (None: the backend's).
  """

  config: TransformerConfig
  dtype: Any = jnp.float32
  kernels: str | None = None

  @nn.compact
  def __call__(self, x, key_bias, position_bias, deterministic: bool):
    cfg = self.config
    b, length, hidden = x.shape
    kernel, bias = _LinearParams(hidden, 3 * hidden, name="qkv")()
    kern = kernels.for_backend(name=self.kernels)
    off = deterministic or not cfg.attention_dropout
    dropout = None if off else functools.partial(nn.Dropout(cfg.attention_dropout), deterministic=False)
    if kern.seq_attention is not None:
      # q, k and v each from its own column block of the kernel: three [B, L, H] products already in
      # the [B, L, N, Dh] layout a fused kernel reads (slicing one [B, L, 3H] product, then splitting
      # heads, copied 14 % of a teacher-size step on an H200: benchmarks/RESULTS.md).
      x = x.astype(self.dtype)
      q, k, v = (
          (kern.matmul(x, kernel[:, i * hidden:(i + 1) * hidden].astype(self.dtype))
           + bias[i * hidden:(i + 1) * hidden].astype(self.dtype)).reshape(b, length, cfg.num_heads, cfg.head_dim)
          for i in range(3))
      ctx = kern.seq_attention(q, k, v, key_bias, position_bias, dropout, self.dtype, 1 / math.sqrt(cfg.head_dim))
      return _Dense(hidden, self.dtype, self.kernels, name="out")(ctx.astype(self.dtype).reshape(b, length, hidden))
    proj = kern.matmul(x.astype(self.dtype), kernel.astype(self.dtype)) + bias.astype(self.dtype)
    # Heads-major [B, N, L, Dh] so both attention products are plain batched matmuls: XLA:CPU
    # runs them ~4x faster than the equivalent einsum over the [B, L, N, Dh] layout.
    q, k, v = proj.reshape(b, length, 3, cfg.num_heads, cfg.head_dim).transpose(2, 0, 3, 1, 4)
    # 1/sqrt(Dh) on q rides in the head-split copy XLA makes anyway (scaling the [H, 3H] kernel
    # instead costs a separate pass over the weights every call).
    q = q * jnp.asarray(1 / math.sqrt(cfg.head_dim), q.dtype)
    ctx = kern.attention(q, k, v, key_bias, position_bias, dropout, self.dtype)
    ctx = ctx.astype(self.dtype).transpose(0, 2, 1, 3).reshape(b, length, hidden)
    return _Dense(hidden, self.dtype, self.kernels, name="out")(ctx)


class TransformerLayer(nn.Module):
  """Post-LN block: x = LN(x + Attn(x)); x = LN(x + MLP(x))."""

  config: TransformerConfig
  dtype: Any = jnp.float32
  kernels: str | None = None

  @nn.compact
  def __call__(self, x, key_bias, position_bias, deterministic: bool):
    cfg = self.config
    drop = nn.Dropout(cfg.hidden_dropout)
    h = SelfAttention(cfg, self.dtype, self.kernels, name="attention")(x, key_bias, position_bias, deterministic)
    x = _LayerNorm(cfg.layer_norm_eps, self.kernels, name="attention_norm")(x + drop(h, deterministic=deterministic))
    h = _Dense(cfg.intermediate_size, self.dtype, self.kernels, name="mlp_in")(x)
    h = _ACTIVATIONS[cfg.hidden_act](h, kernels.for_backend(name=self.kernels))
    h = _Dense(cfg.hidden_size, self.dtype, self.kernels, name="mlp_out")(h)
    return _LayerNorm(cfg.layer_norm_eps, self.kernels, name="output_norm")(x + drop(h, deterministic=deterministic))


class _Embedding(nn.Module):
  """Table lookup ``[..] -> [.., features]``; ids are clipped (flax's Embed fills out-of-range ids
  with NaN through an extra select pass over the output, ~10 ms a batch on CPU)."""

  num_embeddings: int
  features: int
  dtype: Any = jnp.float32

  def setup(self):
    self.embedding = self.param("embedding", nn.initializers.normal(0.02), (self.num_embeddings, self.features))

  def table(self) -> jax.Array:
    return self.embedding

  def __call__(self, ids):
    return jnp.take(self.embedding, ids, axis=0, mode="clip").astype(self.dtype)


@jax.custom_vjp
def add_positions(x: jax.Array, rows: jax.Array) -> jax.Array:
  """``x [B, L, H] + rows [L, H]`` (the same rows for every sequence), with the rows' gradient, the
  sum over the batch, taken as a matmul with a ones vector.

  Autodiff's form, a reduce over the batch axis, makes XLA:GPU's layout assignment give the whole
  backward residual stream a batch-minor [L, H, B] layout, so every layer's gradient matmuls read
  and write through transposes: 147 of them, ~10 ms (9 %) of a 12 x 768 train step at 512 x 160
  tokens on an H200 (benchmarks/RESULTS.md). A matmul keeps the row-major layout.
  """
  return x + rows[None]


def _add_positions_fwd(x, rows):
  return x + rows[None], rows


def _add_positions_bwd(rows, dx):
  b, length, hidden = dx.shape
  ones = jnp.ones((b,), dx.dtype)
  drows = jnp.matmul(ones, dx.reshape(b, length * hidden), preferred_element_type=jnp.float32)
  return dx, drows.reshape(length, hidden).astype(rows.dtype)


add_positions.defvjp(_add_positions_fwd, _add_positions_bwd)


class Embeddings(nn.Module):
  config: TransformerConfig
  dtype: Any = jnp.float32
  kernels: str | None = None

  @nn.compact
  def __call__(self, input_ids, token_type_ids, deterministic: bool):
    cfg = self.config
    embed = functools.partial(_Embedding, features=cfg.hidden_size, dtype=self.dtype)
    x = embed(cfg.vocab_size, name="word")(input_ids)
    position = embed(cfg.max_position_embeddings, name="position")
    family = arch_lib.get(cfg.arch)
    if family.position_ids is not None:
      x = x + position(family.position_ids(input_ids, cfg.pad_token_id))
    else:  # Positions 0..L-1: a static slice of the table, not a gather.
      x = add_positions(x, position.table()[:input_ids.shape[1]].astype(self.dtype))
    if family.token_types:
      token_type = embed(cfg.type_vocab_size, name="token_type")
      if token_type_ids is None:
        x = x + token_type.table()[0].astype(self.dtype)
      else:
        x = x + token_type(token_type_ids)
    x = _LayerNorm(cfg.layer_norm_eps, self.kernels, name="norm")(x)
    return nn.Dropout(cfg.hidden_dropout)(x, deterministic=deterministic)


def pool(states: jax.Array, attention_mask: jax.Array, pooling: str, kern: kernels.Kernels) -> jax.Array:
  """[B, L, H] token states -> [B, H] float32 (mean over unmasked tokens, or the first token); the
  masked sum on ``kern.masked_sum``."""
  if pooling == "cls":
    return states[:, 0].astype(jnp.float32)
  if pooling == "mean":
    summed = kern.masked_sum(states, attention_mask)
    return summed / jnp.maximum(attention_mask.astype(jnp.float32).sum(1, keepdims=True), 1e-9)
  raise ValueError(f"Unknown pooling {pooling!r}; expected one of {POOLINGS}.")


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  """Row-wise L2 normalisation, as torch.nn.functional.normalize."""
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


class Encoder(nn.Module):
  """Text encoder: transformer -> pooling -> optional projection -> optional L2 normalisation
  (or, with ``normalize_first``, pooling -> L2 normalisation -> projection).

  Attributes:
    config: the architecture.
    pooling: "mean" (masked mean of the last layer) or "cls" (first token).
    normalize: L2-normalise the output embedding.
    projection_dim: if set, a linear head ``H -> projection_dim`` after pooling.
    normalize_first: normalise before the projection instead of after it (an asymmetric student's
      query tower: its own normalised embedding, then the learnt map into the teacher's space).
    dtype: compute dtype (float32 or bfloat16); parameters stay float32.
    remat: recompute each layer's activations in the backward pass instead of storing them
      (``nn.remat`` per layer: activation memory of one layer, ~1/3 more compute; same values).
    kernels: the ``kernels.Kernels`` to run on, by name ("cudnn": cuDNN flash attention on a GPU);
      None: the backend's. An execution option like ``remat``: the same function, same params.
  """

  config: TransformerConfig
  pooling: str = "mean"
  normalize: bool = False
  projection_dim: int | None = None
  dtype: Any = jnp.float32
  remat: bool = False
  normalize_first: bool = False
  kernels: str | None = None

  @property
  def output_dim(self) -> int:
    """D of the ``[B, D]`` sentence embeddings: the projection's width, else the hidden size."""
    return self.projection_dim or self.config.hidden_size

  def setup(self):
    if self.pooling not in POOLINGS:
      raise ValueError(f"Unknown pooling {self.pooling!r}; expected one of {POOLINGS}.")
    cfg = self.config
    self.embeddings = Embeddings(cfg, self.dtype, self.kernels)
    # static_argnums counts self: (self, x, key_bias, position_bias, deterministic).
    layer = nn.remat(TransformerLayer, static_argnums=(4,)) if self.remat else TransformerLayer
    self.layers = [layer(cfg, self.dtype, self.kernels, name=f"layer_{i}") for i in range(cfg.num_layers)]
    if arch_lib.get(cfg.arch).relative_buckets is not None:
      self.rel_bias = nn.Embed(cfg.relative_attention_num_buckets, cfg.num_heads, name="rel_bias")
    if self.projection_dim:
      self.projection = nn.Dense(self.projection_dim, dtype=jnp.float32, name="projection")

  def encode_tokens(self, input_ids, attention_mask, token_type_ids=None, deterministic=True):
    """Last-layer token states, ``[B, L, H]`` in the compute dtype."""
    cfg = self.config
    x = self.embeddings(input_ids, token_type_ids, deterministic)
    # Additive key mask [B, L]: large negative on padding, as HF's finfo.min.
    key_bias = jnp.where(attention_mask > 0, 0.0, jnp.finfo(jnp.float32).min).astype(jnp.float32)
    position_bias = None
    relative_buckets = arch_lib.get(cfg.arch).relative_buckets
    if relative_buckets is not None:
      buckets = relative_buckets(input_ids.shape[1], cfg.relative_attention_num_buckets)
      position_bias = jnp.transpose(self.rel_bias(buckets), (2, 0, 1))[None].astype(jnp.float32)
    for layer in self.layers:
      x = layer(x, key_bias, position_bias, deterministic)
    return x

  def __call__(self, input_ids, attention_mask, token_type_ids=None, deterministic=True):
    """Sentence embeddings ``[B, D]`` float32."""
    states = self.encode_tokens(input_ids, attention_mask, token_type_ids, deterministic)
    emb = pool(states, attention_mask, self.pooling, kernels.for_backend(name=self.kernels))
    if self.normalize and self.normalize_first:
      return self.projection(l2_normalize(emb)) if self.projection_dim else l2_normalize(emb)
    if self.projection_dim:
      emb = self.projection(emb)
    return l2_normalize(emb) if self.normalize else emb
