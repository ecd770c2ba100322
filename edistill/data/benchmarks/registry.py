"""The offline benchmark registry: each benchmark module registers its ``Benchmark`` here."""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

from edistill.data.benchmarks import common
from edistill.registry import Registry


@dataclasses.dataclass(frozen=True)
class Benchmark:
  """name: the ``config.data.source`` value; pools: the default (= pool) test / dev sizes, the rest
  of the queries are train; collect(pos) -> (the whole collection, the options its manifest records)."""

  name: str
  pools: tuple[int, int]
  collect: Callable[[Sequence[str]], tuple[common.Collection, dict]]


BENCHMARKS = Registry("offline benchmark")
register = BENCHMARKS.register
get = BENCHMARKS.lookup
# config.data.unlabeled_pool: a slice's own unlabeled train queries, or (WordNet -> GCIDE) every other
# WordNet gloss as well (wordnet_gcide.wordnet_gloss_pool; data/tfds_builders.unlabeled_queries).
UNLABELED_POOLS = ("slice", "wordnet_all")




@dataclasses.dataclass(frozen=True)
class ExtraPool:
  """A named ``config.data.unlabeled_extra``: texts of ``source`` that no split uses, as unlabeled
  queries. build(corpus ids of the slice) -> {query id: text}, excluding texts of those documents."""

  name: str
  source: str
  build: Callable[[set[str]], dict[str, str]]


EXTRA_POOLS = Registry("extra unlabeled pool")
