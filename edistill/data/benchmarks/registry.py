"""The offline benchmark registry: each benchmark module registers its ``Benchmark`` here."""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

from edistill.data.benchmarks import common


@dataclasses.dataclass(frozen=True)
class Benchmark:
  """name: the ``config.data.source`` value; pools: the default (= pool) test / dev sizes, the rest
  of the queries are train; collect(pos) -> (the whole collection, the options its manifest records)."""

  name: str
  pools: tuple[int, int]
  collect: Callable[[Sequence[str]], tuple[common.Collection, dict]]


BENCHMARKS: dict[str, Benchmark] = {}
# config.data.unlabeled_pool: a slice's own unlabeled train queries, or (WordNet -> GCIDE) every other
# WordNet gloss as well (wordnet_gcide.wordnet_gloss_pool; data/tfds_builders.unlabeled_queries).
UNLABELED_POOLS = ("slice", "wordnet_all")


def register(bench: Benchmark) -> Benchmark:
  if bench.name in BENCHMARKS:
    raise ValueError(f"offline benchmark {bench.name!r} is registered twice.")
  BENCHMARKS[bench.name] = bench
  return bench


def get(source: str) -> Benchmark:
  if source not in BENCHMARKS:
    raise ValueError(f"unknown source {source!r}; one of {tuple(BENCHMARKS)}.")
  return BENCHMARKS[source]
