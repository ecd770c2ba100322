"""Query generation for data-manifold exploration (EmbedDistill section on query generation).

Generated queries need no labels: the teacher scores them against the batch's documents, and the
student learns to match. Each generated query keeps a source document (its "positive") so it can
sit in an ordinary (query, document) batch.

Model-free generators (the default; deterministic for a seed):
  * ``perturb``: a training query with one edit: a random word span masked (``[MASK]``-style token),
    deleted, or locally shuffled.
  * ``ict``: inverse-cloze: a sentence sampled from a document serves as a query for that document.
A seq2seq generator (doc -> query, e.g. a docT5query checkpoint) is used when the user supplies a
local checkpoint; it needs torch, which edistill does not otherwise require.

Generated sets are cached as jsonl keyed by a hash of (method, options, inputs), so a rerun reuses
them.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Callable, Mapping, Protocol, Sequence

import numpy as np

from edistill.cache import atomic_file
from edistill.data.types import DataError

_SENTENCE = re.compile(r"(?<=[.!?;])\s+")


@dataclasses.dataclass(frozen=True)
class GeneratedQuery:
  text: str
  doc_id: str  # The document it is generated for (the source query's positive, or the ICT source).
  source: str  # Provenance: "perturb:<query id>" or "ict" or "seq2seq".


def perturb(text: str, rng: np.random.Generator, mask_token: str = "[MASK]", max_span: int = 3) -> str:
  """One random edit of a query: mask, delete or shuffle a span of 1..max_span words."""
  words = text.split()
  if len(words) < 3:
    return text
  span = int(rng.integers(1, min(max_span, len(words) - 1) + 1))
  start = int(rng.integers(0, len(words) - span + 1))
  op = rng.integers(3)
  if op == 0:
    words[start:start + span] = [mask_token]
  elif op == 1:
    del words[start:start + span]
  else:
    lo = max(0, start - 1)
    window = words[lo:start + span + 1]
    words[lo:start + span + 1] = [window[i] for i in rng.permutation(len(window))]
  return " ".join(words)


def ict_query(doc_text: str, rng: np.random.Generator, min_words: int = 4) -> str | None:
  """A sentence of the document with at least ``min_words`` words (None if it has none)."""
  sentences = [s for s in _SENTENCE.split(doc_text) if len(s.split()) >= min_words]
  if not sentences:
    return None
  return sentences[int(rng.integers(len(sentences)))].strip()


def generate_model_free(queries: Mapping[str, str], qrels: Mapping[str, Mapping[str, int]],
                        corpus: Mapping[str, str], num: int, ict_fraction: float = 0.5, seed: int = 0,
                        mask_token: str = "[MASK]") -> list[GeneratedQuery]:
  """``num`` queries: ``ict_fraction`` from documents (ICT), the rest perturbed training queries."""
  rng = np.random.default_rng([seed, 7])
  pairs = sorted((q, d) for q, ds in qrels.items() for d, r in ds.items() if r > 0 and q in queries)
  doc_ids = sorted(d for d in {d for _, d in pairs} if d in corpus) or sorted(corpus)
  if not pairs or not doc_ids:
    raise DataError("query generation needs training queries with relevant documents in the corpus.")
  out, seen, attempts = [], set(queries.values()), 0
  while len(out) < num and attempts < 20 * num:
    attempts += 1
    if rng.random() < ict_fraction:
      d = doc_ids[int(rng.integers(len(doc_ids)))]
      text, source = ict_query(corpus[d], rng), "ict"
    else:
      q, d = pairs[int(rng.integers(len(pairs)))]
      text, source = perturb(queries[q], rng, mask_token), f"perturb:{q}"
    if text and text not in seen:
      seen.add(text)
      out.append(GeneratedQuery(text, d, source))
  return out


class Seq2SeqModel(Protocol):
  def __call__(self, documents: Sequence[str]) -> list[str]: ...


def seq2seq_generator(checkpoint_dir: str | os.PathLike, max_length: int = 32, num_beams: int = 1,
                      max_input_length: int = 256) -> Seq2SeqModel:
  """Document -> query with a local HF seq2seq checkpoint (e.g. docT5query); needs torch."""
  try:
    import torch
    import transformers
  except ImportError as e:
    raise ImportError("seq2seq query generation needs torch: pip install -e '.[bench]'") from e
  path = Path(checkpoint_dir)
  if not (path / "config.json").is_file():
    raise FileNotFoundError(f"{path}: no config.json; expected a local seq2seq checkpoint directory.")
  tok = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
  model = transformers.AutoModelForSeq2SeqLM.from_pretrained(path, local_files_only=True).eval()

  @torch.inference_mode()
  def generate(documents: Sequence[str]) -> list[str]:
    enc = tok(list(documents), truncation=True, max_length=max_input_length, padding=True, return_tensors="pt")
    out = model.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], max_new_tokens=max_length, num_beams=num_beams, do_sample=False)
    return [t.strip() for t in tok.batch_decode(out, skip_special_tokens=True)]

  return generate


def generate_seq2seq(model: Seq2SeqModel, corpus: Mapping[str, str], doc_ids: Sequence[str],
                     batch_size: int = 32) -> list[GeneratedQuery]:
  """One query per listed document."""
  out = []
  for start in range(0, len(doc_ids), batch_size):
    chunk = list(doc_ids[start:start + batch_size])
    texts = model([corpus[d] for d in chunk])
    if len(texts) != len(chunk):
      raise ValueError(f"seq2seq model returned {len(texts)} queries for {len(chunk)} documents.")
    out.extend(GeneratedQuery(t, d, "seq2seq") for t, d in zip(texts, chunk) if t)
  return out


def cached(path: str | os.PathLike, make: Callable[[], list[GeneratedQuery]]) -> list[GeneratedQuery]:
  """Loads ``path`` (jsonl) if present, else runs ``make`` and writes it atomically."""
  path = Path(path)
  if path.is_file():
    with open(path, encoding="utf-8") as f:
      return [GeneratedQuery(**json.loads(line)) for line in f]
  out = make()
  with atomic_file(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
    for g in out:
      f.write(json.dumps(dataclasses.asdict(g), ensure_ascii=False) + "\n")
  return out


def mix(queries: Mapping[str, str], qrels: Mapping[str, Mapping[str, int]], generated: Sequence[GeneratedQuery],
        ratio: float, seed: int = 0) -> tuple[dict[str, str], dict[str, dict[str, int]]]:
  """Adds generated queries so they make up ``ratio`` of the training pairs (0 <= ratio < 1).

  Generated query ids are ``gen-<n>``; they are relevant (1) to their source document only.
  """
  if not 0 <= ratio < 1:
    raise ValueError(f"querygen ratio must be in [0, 1), got {ratio}.")
  real = sum(1 for ds in qrels.values() for r in ds.values() if r > 0)
  want = int(round(real * ratio / (1 - ratio)))
  if want > len(generated):
    raise ValueError(f"ratio {ratio} needs {want} generated queries, only {len(generated)} available.")
  pick = np.sort(np.random.default_rng([seed, 9]).permutation(len(generated))[:want])
  new_q, new_rel = dict(queries), {q: dict(ds) for q, ds in qrels.items()}
  for n, i in enumerate(pick):
    qid = f"gen-{n}"
    if qid in new_q:
      raise DataError(f"generated query id {qid!r} collides with a real query id.")
    new_q[qid] = generated[i].text
    new_rel[qid] = {generated[i].doc_id: 1}
  return new_q, new_rel
