"""Shared config pieces and validation with clear errors.

A config is an ``ml_collections.ConfigDict`` returned by ``get_config(arg)`` in ``configs/X.py``;
``--config configs/X.py:arg`` passes ``arg`` and ``--config.a.b=v`` overrides a field (an unknown
field is rejected by ConfigDict itself, naming the key).
"""
from __future__ import annotations

import ml_collections

MODES = ("similarity",)


def encoder_config(name: str, max_length: int = 128, num_layers: int | None = None,
                   pooling: str = "mean", normalize: bool = True) -> ml_collections.ConfigDict:
  """One encoder: a zoo name or local HF directory, plus its head and sequence length."""
  return ml_collections.ConfigDict({
      "name": name, "max_length": max_length, "num_layers": num_layers or 0,
      "pooling": pooling, "normalize": normalize, "dtype": "float32"})


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the offending key for inconsistent values."""
  if config.mode not in MODES:
    raise ValueError(f"config.mode={config.mode!r}; expected one of {MODES}.")
  for key in ("teacher", "student"):
    enc = config[key]
    if enc.pooling not in ("mean", "cls"):
      raise ValueError(f"config.{key}.pooling={enc.pooling!r}; expected 'mean' or 'cls'.")
    if enc.dtype not in ("float32", "bfloat16"):
      raise ValueError(f"config.{key}.dtype={enc.dtype!r}; expected 'float32' or 'bfloat16'.")
    if enc.max_length < 4:
      raise ValueError(f"config.{key}.max_length={enc.max_length} is too short.")
    if enc.num_layers < 0:
      raise ValueError(f"config.{key}.num_layers={enc.num_layers} must be >= 0 (0 = all layers).")
