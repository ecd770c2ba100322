"""Tokenisation to static, jit-friendly shapes with transformers' fast (Rust) tokenizers.

A batch is a dict of int32 NumPy arrays ``input_ids``, ``attention_mask`` (and ``token_type_ids``
for BERT-style tokenizers), all ``[B, L]``. ``L`` is either the fixed ``max_length`` or, with
``bucket``, the smallest multiple of ``bucket`` that holds the longest row (capped at
``max_length``): a handful of shapes, so jit compiles a handful of times, not once per batch.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import transformers

Batch = dict[str, np.ndarray]


def load_tokenizer(ckpt_dir: str | Path) -> transformers.PreTrainedTokenizerFast:
  """The fast tokenizer stored in an HF checkpoint directory (never fetched from a hub)."""
  ckpt_dir = Path(ckpt_dir)
  if not any((ckpt_dir / f).is_file() for f in ("tokenizer.json", "vocab.txt")):
    raise FileNotFoundError(f"{ckpt_dir}: no tokenizer.json or vocab.txt; cannot build a tokenizer.")
  tok = transformers.AutoTokenizer.from_pretrained(str(ckpt_dir), use_fast=True, local_files_only=True)
  if not tok.is_fast:
    raise ValueError(f"{ckpt_dir}: only a slow tokenizer could be built; edistill needs a fast one.")
  return tok


def padded_length(longest: int, max_length: int, bucket: int | None) -> int:
  """Static sequence length for a batch whose longest row has ``longest`` tokens."""
  if not bucket:
    return max_length
  return min(max_length, -(-max(longest, 1) // bucket) * bucket)


def tokenize(tokenizer, texts: Sequence[str], max_length: int, bucket: int | None = None,
             text_pairs: Sequence[str] | None = None) -> Batch:
  """Tokenises, truncates to ``max_length`` and pads to a static length (see module doc)."""
  if isinstance(texts, str):
    raise TypeError("tokenize expects a sequence of strings, got a single string.")
  enc = tokenizer(list(texts), list(text_pairs) if text_pairs is not None else None,
                  truncation=True, max_length=max_length, padding="longest", return_tensors="np")
  length = padded_length(enc["input_ids"].shape[1], max_length, bucket)
  extra = length - enc["input_ids"].shape[1]
  pad_values = {"input_ids": tokenizer.pad_token_id}  # masks and token types pad with 0.
  return {k: np.pad(np.asarray(v, np.int32), ((0, 0), (0, extra)), constant_values=pad_values.get(k, 0))
          for k, v in enc.items()}
