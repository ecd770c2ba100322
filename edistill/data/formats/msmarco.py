"""MS MARCO passage: collection.tsv, queries.*.tsv, TREC qrels, text and id triples."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Container, Iterator

from edistill.data.formats import reading, registry
from edistill.data.formats.reading import Report
from edistill.data.types import Document, Qrels

def iter_collection(path: str | os.PathLike, *, errors: str = "raise", report: Report | None = None,
                    check_duplicates: bool = True) -> Iterator[Document]:
  """Streams MS MARCO ``collection.tsv``: ``pid<TAB>passage text`` per line (8.8M lines).

  Split on tabs, never with the csv module: passages hold unbalanced quotes kept verbatim.
  """
  names = ("pid", "text")

  def build(policy: reading.Policy) -> Iterator[tuple[int, Document]]:
    docs = reading.records(path, lambda line: Document(*reading.columns(line, names)), policy)
    return reading.unique(docs, lambda d: d.doc_id, "pid", policy) if check_duplicates else docs

  return reading.stream(path, errors, report, build)


def read_queries(path: str | os.PathLike, *, errors: str = "raise",
                 report: Report | None = None) -> dict[str, str]:
  """MS MARCO ``queries.{train,dev,eval}*.tsv``: ``qid<TAB>query text`` per line -> {qid: text}."""
  names = ("qid", "text")

  def build(policy: reading.Policy) -> Iterator[tuple[int, list[str]]]:
    rows = reading.records(path, lambda line: reading.columns(line, names), policy)
    return reading.unique(rows, lambda r: r[0], "qid", policy)

  return dict(reading.collect(path, errors, report, build))


def trec_qrel(line: str) -> tuple[str, str, int]:
  # Tab-separated when there is a tab (so an empty id is seen as one), else any whitespace.
  parts = [p.strip() for p in line.split("\t")] if "\t" in line else line.split()
  names = ("qid", "iteration", "docid", "relevance")
  if len(parts) != 4:
    raise reading.Bad(f"expected 4 columns ({', '.join(names)}), found {len(parts)} in {reading.snippet(line)}.")
  for i in (0, 2):
    if not parts[i]:
      raise reading.Bad(f"empty {names[i]} in {reading.snippet(line)}.")
  return parts[0], parts[2], reading.relevance(parts[3], line)


def read_qrels(path: str | os.PathLike, *, errors: str = "raise", report: Report | None = None,
               doc_ids: Container[str] | None = None, query_ids: Container[str] | None = None) -> Qrels:
  """TREC qrels, as MS MARCO's ``qrels.*.tsv``: ``qid 0 pid relevance`` (tab or space separated).

  The second (iteration) column is ignored; a repeated (qid, pid) pair is a duplicate. With
  ``doc_ids`` / ``query_ids`` a pair naming an unknown id is a bad line (``file:line``).
  """
  def build(policy: reading.Policy) -> Iterator[tuple[int, tuple[str, str, int]]]:
    pairs = reading.unique(reading.records(path, trec_qrel, policy), lambda r: r[:2], "qrels pair", policy)
    return reading.known_ids(pairs, doc_ids, query_ids, policy)

  return reading.qrels_from(reading.collect(path, errors, report, build))


def iter_triples(path: str | os.PathLike, *, errors: str = "raise",
                 report: Report | None = None) -> Iterator[tuple[str, str, str]]:
  """Streams ``triples.train.small.tsv``: ``query<TAB>positive passage<TAB>negative passage`` (texts)."""
  names = ("query", "positive", "negative")

  def parse(line: str) -> tuple[str, str, str]:
    return tuple(reading.columns(line, names))

  return reading.stream(path, errors, report, lambda policy: reading.records(path, parse, policy))


def iter_id_triples(path: str | os.PathLike, *, errors: str = "raise",
                    report: Report | None = None) -> Iterator[tuple[str, str, str]]:
  """Streams id triples (``qidpidtriples.train.full*.tsv``): ``qid<TAB>positive pid<TAB>negative pid``."""
  names = ("qid", "positive pid", "negative pid")

  def parse(line: str) -> tuple[str, str, str]:
    return tuple(reading.columns(line, names, ids=(0, 1, 2)))

  return reading.stream(path, errors, report, lambda policy: reading.records(path, parse, policy))




def splits(root: Path, errors: str) -> dict:
  """The TFDS records of an MS MARCO directory: the collection, and train / dev query splits (the
  ``.small`` dev files where the full ones are absent)."""
  doc_ids, records = registry.corpus_records(root, "collection.tsv", iter_collection, errors)
  out = {"corpus": records}
  for split in ("train", "dev"):
    q_path = registry.first(root, f"queries.{split}.tsv", f"queries.{split}.small.tsv")
    r_path = registry.first(root, f"qrels.{split}.tsv", f"qrels.{split}.small.tsv")
    if q_path and r_path:
      queries = read_queries(q_path, errors=errors)
      qrels = read_qrels(r_path, errors=errors, doc_ids=doc_ids, query_ids=queries)
      out[f"queries_{split}"] = registry.query_records(queries, qrels)
  return out


registry.register(registry.Format(
    "msmarco", "collection.tsv, queries.train.tsv, qrels.train.tsv, queries.dev[.small].tsv, qrels.dev[.small].tsv",
    splits))
