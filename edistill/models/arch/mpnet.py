"""MPNet: fairseq-style position ids and a bucketed relative position bias shared by every layer."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from edistill.models.arch import registry


def relative_position_buckets(length: int, num_buckets: int = 32, max_distance: int = 128) -> np.ndarray:
  """MPNet's bidirectional relative-position buckets, int32 ``[length, length]``.

  Computed in NumPy at trace time (``length`` is static), with float32 logs as in the PyTorch
  reference so bucket boundaries agree exactly.
  """
  pos = np.arange(length, dtype=np.int64)
  n = -(pos[None, :] - pos[:, None])  # -(memory - context)
  half = num_buckets // 2
  ret = (n < 0).astype(np.int64) * half
  n = np.abs(n)
  max_exact = half // 2
  with np.errstate(divide="ignore"):
    scaled = (np.log(n.astype(np.float32) / np.float32(max_exact))
              / np.float32(math.log(max_distance / max_exact)) * np.float32(half - max_exact))
  large = max_exact + np.where(n < max_exact, 0, scaled).astype(np.int64)
  large = np.minimum(large, half - 1)
  return (ret + np.where(n < max_exact, n, large)).astype(np.int32)


def position_ids(input_ids: jax.Array, pad_token_id: int) -> jax.Array:
  """Positions ``pad+1, pad+2, ...`` for real tokens and ``pad`` for padding (fairseq convention)."""
  not_pad = (input_ids != pad_token_id).astype(jnp.int32)
  return jnp.cumsum(not_pad, axis=1) * not_pad + pad_token_id


def _from_hf(raw: dict) -> dict:
  return {"type_vocab_size": 0, "pad_token_id": raw.get("pad_token_id", 1)}


def _to_hf(cfg) -> dict:
  return {"relative_attention_num_buckets": cfg.relative_attention_num_buckets}


def _layer(i: int) -> registry.LayerTensors:
  src = f"encoder.layer.{i}"
  att = f"{src}.attention.attn"
  return registry.LayerTensors((f"{att}.q", f"{att}.k", f"{att}.v"), f"{att}.o", f"{src}.attention.LayerNorm",
                           f"{src}.intermediate.dense", f"{src}.output.dense", f"{src}.output.LayerNorm")


registry.register(registry.Arch("mpnet", "MPNetModel", token_types=False, position_ids=position_ids, relative_buckets=relative_position_buckets,
                        from_hf=_from_hf, to_hf=_to_hf, layer=_layer,
                        final_tensors=((("rel_bias", "embedding"), "encoder.relative_attention_bias.weight"),)))
