"""BEIR: a directory with corpus.jsonl, queries.jsonl and qrels/<split>.tsv (also edistill's own
on-disk format, with a manifest.json: the offline benchmark builders write it)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Container, Iterable, Iterator, Mapping

from edistill import cache
from edistill.data.formats import reading, registry
from edistill.data.formats.reading import Report
from edistill.data.types import DataError, Document, Qrels

def write_queries(path: str | os.PathLike, queries: Mapping[str, str]) -> None:
  """A BEIR ``queries.jsonl`` (``{"_id", "text"}`` per line), written atomically."""
  cache.write_lines_atomic(Path(path), (json.dumps({"_id": q, "text": t}, ensure_ascii=False)
                                        for q, t in queries.items()))


def write(out_dir: str | os.PathLike, corpus: Iterable[Document], queries: Mapping[str, str],
          qrels: Mapping[str, Qrels], manifest: Mapping | None = None,
          unlabeled: Mapping[str, str] | None = None) -> Path:
  """Writes a BEIR-format dataset directory and its ``manifest.json``.

  ``qrels`` maps a split name ("train", "dev", "test") to that split's qrels. The manifest gets
  ``counts`` and the ``sha256`` of every file written, on top of the given fields (sources,
  versions, options), so a result can name exactly the data it was computed on. ``unlabeled``
  training queries (no relevant document in this corpus) go to ``unlabeled_queries.jsonl``, in
  the format of ``queries.jsonl``.
  """
  out = Path(out_dir)
  docs = list(corpus)
  # Ids go into TSV qrels unescaped: a tab or newline in one would corrupt the file silently.
  for kind, ids in (("document", (d.doc_id for d in docs)), ("query", [*queries, *(unlabeled or ())])):
    bad = next((i for i in ids if not i or any(c in i for c in "\t\n\r")), None)
    if bad is not None:
      raise DataError(f"{out}: {kind} id {bad!r} is empty or contains a tab/newline.")
  cache.write_lines_atomic(out / "corpus.jsonl", (json.dumps({"_id": d.doc_id, "title": d.title, "text": d.text},
                                                        ensure_ascii=False) for d in docs))
  write_queries(out / "queries.jsonl", queries)
  for split, split_qrels in qrels.items():
    rows = (f"{q}\t{d}\t{r}" for q, ds in split_qrels.items() for d, r in ds.items())
    cache.write_lines_atomic(out / "qrels" / f"{split}.tsv", ["query-id\tcorpus-id\tscore", *rows])
  files = ["corpus.jsonl", "queries.jsonl", *(f"qrels/{s}.tsv" for s in qrels)]
  if unlabeled is not None:
    write_queries(out / "unlabeled_queries.jsonl", unlabeled)
    files.append("unlabeled_queries.jsonl")
  full = {
      **(manifest or {}),
      "format": "beir",
      "counts": {"documents": len(docs), "queries": len(queries),
                 **({"unlabeled_queries": len(unlabeled)} if unlabeled is not None else {}),
                 **{f"{s}_queries": len(v) for s, v in qrels.items()},
                 **{f"{s}_pairs": sum(len(x) for x in v.values()) for s, v in qrels.items()}},
      "sha256": {f: cache.file_sha256(out / f) for f in files},
  }
  cache.write_lines_atomic(out / "manifest.json", [json.dumps(full, indent=2, sort_keys=True)])
  return out



QRELS_HEADER = ("query-id", "corpus-id", "score")


def _doc(line: str) -> Document:
  obj = reading.json_line(line)
  return Document(reading.field(obj, "_id", is_id=True), reading.field(obj, "text"),
                  reading.field(obj, "title", default=""))


def _query(line: str) -> tuple[str, str]:
  obj = reading.json_line(line)
  return reading.field(obj, "_id", is_id=True), reading.field(obj, "text")


def iter_corpus(path: str | os.PathLike, *, errors: str = "raise", report: Report | None = None,
                check_duplicates: bool = True) -> Iterator[Document]:
  """Streams BEIR ``corpus.jsonl``: one ``{"_id", "title", "text"}`` object a line (title optional)."""
  def build(policy: reading.Policy) -> Iterator[tuple[int, Document]]:
    docs = reading.records(path, _doc, policy, separator=None)
    return reading.unique(docs, lambda d: d.doc_id, "_id", policy) if check_duplicates else docs

  return reading.stream(path, errors, report, build)


def read_queries(path: str | os.PathLike, *, errors: str = "raise",
                 report: Report | None = None) -> dict[str, str]:
  """BEIR ``queries.jsonl``: one ``{"_id", "text"}`` object a line -> {query id: text}."""
  def build(policy: reading.Policy) -> Iterator[tuple[int, tuple[str, str]]]:
    return reading.unique(reading.records(path, _query, policy, separator=None), lambda r: r[0], "_id", policy)

  return dict(reading.collect(path, errors, report, build))


def _qrel(line: str) -> tuple[str, str, int]:
  q, d, score = reading.columns(line, QRELS_HEADER, ids=(0, 1))
  return q, d, reading.relevance(score, line)


def read_qrels(path: str | os.PathLike, *, errors: str = "raise", report: Report | None = None,
               doc_ids: Container[str] | None = None, query_ids: Container[str] | None = None) -> Qrels:
  """BEIR ``qrels/{split}.tsv``: the header ``query-id<TAB>corpus-id<TAB>score``, then one pair a line.

  With ``doc_ids`` / ``query_ids`` a pair naming an unknown id is a bad line (``file:line``)."""
  def build(policy: reading.Policy) -> Iterator[tuple[int, tuple[str, str, int]]]:
    rows = reading.records(path, _qrel, policy, header=QRELS_HEADER)
    return reading.known_ids(reading.unique(rows, lambda r: r[:2], "qrels pair", policy), doc_ids, query_ids, policy)

  return reading.qrels_from(reading.collect(path, errors, report, build))


def read_dataset(data_dir: str | os.PathLike, split: str = "test", *, errors: str = "raise",
                 report: Report | None = None,
                 check: bool = True) -> tuple[dict[str, Document], dict[str, str], Qrels]:
  """A BEIR dataset directory (as ``write`` writes it) -> (corpus, queries, qrels of ``split``).

  ``queries`` holds every query in ``queries.jsonl``, not only the split's. With ``check`` the qrels
  are checked against the corpus and queries as they are read (same ``errors`` policy; errors name
  the qrels file's line).
  """
  data_dir = Path(data_dir)
  corpus_path = reading.existing(data_dir / "corpus.jsonl")
  corpus = {d.doc_id: d for d in iter_corpus(corpus_path, errors=errors, report=report)}
  queries = read_queries(reading.existing(data_dir / "queries.jsonl"), errors=errors, report=report)
  qrels_path = reading.existing(data_dir / "qrels" / f"{split}.tsv")
  known = (corpus, queries) if check else (None, None)
  qrels = read_qrels(qrels_path, errors=errors, report=report, doc_ids=known[0], query_ids=known[1])
  return corpus, queries, qrels




def splits(root: Path, errors: str) -> dict:
  """The TFDS records of a BEIR directory: its corpus and one query split per ``qrels/<split>.tsv``."""
  doc_ids, records = registry.corpus_records(root, "corpus.jsonl", iter_corpus, errors)
  queries = read_queries(registry.first(root, "queries.jsonl") or root / "queries.jsonl", errors=errors)
  out = {"corpus": records}
  for path in sorted((root / "qrels").glob("*.tsv*")):
    split = path.name.split(".")[0]
    qrels = read_qrels(path, errors=errors, doc_ids=doc_ids, query_ids=queries)
    out[f"queries_{split}"] = registry.query_records(queries, qrels)
  return out


registry.register(registry.Format("beir", "corpus.jsonl, queries.jsonl, qrels/<split>.tsv", splits))
