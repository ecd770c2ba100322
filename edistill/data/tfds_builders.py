"""TFDS builders (manual_dir) for retrieval datasets: prepared once, then read with random access.

One schema for every format. Splits: ``corpus`` (one record per document) and ``queries_<split>``
(one record per query, carrying that split's qrels and any mined hard negatives):

  id                str
  title, text       str   (queries: empty title)
  relevant_ids      [str] (documents: empty)
  relevant_scores   [int32]
  hard_negative_ids [str]

Configs: ``beir`` (a BEIR directory, which is also what edistill's offline benchmark builders
write), ``msmarco`` (collection.tsv, queries.{train,dev}.tsv, qrels.{train,dev}.tsv; the ``.small``
dev files are used when the full ones are absent) and ``dpr_nq`` (psgs_w100.tsv and
biencoder-nq-{train,dev}.json). Files are written as array_record and read back with
``builder.as_data_source()``: TensorFlow is never imported, and training never touches the raw files.
"""
from __future__ import annotations

import contextlib
import io

import hashlib
import os
from pathlib import Path
from typing import Iterator

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from tqdm.auto import tqdm

from edistill.cache import cache_root
from edistill.data import benchmarks, formats, types
from edistill.data.benchmarks import wordnet_gcide
from edistill.data.formats import beir
from edistill.data.types import DataError

KINDS = tuple(formats.FORMATS)


class Retrieval(tfds.core.GeneratorBasedBuilder):
  """A retrieval dataset (corpus + queries with qrels) from files placed in the manual dir."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=k, description=f"{k} files in the manual dir") for k in KINDS]
  errors = "raise"  # Reader policy while preparing: "raise", or "warn" (skip bad lines, count them).
  MANUAL_DOWNLOAD_INSTRUCTIONS = "Place the dataset files in the manual dir:\n" + "\n".join(
      f"  {f.name + ':':<8} {f.files}" for f in formats.FORMATS.values())

  def _info(self) -> tfds.core.DatasetInfo:
    text = tfds.features.Text()
    return tfds.core.DatasetInfo(
        builder=self,
        description="Retrieval corpus and queries with relevance judgements (edistill schema).",
        features=tfds.features.FeaturesDict({
            "id": text, "title": text, "text": text,
            "relevant_ids": tfds.features.Sequence(text),
            "relevant_scores": tfds.features.Sequence(np.int32),
            "hard_negative_ids": tfds.features.Sequence(text)}))

  def _split_generators(self, dl_manager):
    root = Path(dl_manager.manual_dir)
    splits = formats.FORMATS[self.builder_config.name].splits(root, self.errors)
    if len(splits) < 2:
      raise DataError(f"{root}: found no query split for a {self.builder_config.name} dataset.\n"
                      f"{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    return {name: self._generate_examples(records) for name, records in splits.items()}

  def _generate_examples(self, records):
    for r in records:
      yield r["id"], r


def builder(kind: str, manual_dir: str | os.PathLike, data_dir: str | os.PathLike, errors: str = "raise") -> Retrieval:
  """The builder of ``kind`` over ``manual_dir``, prepared into ``data_dir`` if not yet there."""
  if kind not in KINDS:
    raise ValueError(f"unknown dataset kind {kind!r}; expected one of {KINDS}.")
  b = Retrieval(config=kind, data_dir=str(data_dir), file_format="array_record")
  b.errors = errors
  if not b.is_prepared():
    if not Path(manual_dir).is_dir() or not any(Path(manual_dir).iterdir()):
      raise DataError(f"{manual_dir}: missing or empty.\n{Retrieval.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    logging.info("Preparing %s from %s into %s", kind, manual_dir, data_dir)
    # TFDS prints "Downloading and preparing dataset Unknown size ..." to stdout; nothing is downloaded.
    with contextlib.redirect_stdout(io.StringIO()):
      b.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
    logging.info("Prepared %s into %s", kind, b.data_dir)
  return b


def _read_all(source, desc: str, chunk: int = 65536) -> Iterator[dict]:
  for start in tqdm(range(0, len(source), chunk), desc=desc, disable=len(source) < chunk):
    yield from source.__getitems__(range(start, min(start + chunk, len(source))))


def _str(x) -> str:
  return x.decode("utf-8") if isinstance(x, bytes) else str(x)


def load(b: Retrieval, split: str) -> types.RetrievalSet:
  """Reads the corpus and ``queries_<split>`` of a prepared builder."""
  sources = b.as_data_source()
  name = f"queries_{split}"
  if name not in sources:
    raise KeyError(f"split {split!r} not in {b.info.full_name}; available: "
                   f"{sorted(s[len('queries_'):] for s in sources if s.startswith('queries_'))}")
  doc_ids, doc_texts = [], []
  for r in _read_all(sources["corpus"], "read corpus"):
    doc_ids.append(_str(r["id"]))
    doc_texts.append(types.doc_text(_str(r["title"]), _str(r["text"])))
  query_ids, query_texts, qrels, hard = [], [], {}, {}
  for r in _read_all(sources[name], f"read {name}"):
    q = _str(r["id"])
    query_ids.append(q)
    query_texts.append(_str(r["text"]))
    qrels[q] = {_str(d): int(s) for d, s in zip(r["relevant_ids"], r["relevant_scores"])}
    if len(r["hard_negative_ids"]):
      hard[q] = [_str(d) for d in r["hard_negative_ids"]]
  return types.RetrievalSet(doc_ids, doc_texts, query_ids, query_texts, qrels, hard)


def files_key(path: str | os.PathLike, errors: str = "raise") -> str:
  """What a prepared copy of a user's directory is keyed by: its absolute path, ``errors`` (what a
  bad line does) and every file under it (relative name, size, mtime), so editing, adding or
  removing a file prepares a fresh copy instead of reading the old one (a stat per file, no reading)."""
  root = Path(path).absolute()
  files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else []
  stats = [(str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
  return hashlib.sha256(repr((str(root), errors, stats)).encode()).hexdigest()[:12]


def prepare(source: str, path: str = "", corpus_size: int = 0, seed: int = 0, errors: str = "raise",
            cache: str | os.PathLike | None = None, *, n_test: int = 0, n_dev: int = 0) -> Retrieval:
  """A prepared builder for a config's data section.

  ``source`` is an offline benchmark (``stdlib``, ``wordnet_gcide``, ``debian``: built once into the
  cache; ``n_test`` / ``n_dev`` > 0 set its split sizes, 0 keeps the source's default for the
  corpus size) or a raw format (``beir``, ``msmarco``, ``dpr_nq``) whose files are in ``path``.
  """
  root = Path(cache) if cache else cache_root()
  if source in benchmarks.BENCHMARKS:
    raw = _offline_dir(root, source, corpus_size, seed, n_test, n_dev)
    if not (raw / "manifest.json").is_file():
      _build_offline(source, raw, corpus_size, seed, n_test, n_dev)
    return builder("beir", raw, root / "tfds" / raw.name, errors)
  if source in KINDS:
    if not path:
      raise ValueError(f"config.data.path must name the {source} files' directory.")
    return builder(source, path, root / "tfds" / f"{source}-{files_key(path, errors)}", errors)
  raise ValueError(f"config.data.source={source!r}; expected one of {sorted((*benchmarks.BENCHMARKS, *KINDS))}.")


def prepare_config(data, seed: int, cache: str | os.PathLike | None = None) -> Retrieval:
  """``prepare`` for a config's ``data`` section."""
  return prepare(data.source, data.path, data.corpus_size, seed, data.errors, cache,
                 n_test=data.get("n_test", 0), n_dev=data.get("n_dev", 0))


def _offline_dir(root: Path, source: str, corpus_size: int, seed: int, n_test: int = 0, n_dev: int = 0) -> Path:
  sizes = f"-test{n_test or 'default'}-dev{n_dev or 'default'}" if n_test or n_dev else ""
  return root / "datasets" / f"{source}-{corpus_size or 'full'}-seed{seed}{sizes}"


def _prepared_dir(source: str, path: str, corpus_size: int, seed: int, errors: str, cache, n_test: int,
                  n_dev: int) -> Path:
  """An offline benchmark slice's raw BEIR directory, prepared (built and loaded into TFDS) if needed."""
  prepare(source, path, corpus_size, seed, errors, cache, n_test=n_test, n_dev=n_dev)
  return _offline_dir(Path(cache) if cache else cache_root(), source, corpus_size, seed, n_test, n_dev)


def _build_offline(source: str, raw: Path, corpus_size: int, seed: int, n_test: int = 0, n_dev: int = 0) -> None:
  benchmarks.build(source, raw, seed=seed, corpus_size=corpus_size or None,  # common.TRAIN_SHARE, as the CLI.
                   n_test=n_test or None, n_dev=n_dev or None)


def unlabeled_queries(source: str, path: str = "", corpus_size: int = 0, seed: int = 0, errors: str = "raise",
                      unlabeled_path: str = "", cache: str | os.PathLike | None = None,
                      pool: str = "slice", *, n_test: int = 0, n_dev: int = 0) -> dict[str, str]:
  """{query id: text} of unlabeled training queries, in file order.

  ``unlabeled_path`` names a queries file (BEIR ``.jsonl`` or MS MARCO ``.tsv``, optionally ``.gz``);
  without it an offline benchmark built with a ``corpus_size`` supplies the train queries whose
  relevant documents fell outside the subset (``unlabeled_queries.jsonl`` beside its queries), and
  for WordNet -> GCIDE ``pool="wordnet_all"`` adds every other WordNet gloss
  (``benchmarks.wordnet_gcide.wordnet_gloss_pool``; written once as ``unlabeled_wordnet_all.jsonl`` beside it).
  """
  if pool not in benchmarks.UNLABELED_POOLS:
    raise ValueError(f"config.data.unlabeled_pool={pool!r}; expected one of {benchmarks.UNLABELED_POOLS}.")
  if pool != "slice" and (unlabeled_path or source != "wordnet_gcide"):
    raise ValueError(f"config.data.unlabeled_pool={pool!r} needs data.source='wordnet_gcide' and no "
                     f"data.unlabeled_path (got source={source!r}, unlabeled_path={unlabeled_path!r}).")
  if not unlabeled_path:
    if source not in benchmarks.BENCHMARKS or not corpus_size:
      raise ValueError(f"config.data.unlabeled_path must name a queries file: data.source={source!r} with "
                       f"corpus_size={corpus_size} has no built-in unlabeled queries.")
    raw = _prepared_dir(source, path, corpus_size, seed, errors, cache, n_test, n_dev)
    unlabeled_path = raw / "unlabeled_queries.jsonl"
    if not unlabeled_path.is_file():  # Built by an older edistill: rebuild (deterministic, same files).
      _build_offline(source, raw, corpus_size, seed, n_test, n_dev)
    if pool == "wordnet_all":
      own, unlabeled_path = unlabeled_path, raw / "unlabeled_wordnet_all.jsonl"
      if not unlabeled_path.is_file():
        beir.write_queries(unlabeled_path, {**beir.read_queries(own, errors=errors),
                                            **wordnet_gcide.wordnet_gloss_pool()})
  reader = formats.queries_reader(unlabeled_path)
  if reader is None:
    raise ValueError(f"config.data.unlabeled_path={str(unlabeled_path)!r}: expected a .jsonl (BEIR) or .tsv "
                     f"(MS MARCO) queries file.")
  return reader(unlabeled_path, errors=errors)


def extra_unlabeled_queries(source: str, extra: str, path: str = "", corpus_size: int = 0, seed: int = 0,
                            errors: str = "raise", cache: str | os.PathLike | None = None, *, n_test: int = 0,
                            n_dev: int = 0) -> dict[str, str]:
  """{query id: text} of ``config.data.unlabeled_extra``: a queries file (BEIR ``.jsonl`` or MS MARCO
  ``.tsv``), or a named pool of the offline benchmark (``benchmarks.EXTRA_POOLS``, e.g.
  ``gcide_definitions``), built once from texts outside the slice's corpus and written as
  ``unlabeled_<name>.jsonl`` beside the slice."""
  if extra in benchmarks.EXTRA_POOLS:
    pool = benchmarks.EXTRA_POOLS[extra]
    if pool.source != source or not corpus_size:
      raise ValueError(f"config.data.unlabeled_extra={extra!r} is a pool of data.source={pool.source!r} slices "
                       f"(data.corpus_size > 0); got source={source!r}, corpus_size={corpus_size}.")
    raw = _prepared_dir(source, path, corpus_size, seed, errors, cache, n_test, n_dev)
    out = raw / f"unlabeled_{extra}.jsonl"
    if not out.is_file():
      corpus = {d.doc_id for d in beir.iter_corpus(raw / "corpus.jsonl", errors=errors)}
      beir.write_queries(out, pool.build(corpus))
    return beir.read_queries(out, errors=errors)
  reader = formats.queries_reader(extra)
  if reader is None:
    raise ValueError(f"config.data.unlabeled_extra={extra!r}: expected a .jsonl (BEIR) or .tsv (MS MARCO) queries "
                     f"file, or one of the pools {tuple(benchmarks.EXTRA_POOLS)}.")
  if not Path(extra).is_file():
    raise FileNotFoundError(f"config.data.unlabeled_extra={extra!r}: no such file.")
  return reader(extra, errors=errors)
