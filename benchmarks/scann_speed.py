"""ScaNN vs exact search: queries/s, build time and recall@k against exact, on real text embeddings.

    .venv/bin/python -m edistill.data.benchmarks --source wordnet_gcide --out /tmp/wg_full
    .venv/bin/python benchmarks/scann_speed.py --data /tmp/wg_full [--json out.json]

Corpus: the WordNet->GCIDE BEIR directory (documents = GCIDE entries); queries: up to ``--queries``
WordNet glosses, test then dev then train. Embeddings come from a real packaged encoder
(``--model``, first ``--layers`` layers, ``--max-length`` tokens, mean-pooled and unit-normalised):
on the 2-core CPU box the full 6-layer MiniLM at 128 tokens is ~65 docs/s, so by default its first 2
layers at 64 tokens embed the documents, length-sorted in 16-token buckets. The encoder's rate is
measured on 2k documents first; if the whole corpus would take over ``--budget-min`` minutes, a
seeded random ``--subset`` of documents is used instead (printed and recorded). Embeddings are
cached as .npy under ``--cache`` so reruns only time the search.

Timed (median of ``--reps`` runs over all queries, after a warm-up call):
  exact   ``index.exact_search`` (JAX, jitted, 256-query x 16k-doc chunks).
  matmul  the NumPy score matmul alone, no top-k: a bound for any brute force, so speedups are not
          measured against a weak baseline only.
  scann   ``index.build_scann(ScannConfig.for_corpus(n))`` then ``scann_search`` (batched, parallel),
          plus alternative settings (share of leaves searched, reorder depth, no thread pool).
Recall is ``recall_against_exact`` at ``--k``.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path

import jax
import numpy as np

from edistill.retrieval import index as index_lib
from edistill.models import zoo

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import median_time  # noqa: E402

BUCKET = 16


def read_jsonl(path: Path) -> dict[str, str]:
  out = {}
  with open(path, encoding="utf-8") as f:
    for line in f:
      if line.strip():
        row = json.loads(line)
        out[row["_id"]] = " ".join(filter(None, (row.get("title", ""), row["text"])))
  return out


def query_ids(root: Path, n: int) -> list[str]:
  """First ``n`` distinct query ids of qrels test, then dev, then train (file order)."""
  ids: dict[str, None] = {}
  for split in ("test", "dev", "train"):
    path = root / "qrels" / f"{split}.tsv"
    if not path.is_file():
      continue
    with open(path, encoding="utf-8") as f:
      next(f)
      for line in f:
        ids.setdefault(line.split("\t", 1)[0], None)
        if len(ids) >= n:
          return list(ids)
  return list(ids)


class Embedder:
  """Jitted encoder over length-sorted, bucket-padded batches: texts -> [N, D] float32."""

  def __init__(self, model: str, layers: int | None, max_length: int, batch: int):
    self.pre = zoo.load(model, num_layers=layers)
    self.max_length, self.batch = max_length, batch
    self.params = jax.device_put(self.pre.params)
    module = self.pre.module
    self.apply = jax.jit(lambda p, i, m: module.apply({"params": p}, i, m))

  def __call__(self, texts: list[str]) -> np.ndarray:
    lengths = np.array([len(x) for x in self.pre.tokenizer(texts, truncation=True, max_length=self.max_length,
                                                              add_special_tokens=True)["input_ids"]])
    order = np.argsort(lengths, kind="stable")
    out = np.zeros((len(texts), self.pre.config.hidden_size), np.float32)
    for start in range(0, len(texts), self.batch):
      rows = order[start:start + self.batch]
      enc = self.pre.tokenize([texts[i] for i in rows], self.max_length, bucket=BUCKET)
      pad = self.batch - len(rows)  # Keep one batch size per bucket: pad the last batch.
      ids = np.pad(enc["input_ids"], ((0, pad), (0, 0)), constant_values=self.pre.tokenizer.pad_token_id)
      mask = np.pad(enc["attention_mask"], ((0, pad), (0, 0)))
      out[rows] = np.asarray(self.apply(self.params, ids, mask))[:len(rows)]
    return out


def cached(path: Path, make) -> np.ndarray:
  if path.is_file():
    return np.load(path)
  arr = np.asarray(make(), np.float32)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(path.name + ".tmp.npy")
  np.save(tmp, arr)
  os.replace(tmp, path)
  return arr


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--data", type=Path, default=Path("/tmp/wg_full"))
  parser.add_argument("--model", default="minilm-l6")
  parser.add_argument("--layers", type=int, default=2)
  parser.add_argument("--max-length", type=int, default=64)
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--queries", type=int, default=2000)
  parser.add_argument("--k", type=int, default=10)
  parser.add_argument("--budget-min", type=float, default=15.0, help="max minutes to embed the corpus")
  parser.add_argument("--subset", type=int, default=60_000, help="documents kept if over budget")
  parser.add_argument("--reps", type=int, default=5)
  parser.add_argument("--cache", type=Path, default=Path("/tmp/edistill_scann_bench"))
  parser.add_argument("--json", type=Path, default=None, help="also write the results here")
  args = parser.parse_args()

  t0 = time.perf_counter()
  corpus = read_jsonl(args.data / "corpus.jsonl")
  all_queries = read_jsonl(args.data / "queries.jsonl")
  doc_ids = list(corpus)
  q_ids = query_ids(args.data, args.queries)
  print(f"corpus {len(doc_ids)} docs, {len(q_ids)} queries (read in {time.perf_counter() - t0:.1f}s)", flush=True)

  embed = Embedder(args.model, args.layers, args.max_length, args.batch)
  key = hashlib.sha256(json.dumps([str(args.data.resolve()), len(doc_ids), doc_ids[0], doc_ids[-1], args.model,
                                   args.layers, args.max_length]).encode()).hexdigest()[:12]
  doc_path = args.cache / f"docs-{key}.npy"
  rows = np.arange(len(doc_ids))
  subset_path = args.cache / f"docs-{key}-subset{args.subset}.npy"
  rate = None
  if not doc_path.is_file() and not subset_path.is_file():
    probe = np.random.default_rng(1).choice(len(doc_ids), min(2000, len(doc_ids)), replace=False)
    texts = [corpus[doc_ids[i]] for i in probe]
    embed(texts[:args.batch])  # Compile the common buckets outside the timed probe.
    start = time.perf_counter()
    embed(texts)
    rate = len(texts) / (time.perf_counter() - start)
    eta = len(doc_ids) / rate / 60
    print(f"encoder: {rate:.0f} docs/s on 2k docs -> {eta:.1f} min for the full corpus", flush=True)
    use_subset = eta > args.budget_min
  else:
    use_subset = not doc_path.is_file()
  if use_subset:
    rows = np.sort(np.random.default_rng(0).choice(len(doc_ids), args.subset, replace=False))
    print(f"over budget: using a random {args.subset}-doc subset (seed 0)", flush=True)
  start = time.perf_counter()
  docs = cached(subset_path if use_subset else doc_path, lambda: embed([corpus[doc_ids[i]] for i in rows]))
  queries = cached(args.cache / f"queries-{key}-{len(q_ids)}.npy", lambda: embed([all_queries[q] for q in q_ids]))
  print(f"embeddings {docs.shape} + {queries.shape} in {time.perf_counter() - start:.1f}s", flush=True)

  k = args.k
  n_q = len(queries)
  results = {"data": str(args.data), "docs": len(docs), "full_corpus": len(doc_ids), "subset": bool(use_subset),
             "queries": n_q, "dim": docs.shape[1], "k": k, "encoder": f"{args.model} first {args.layers} layers, "
             f"max length {args.max_length}", "encoder_docs_per_s": rate, "jax": jax.__version__,
             "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()}

  exact_i, _ = index_lib.exact_search(queries, docs, k)
  t = median_time(lambda: index_lib.exact_search(queries, docs, k), args.reps)
  results["exact"] = {"qps": n_q / t, "seconds": t}
  print(f"exact: {n_q / t:.0f} q/s", flush=True)
  # Upper bound for any brute force here: the score matmul alone (NumPy/BLAS, no top-k, [Q, N] kept).
  t = median_time(lambda: queries @ docs.T, args.reps)
  results["matmul_only_qps"] = n_q / t
  print(f"matmul only (no top-k): {n_q / t:.0f} q/s", flush=True)

  config = index_lib.ScannConfig.for_corpus(len(docs), k)
  start = time.perf_counter()
  index = index_lib.build_scann(docs, config)
  build_s = time.perf_counter() - start
  results["scann_config"] = dataclasses.asdict(config)
  results["scann_build_s"] = build_s
  print(f"scann build {build_s:.1f}s: {config}", flush=True)

  settings = [("for_corpus", {})]
  if config.num_leaves:  # The recall/speed knob: share of leaves searched (no rebuild).
    shares = sorted({max(1, round(f * config.num_leaves)) for f in (0.025, 0.05, 0.1, 0.2)} - {config.num_leaves_to_search})
    settings += [(f"leaves_to_search={x}", {"leaves_to_search": x}) for x in shares]
  settings += [(f"reorder_k={4 * k}", {"reorder_k": 4 * k}), ("for_corpus, search_batched (no thread pool)",
                                                             {"parallel": False})]
  results["scann"] = []
  for name, kwargs in settings:
    idx, _ = index_lib.scann_search(index, queries, k, **kwargs)
    recall = index_lib.recall_against_exact(idx, exact_i, k)
    t = median_time(lambda: index_lib.scann_search(index, queries, k, **kwargs), args.reps)
    row = {"setting": name, "qps": n_q / t, "speedup": results["exact"]["seconds"] / t, f"recall@{k}": recall}
    results["scann"].append(row)
    print(f"scann {name}: {n_q / t:.0f} q/s ({row['speedup']:.1f}x exact), recall@{k} {recall:.4f}", flush=True)

  print(json.dumps(results, indent=2))
  if args.json:
    args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
  main()
