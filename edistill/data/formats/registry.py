"""The format registry and what every format's ``splits`` builds its TFDS records with."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Iterable, Iterator

from edistill.data.types import DataError, Document, Qrels
from edistill.registry import Registry


@dataclasses.dataclass(frozen=True)
class Format:
  """name: the ``config.data.source`` value; files: what goes in the directory (for error messages);
  splits(root, errors) -> {"corpus": records, "queries_<split>": records, ...} (``doc_record`` /
  ``query_records`` build the records)."""

  name: str
  files: str
  splits: Callable[[Path, str], dict[str, Iterable[dict]]]


FORMATS = Registry("data format")
register = FORMATS.register



def doc_record(d: Document) -> dict:
  """A ``corpus`` record of the TFDS schema (data/tfds_builders.py)."""
  return {"id": d.doc_id, "title": d.title, "text": d.text, "relevant_ids": [], "relevant_scores": [],
          "hard_negative_ids": []}


def query_records(queries: dict[str, str], qrels: Qrels, hard: dict[str, list[str]] | None = None) -> Iterator[dict]:
  """The ``queries_<split>`` records of the split's judged queries, in id order."""
  for q in sorted(qrels):
    yield {"id": q, "title": "", "text": queries[q], "relevant_ids": list(qrels[q]),
           "relevant_scores": list(qrels[q].values()), "hard_negative_ids": (hard or {}).get(q, [])}


def first(root: Path, *names: str) -> Path | None:
  """The first of ``names`` present in ``root``, plain or gzipped."""
  return next((p for n in names for p in (root / n, root / f"{n}.gz") if p.is_file()), None)


def corpus_records(root: Path, name: str, reader, errors: str) -> tuple[set[str], Iterator[dict]]:
  """Validates the corpus file once (ids, duplicates) and returns its ids and a record stream."""
  path = first(root, name)
  if path is None:
    raise DataError(f"{root}: no {name}.")
  doc_ids = {d.doc_id for d in reader(path, errors=errors)}
  return doc_ids, (doc_record(d) for d in reader(path, errors=errors, check_duplicates=False))
