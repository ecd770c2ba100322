"""Offline benchmarks: real retrieval data made from local or Debian-packaged text, in a registry.

Benchmarks (recipes, sizes and difficulty: ``shared/DATA.md``):
  ``stdlib``         Python stdlib docstring -> function source. Needs nothing; the CI fixture.
  ``wordnet_gcide``  WordNet 3.0 gloss -> GCIDE (1913 Webster) entry of the same headword. The main,
                     hard benchmark; ``apt-get download wordnet-base dict-gcide`` + ``dpkg-deb -x``.
  ``debian``         Debian package synopsis -> long description (English translation index, fetched
                     by ``apt-get update`` into a private lists directory). Easy.
No step needs root. Downloads are cached under the cache root's ``sources/``.

Each module builds its whole ``common.Collection`` and registers a ``registry.Benchmark``; ``build`` /
``write_collection`` split it by query, sub-sample the corpus and write a BEIR directory with a
manifest (``common``'s docstring has the rules). A new benchmark is one new module that calls
``registry.register`` plus its import below.

CLI: ``python -m edistill.data.benchmarks --source wordnet_gcide --out DIR [--corpus_size N] [--seed S]``
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

from edistill.data.benchmarks import common
from edistill.data.benchmarks.registry import (  # noqa: F401
    BENCHMARKS, EXTRA_POOLS, UNLABELED_POOLS, Benchmark, ExtraPool, get, register)
from edistill.data.formats import beir


def default_split_sizes(source: str, corpus_size: int | None) -> tuple[int, int]:
  test, dev = get(source).pools
  if corpus_size is None:
    return test, dev
  return min(test, corpus_size // 20), min(dev, corpus_size // 40)


def write_collection(col: common.Collection, out_dir: str | os.PathLike, source: str, *, seed: int = 0,
                     corpus_size: int | None = None, n_test: int | None = None, n_dev: int | None = None,
                     train_share: float = 0.0, options: Mapping | None = None) -> Path:
  """Splits by query, sub-samples the corpus and writes the BEIR directory + manifest."""
  pools = get(source).pools
  d_test, d_dev = default_split_sizes(source, corpus_size)
  n_test, n_dev = d_test if n_test is None else n_test, d_dev if n_dev is None else n_dev
  splits = common.split_queries(col.queries, seed, n_test, n_dev, pools)
  keep = common.subset_corpus(list(col.corpus), col.qrels, splits, corpus_size, seed, train_share)
  qrels = {}
  for split in ("train", "dev", "test"):
    rows = {q: {d: r for d, r in col.qrels[q].items() if d in keep} for q in splits[split]}
    qrels[split] = {q: ds for q, ds in rows.items() if ds}
  used = {q for s in qrels.values() for q in s}
  # Train queries whose positives fell outside the subset: real, in-distribution queries for the
  # label-free losses (query embedding matching, score distillation against in-batch documents).
  unlabeled = {q: col.queries[q] for q in splits["train"] if q not in used} if corpus_size else None
  manifest = {
      **col.manifest, "source": source, "builder": "edistill.data.benchmarks",
      "options": {**(options or {}), "seed": seed, "corpus_size": corpus_size, "n_test": n_test,
                  "n_dev": n_dev, "train_share": train_share, "pools": list(pools)},
      "full_counts": {"documents": len(col.corpus), "queries": len(col.queries),
                      "pairs": sum(len(v) for v in col.qrels.values())},
  }
  return beir.write(out_dir, (doc for d, doc in col.corpus.items() if d in keep),
                    {q: t for q, t in col.queries.items() if q in used}, qrels, manifest, unlabeled)


def build(source: str, out_dir: str | os.PathLike, *, seed: int = 0, corpus_size: int | None = None,
          n_test: int | None = None, n_dev: int | None = None, train_share: float | None = None,
          pos: Sequence[str] = ("noun",)) -> Path:
  """Builds ``source`` into ``out_dir`` (BEIR + manifest.json); returns the directory.

  ``train_share`` None: ``common.TRAIN_SHARE``, the share ``edistill.main`` builds its subsets with,
  so the CLI and training make the same benchmark from the same arguments."""
  if train_share is None:
    train_share = common.TRAIN_SHARE if corpus_size else 0.0
  col, opts = get(source).collect(pos)
  return write_collection(col, out_dir, source, seed=seed, corpus_size=corpus_size, n_test=n_test,
                          n_dev=n_dev, train_share=train_share, options=opts)


# The built-in benchmarks register themselves (this order is BENCHMARKS's order).
from edistill.data.benchmarks import stdlib, wordnet_gcide, debian  # noqa: E402,F401,I001
