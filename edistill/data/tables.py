"""Row tables too big for a device (teacher embeddings of a corpus): shards, memory-mapped, gathered by row.

A ``RowTable`` is an ``[N, D]`` table stored as consecutive shards (``[n_i, D]`` arrays, usually
``np.load(..., mmap_mode="r")`` views of the embedding cache's ``.npy`` shards). ``take`` reads only
the rows asked for, so a training host that gathers its batch's rows touches O(batch) of the table
and its resident memory grows with the rows it has read, not with N. ``np.asarray(table)`` reads the
whole table (mining, pseudo-labels, least-squares fits need it).
"""
from __future__ import annotations

import mmap
import os
from typing import Sequence

import numpy as np


class RowTable:
  """``[N, D]`` rows in shards; ``take(index)`` -> ``[*index.shape, D]`` (a copy, in ``dtype``)."""

  def __init__(self, shards: Sequence[np.ndarray]):
    shards = [s for s in shards]
    if not shards:
      raise ValueError("a RowTable needs at least one shard.")
    widths = {s.shape[1:] for s in shards}
    if len(widths) != 1 or any(s.ndim != 2 for s in shards):
      raise ValueError(f"shards must be 2-D with one width; got shapes {[s.shape for s in shards][:4]}.")
    self.shards = tuple(shards)
    self.offsets = np.cumsum([0] + [len(s) for s in shards])  # Shard i holds rows [offsets[i], offsets[i+1]).
    self.dtype = np.result_type(*[s.dtype for s in shards])

  @property
  def shape(self) -> tuple[int, int]:
    return int(self.offsets[-1]), int(self.shards[0].shape[1])

  def __len__(self) -> int:
    return self.shape[0]

  def take(self, index) -> np.ndarray:
    """Rows ``index`` (int array of any shape, each in [0, N)) -> ``[*index.shape, D]``."""
    index = np.asarray(index)
    flat = index.reshape(-1).astype(np.int64)
    n = len(self)
    if flat.size and (flat.min() < 0 or flat.max() >= n):
      raise IndexError(f"row index out of range [0, {n}): min {flat.min()}, max {flat.max()}.")
    out = np.empty((flat.size, self.shape[1]), self.dtype)
    if len(self.shards) == 1:
      out[:] = self.shards[0][flat]
    else:
      shard = np.searchsorted(self.offsets, flat, side="right") - 1
      for s in np.unique(shard):
        hit = shard == s
        out[hit] = self.shards[s][flat[hit] - self.offsets[s]]
    return out.reshape(*index.shape, self.shape[1])

  def __getitem__(self, index) -> np.ndarray:
    """``table[rows]`` for an int, an int array or a slice of rows: ``take`` of those rows."""
    return self.take(np.arange(len(self))[index] if isinstance(index, slice) else index)

  def __array__(self, dtype=None, copy=None):
    whole = np.concatenate([np.asarray(s) for s in self.shards]) if len(self.shards) > 1 else np.array(self.shards[0])
    return whole if dtype is None else whole.astype(dtype, copy=False)

  def concat(self, other) -> "RowTable":
    """This table's rows followed by ``other``'s (a RowTable or an ``[m, D]`` array); nothing is copied."""
    more = other.shards if isinstance(other, RowTable) else (np.asarray(other),)
    return RowTable((*self.shards, *more))

  def __repr__(self) -> str:
    return f"RowTable(shape={self.shape}, dtype={self.dtype}, shards={len(self.shards)})"


def open_rows(path: str | os.PathLike) -> np.ndarray:
  """A ``.npy`` file memory-mapped read-only for random row access: the kernel is told not to read
  ahead, so a page fault reads its page, not the next 128 KiB (resident memory tracks the rows read)."""
  rows = np.load(path, mmap_mode="r")
  raw = getattr(rows, "_mmap", None)
  if raw is not None and hasattr(mmap, "MADV_RANDOM"):
    raw.madvise(mmap.MADV_RANDOM)
  return rows


def as_table(x) -> RowTable:
  """``x`` if it is a RowTable, else a one-shard table over the array ``x``."""
  return x if isinstance(x, RowTable) else RowTable((np.asarray(x),))
