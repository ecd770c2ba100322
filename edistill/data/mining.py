"""Hard negatives mined from a dual-encoder teacher's precomputed tables.

For each query, the teacher's highest-scoring documents that are not its positives, leaving out
likely false negatives: any document the teacher scores at or above the query's lowest-scoring
positive (an unlabeled relevant document is what such a document most often is). For an asymmetric
student the documents are the teacher's own table rows, so every mined negative costs a lookup, not
an encoding.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np


def teacher_negatives(query_emb: np.ndarray, doc_emb: np.ndarray, positives: Mapping[int, np.ndarray], depth: int,
                      chunk: int = 2048) -> dict[int, list[int]]:
  """{query row: up to ``depth`` document rows, best first} for every query row in ``positives``.

  query_emb: float [Nq, D]; doc_emb: float [Nd, D] (scores are inner products); positives: query
  row -> its relevant document rows. Ties are broken by the lower document row. Memory: [chunk, Nd].
  """
  if depth < 1:
    raise ValueError(f"depth={depth} must be >= 1.")
  rows = np.array(sorted(positives), np.int64)
  keep = min(depth, doc_emb.shape[0])
  out: dict[int, list[int]] = {}
  for start in range(0, len(rows), chunk):
    block = rows[start:start + chunk]
    scores = (query_emb[block] @ doc_emb.T).astype(np.float64)  # [b, Nd]
    for i, q in enumerate(block):  # Positives and what scores at or above the lowest one are out.
      pos = np.asarray(positives[int(q)])
      scores[i, scores[i] >= scores[i, pos].min()] = -np.inf
      scores[i, pos] = -np.inf
    top = np.argpartition(-scores, keep - 1, axis=1)[:, :keep]
    for i, q in enumerate(block):
      cand = top[i][np.lexsort((top[i], -scores[i, top[i]]))]  # Best first, then the lower row.
      out[int(q)] = cand[np.isfinite(scores[i, cand])].tolist()
  return out
