"""What every offline benchmark shares: the collection type, query splits, corpus sub-sampling
and fetching Debian packages (``apt-get download`` + ``dpkg-deb -x``, no root).

Splits (``benchmarks.write_collection``) are BY QUERY:
  * Queries are ordered by a seeded hash of their id. The first ``TEST_POOL`` (the default test
    size) form the test pool, the last ``DEV_POOL`` the dev pool, the rest train. ``n_test`` /
    ``n_dev`` take a prefix of a pool; unused pool queries are dropped, never moved to train, so
    with one seed no query is train in one build and test in another (e.g. 2k vs 10k docs).
  * ``corpus_size`` keeps a seeded subset that always holds every dev and test positive, filled
    with random distractors (``train_share`` of the free slots go to train positives first).
    Qrels rows pointing outside the subset are dropped; so are queries left with none.
  * Without explicit sizes, a subset of N documents gets ``min(pool, N // 20)`` test and
    ``min(pool, N // 40)`` dev queries, so about 11% of its documents are dev/test positives.
Same inputs and seed give byte-identical files; the manifest records the source package versions,
licences, options and (via ``formats.beir.write``) counts and sha256 of every file.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import subprocess
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from absl import logging

from edistill.cache import cache_root
from edistill.data.types import DataError, Document, Qrels

MIN_QUERY_WORDS = 4


class SourceError(RuntimeError):
  """A source could not be fetched or unpacked (a failed apt-get / dpkg-deb step)."""


@dataclasses.dataclass
class Collection:
  """A whole source before splitting: ordered documents, queries and their positives."""

  corpus: dict[str, Document]
  queries: dict[str, str]
  qrels: Qrels
  manifest: dict = dataclasses.field(default_factory=dict)


def cache_dir() -> Path:
  return cache_root() / "sources"


def words(text: str) -> str:
  return " ".join(text.split())


def rank(seed: int, kind: str, key: str) -> bytes:
  """Seeded, platform-independent sort key (no RNG whose stream could change between versions)."""
  return hashlib.blake2b(f"{seed}\0{kind}\0{key}".encode(), digest_size=16).digest()


def split_queries(query_ids: Iterable[str], seed: int, n_test: int, n_dev: int,
                  pools: tuple[int, int]) -> dict[str, list[str]]:
  """Query ids -> {"train", "dev", "test"} lists, each in seeded hash order (see module doc)."""
  order = sorted(query_ids, key=lambda q: rank(seed, "query", q))
  pool_test, pool_dev = max(n_test, pools[0]), max(n_dev, pools[1])
  if pool_test + pool_dev > len(order):
    raise DataError(f"{len(order)} queries cannot hold test pool {pool_test} + dev pool {pool_dev}.")
  return {"train": order[pool_test:len(order) - pool_dev], "dev": order[::-1][:n_dev],
          "test": order[:n_test]}


# Share of a subset's free slots given to train positives (the rest: random distractors), so a
# training run at N documents has labeled pairs to learn from; one value for the CLI and for main.
TRAIN_SHARE = 0.5


def subset_corpus(doc_ids: Sequence[str], qrels: Qrels, splits: Mapping[str, Sequence[str]],
                  size: int | None, seed: int, train_share: float = 0.0) -> set[str]:
  """Doc ids to keep: all dev/test positives, then train positives, then random distractors."""
  if size is None or size >= len(doc_ids):
    return set(doc_ids)
  keep = {d for s in ("dev", "test") for q in splits.get(s, ()) for d in qrels[q]}
  if len(keep) > size:
    raise DataError(f"corpus_size {size} < {len(keep)} dev+test positives; use fewer test/dev queries.")
  train_budget = len(keep) + int(train_share * (size - len(keep)))
  for q in splits.get("train", ()):  # Hash order; a query's positives go in together or not at all.
    new = set(qrels[q]) - keep
    if len(keep) + len(new) <= train_budget:
      keep |= new
  for d in sorted((d for d in doc_ids if d not in keep), key=lambda d: rank(seed, "doc", d)):
    if len(keep) >= size:
      break
    keep.add(d)
  return keep


def run(cmd: list[str], cwd: Path | None = None, hint: str = "") -> str:
  logging.info("Running %s", " ".join(cmd))
  try:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
  except FileNotFoundError as e:
    raise SourceError(f"`{cmd[0]}` not found; a Debian/Ubuntu system with apt and dpkg is needed.") from e
  if proc.returncode:
    raise SourceError(f"`{' '.join(cmd)}` failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}{hint}")
  return proc.stdout


def fetch_debs(packages: Sequence[str], root: Path) -> dict[str, tuple[Path, str]]:
  """Package names -> (extracted tree, version). Downloaded and unpacked once into ``root``."""
  out = {}
  for pkg in packages:
    target = root / pkg
    if not (target / ".complete").is_file():
      tmp = root / f"{pkg}.partial"
      shutil.rmtree(tmp, ignore_errors=True)
      tmp.mkdir(parents=True)
      run(["apt-get", "download", pkg], cwd=tmp,
           hint="\n(no package index? run `apt-get update`, or as a user point "
                "-o Dir::State::Lists at a private directory)")
      (deb,) = tmp.glob(f"{pkg}_*.deb")
      version = run(["dpkg-deb", "-f", str(deb), "Version"]).strip()
      run(["dpkg-deb", "-x", str(deb), str(tmp / "tree")])
      (tmp / "tree" / ".complete").write_text(json.dumps({"package": pkg, "version": version,
                                                          "deb": deb.name}) + "\n")
      shutil.rmtree(target, ignore_errors=True)
      (tmp / "tree").rename(target)
      shutil.rmtree(tmp, ignore_errors=True)
    out[pkg] = (target, json.loads((target / ".complete").read_text())["version"])
  return out


