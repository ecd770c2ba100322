"""The offline benchmarks' CLI (an entry point: it may import any layer, the BM25 check needs eval).

    python -m edistill.data.benchmarks --source wordnet_gcide --out DIR [--corpus-size N] [--seed S] [--bm25]
"""
from __future__ import annotations

import json
import os
from typing import Sequence

from absl import logging

from edistill.data import benchmarks
from edistill.data.benchmarks import common
from edistill.data.formats import beir
from edistill.data.types import RetrievalSet, doc_text


def bm25_mrr(dataset_dir: str | os.PathLike, split: str = "test", k: int = 10,
             max_queries: int | None = None) -> dict[str, float]:
  """BM25 difficulty check of a built dataset: ``mrr@k``, ``recall@k`` and ``queries``.

  Runs the project's BM25 evaluation (``edistill.eval.evaluator.bm25``: bm25s, Lucene scoring,
  English stopwords, tokens split at underscores) on the split's queries that have a relevant
  document; ``max_queries`` takes the first of them in qrels-file order (seeded hash order).
  """
  from edistill.eval import evaluator  # Heavy imports, --bm25 only.

  corpus, queries, qrels = beir.read_dataset(dataset_dir, split)
  qids = [q for q, ds in qrels.items() if any(r > 0 for r in ds.values())][:max_queries]
  data = RetrievalSet(doc_ids=list(corpus), doc_texts=[doc_text(d.title, d.text) for d in corpus.values()],
                      query_ids=qids, query_texts=[queries[q] for q in qids], qrels={q: qrels[q] for q in qids},
                      hard_negatives={})
  out = evaluator.bm25(data, k, metrics=(f"mrr@{k}", f"recall@{k}"))
  return {f"mrr@{k}": out[f"mrr@{k}"], f"recall@{k}": out[f"recall@{k}"], "queries": int(out["num_queries"])}


def main(argv: Sequence[str] | None = None) -> None:
  import argparse

  parser = argparse.ArgumentParser(prog="python -m edistill.data.benchmarks",
                                   description=benchmarks.__doc__.split("\n")[0])
  parser.add_argument("--source", required=True, choices=tuple(benchmarks.BENCHMARKS))
  parser.add_argument("--out", required=True, help="output directory (BEIR format + manifest.json)")
  parser.add_argument("--corpus-size", "--corpus_size", type=int, default=None,
                      help="keep this many documents (all dev/test positives + random distractors)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--n-test", "--n_test", type=int, default=None)
  parser.add_argument("--n-dev", "--n_dev", type=int, default=None)
  parser.add_argument("--train-share", "--train_share", type=float, default=None,
                      help="share of the free subset slots given to train positives before distractors "
                           f"(default {common.TRAIN_SHARE}, as edistill.main builds it)")
  parser.add_argument("--pos", default="noun", help="wordnet_gcide: comma-separated of noun,verb,adj,adv")
  parser.add_argument("--bm25", action="store_true", help="also print BM25 MRR@10 / R@10 on test")
  args = parser.parse_args(argv)
  logging.set_verbosity(logging.INFO)
  out = benchmarks.build(args.source, args.out, seed=args.seed, corpus_size=args.corpus_size, n_test=args.n_test,
              n_dev=args.n_dev, train_share=args.train_share, pos=tuple(args.pos.split(",")))
  manifest = json.loads((out / "manifest.json").read_text())
  print(json.dumps({"out": str(out), "counts": manifest["counts"], "full_counts": manifest["full_counts"]},
                   indent=2))
  if args.bm25:
    print(json.dumps(bm25_mrr(out), indent=2))


if __name__ == "__main__":
  main()
