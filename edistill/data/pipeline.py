"""Tokenised, fixed-shape, deterministic and resumable training batches, split across hosts.

The order is a pure function of ``(seed, step)``: epoch ``e`` visits the examples in the permutation
drawn from ``np.random.default_rng([seed, e])`` and drops the remainder, so a run resumed at step
``s`` sees exactly the batches an uninterrupted run saw from step ``s`` on, on any number of hosts.
Host ``i`` of ``n`` takes rows ``[i*B/n, (i+1)*B/n)`` of each global batch: the shares are disjoint,
equal and, concatenated in host order, the global batch (what
``jax.make_array_from_process_local_data`` assembles).

Two throughput options, both off by default (0). ``bucket_window`` = W: each run of W batches of the
epoch's permutation is sorted by query length, cut into batches and the batches shuffled (seeded by
the epoch), so a batch holds queries of similar length; an epoch still visits the same rows.
``pad_multiple`` = m: each batch is padded only to its longest query (document) over the GLOBAL
batch, rounded up to m (at most max_length / m shapes each, and every host gets the same shape).
Padding is masked, so trimming leaves the loss unchanged; bucketing changes which queries share a
batch (its in-batch negatives), not what an epoch sees.

A host batch (``b = B / n`` rows, ``C = 1 + num_hard_negatives`` documents per query) holds:
  query_input_ids, query_attention_mask   int32 [b, Lq]      Lq <= max query length (trimmed: pad_multiple)
  doc_input_ids, doc_attention_mask       int32 [b, C, Ld]   column 0 is the positive (absent when the
                                                             pipeline has no document tokens: an
                                                             asymmetric student's documents are the
                                                             teacher's table rows)
  query_index                             int32 [b]          into the query table (teacher lookups)
  doc_index                               int32 [b, C]       into the document table
  negative_mask                           bool  [b, B*C]     True where a global in-batch document must
                                                             not count as a negative for this query
                                                             (it is relevant to it), own positive excluded
  teacher_scores (optional)               float32 [b, C]
"""
from __future__ import annotations

import dataclasses
from typing import Iterator, Mapping, Sequence

import numpy as np
from tqdm.auto import tqdm

from edistill.data.types import DataError, Qrels


@dataclasses.dataclass(frozen=True)
class Tokens:
  """Pre-tokenised texts: ``ids`` [N, L] (uint16 when the vocabulary fits, to halve memory) and
  ``lengths`` [N] int32; rows are right-padded with ``pad_id``."""

  ids: np.ndarray
  lengths: np.ndarray
  pad_id: int

  def __len__(self) -> int:
    return len(self.lengths)

  def take(self, index: np.ndarray, length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``index`` (any shape) -> (input_ids int32 [..., L], attention_mask int32 [..., L]); ``length``
    keeps the first L columns (default: all)."""
    ids = self.ids[index, :length].astype(np.int32)
    mask = (np.arange(ids.shape[-1]) < self.lengths[index][..., None]).astype(np.int32)
    return ids, mask

  def padded_length(self, index: np.ndarray, multiple: int) -> int | None:
    """The longest of rows ``index`` rounded up to ``multiple`` (at most the table's width); None if 0."""
    if not multiple:
      return None
    longest = int(self.lengths[index].max(initial=1))
    return min(self.ids.shape[1], -(-longest // multiple) * multiple)


def tokenize_texts(tokenizer, texts: Sequence[str], max_length: int, chunk: int = 4096,
                   desc: str | None = None) -> Tokens:
  """Tokenises ``texts`` once, truncated and padded to ``max_length``."""
  vocab = len(tokenizer)
  ids = np.full((len(texts), max_length), tokenizer.pad_token_id,
                dtype=np.uint16 if vocab <= np.iinfo(np.uint16).max else np.int32)
  lengths = np.zeros(len(texts), np.int32)
  for start in tqdm(range(0, len(texts), chunk), desc=desc or "tokenize", disable=desc is None):
    enc = tokenizer(list(texts[start:start + chunk]), truncation=True, max_length=max_length)["input_ids"]
    for row, seq in enumerate(enc, start):
      ids[row, :len(seq)] = seq
      lengths[row] = len(seq)
  return Tokens(ids, lengths, tokenizer.pad_token_id)


@dataclasses.dataclass(frozen=True)
class Examples:
  """Training examples: ``query`` [N] int32 and ``docs`` [N, C] int32 (column 0 the positive)
  index the query and document tables; ``teacher_scores`` [N, C] float32 is optional."""

  query: np.ndarray
  docs: np.ndarray
  teacher_scores: np.ndarray | None = None

  def __len__(self) -> int:
    return len(self.query)


def relevant_docs(qrels: Qrels, query_ids: Sequence[str], doc_ids: Sequence[str]) -> dict[int, np.ndarray]:
  """Query row -> sorted doc rows with relevance > 0 (table indices, not ids)."""
  q_row = {q: i for i, q in enumerate(query_ids)}
  d_row = {d: i for i, d in enumerate(doc_ids)}
  out = {}
  for q, docs in qrels.items():
    if q not in q_row:
      raise DataError(f"qrels query id {q!r} is not in the query table.")
    missing = [d for d in docs if d not in d_row]
    if missing:
      raise DataError(f"qrels for query {q!r} name documents not in the corpus: {missing[:5]}.")
    rows = sorted(d_row[d] for d, rel in docs.items() if rel > 0)
    if rows:
      out[q_row[q]] = np.asarray(rows, np.int32)
  return out


def build_examples(positives: Mapping[int, np.ndarray], num_docs: int, num_hard_negatives: int = 0,
                   hard_negatives: Mapping[int, Sequence[int]] | None = None, seed: int = 0) -> Examples:
  """One example per (query, relevant document) pair, with ``num_hard_negatives`` negatives each.

  Negatives come from ``hard_negatives[query]`` (mined candidates, positives removed) in a
  deterministic shuffled order, topped up with random non-relevant documents when too few.
  """
  rng = np.random.default_rng([seed, 1])
  query, docs = [], []
  for q in sorted(positives):
    pos = positives[q]
    pos_set = set(pos.tolist())
    pool = [d for d in (hard_negatives or {}).get(q, ()) if d not in pos_set]
    for p in pos:
      negs = list(rng.permutation(pool)[:num_hard_negatives]) if pool else []
      while len(negs) < num_hard_negatives:
        cand = int(rng.integers(num_docs))
        if cand not in pos_set and cand not in negs:
          negs.append(cand)
      query.append(q)
      docs.append([int(p), *map(int, negs)])
  if not query:
    raise DataError("no training examples: the qrels have no relevant (query, document) pair.")
  return Examples(np.asarray(query, np.int32), np.asarray(docs, np.int32).reshape(len(query), 1 + num_hard_negatives))


class Pipeline:
  """Deterministic, resumable, host-split batches (see module doc)."""

  def __init__(self, examples: Examples, queries: Tokens, docs: Tokens | None, global_batch_size: int,
               seed: int = 0, process_index: int = 0, process_count: int = 1,
               positives: Mapping[int, np.ndarray] | None = None, bucket_window: int = 0, pad_multiple: int = 0):
    if bucket_window < 0 or pad_multiple < 0:
      raise ValueError(f"bucket_window={bucket_window} and pad_multiple={pad_multiple} must be >= 0.")
    if global_batch_size % process_count:
      raise ValueError(f"global_batch_size {global_batch_size} is not divisible by {process_count} processes.")
    if len(examples) < global_batch_size:
      raise ValueError(f"{len(examples)} examples cannot fill one global batch of {global_batch_size}.")
    if not 0 <= process_index < process_count:
      raise ValueError(f"process_index {process_index} not in [0, {process_count}).")
    self.examples, self.queries, self.docs = examples, queries, docs
    self.global_batch_size, self.seed = global_batch_size, seed
    self.process_index, self.process_count = process_index, process_count
    self.local_batch_size = global_batch_size // process_count
    self.steps_per_epoch = len(examples) // global_batch_size
    self.positives = positives
    self.bucket_window, self.pad_multiple = bucket_window, pad_multiple
    self._epoch = (-1, None)  # Memo of (epoch, epoch_rows(epoch)): the order is a function of the epoch.

  def epoch_rows(self, epoch: int) -> np.ndarray:
    """Example rows of epoch ``epoch`` in visiting order, int64 [steps_per_epoch * B] (module doc)."""
    b = self.global_batch_size
    perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.examples))[:self.steps_per_epoch * b]
    if not self.bucket_window:
      return perm
    lengths = self.queries.lengths[self.examples.query[perm]]
    rng = np.random.default_rng([self.seed, epoch, 1])
    window = self.bucket_window * b
    runs = []
    for start in range(0, len(perm), window):
      batches = perm[start:start + window][np.argsort(lengths[start:start + window], kind="stable")].reshape(-1, b)
      runs.append(batches[rng.permutation(len(batches))].reshape(-1))
    return np.concatenate(runs)

  def global_rows(self, step: int) -> np.ndarray:
    """Example rows of global batch ``step`` (int64 [B])."""
    epoch, k = divmod(step, self.steps_per_epoch)
    if self._epoch[0] != epoch:
      self._epoch = (epoch, self.epoch_rows(epoch))
    return self._epoch[1][k * self.global_batch_size:(k + 1) * self.global_batch_size]

  def negative_mask(self, rows: np.ndarray, local: slice) -> np.ndarray:
    """bool [b, B*C]: global in-batch documents relevant to each local query (own positive excluded)."""
    cols = self.examples.docs[rows].reshape(-1)  # [B*C] document rows, global batch order.
    c = self.examples.docs.shape[1]
    mask = np.zeros((local.stop - local.start, cols.size), bool)
    for i, g in enumerate(range(local.start, local.stop)):
      q = self.examples.query[rows[g]]
      relevant = self.positives.get(int(q)) if self.positives is not None else None
      if relevant is None:
        relevant = self.examples.docs[rows[g], :1]
      mask[i] = np.isin(cols, relevant)
      mask[i, g * c] = False  # The query's own positive is the target, not a false negative.
    return mask

  def batch(self, step: int) -> dict[str, np.ndarray]:
    """This host's share of global batch ``step``."""
    rows = self.global_rows(step)
    local = slice(self.process_index * self.local_batch_size, (self.process_index + 1) * self.local_batch_size)
    mine = rows[local]
    q = self.examples.query[mine]
    d = self.examples.docs[mine]
    q_ids, q_mask = self.queries.take(q, self.queries.padded_length(self.examples.query[rows], self.pad_multiple))
    out = {"query_input_ids": q_ids, "query_attention_mask": q_mask, "query_index": q, "doc_index": d,
           "negative_mask": self.negative_mask(rows, local)}
    if self.docs is not None:
      out["doc_input_ids"], out["doc_attention_mask"] = self.docs.take(
          d, self.docs.padded_length(self.examples.docs[rows], self.pad_multiple))
    if self.examples.teacher_scores is not None:
      out["teacher_scores"] = self.examples.teacher_scores[mine].astype(np.float32)
    return out

  def iterate(self, start_step: int = 0, num_steps: int | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Batches for steps ``start_step, start_step + 1, ...`` (``num_steps`` of them, or forever)."""
    step = start_step
    while num_steps is None or step < start_step + num_steps:
      yield self.batch(step)
      step += 1


def from_retrieval_set(data, query_tokenizer, doc_tokenizer, max_query_length: int, max_doc_length: int,
                       global_batch_size: int, num_hard_negatives: int = 0, seed: int = 0,
                       process_index: int = 0, process_count: int = 1, bucket_window: int = 0,
                       pad_multiple: int = 0, doc_tokens: bool = True) -> Pipeline:
  """A training pipeline over a loaded split (``types.RetrievalSet``). ``doc_tokens=False`` leaves the
  corpus untokenised and the batches without document tokens (what an asymmetric student with a
  precomputed teacher needs: at MS MARCO's 8.8M passages that saves hours and gigabytes).

  Mined hard negatives stored with the queries (e.g. DPR's) are used first; random documents fill
  the rest. Query and document tables keep the set's order, so ``query_index``/``doc_index`` in a
  batch address precomputed teacher embeddings of the same set.
  """
  positives = relevant_docs(data.qrels, data.query_ids, data.doc_ids)
  d_row = {d: i for i, d in enumerate(data.doc_ids)}
  q_row = {q: i for i, q in enumerate(data.query_ids)}
  hard = {q_row[q]: [d_row[d] for d in ds if d in d_row] for q, ds in data.hard_negatives.items()}
  examples = build_examples(positives, len(data.doc_ids), num_hard_negatives, hard, seed)
  queries = tokenize_texts(query_tokenizer, data.query_texts, max_query_length, desc="tokenize queries")
  docs = tokenize_texts(doc_tokenizer, data.doc_texts, max_doc_length, desc="tokenize documents") if doc_tokens else None
  return Pipeline(examples, queries, docs, global_batch_size, seed, process_index, process_count, positives,
                  bucket_window, pad_multiple)
