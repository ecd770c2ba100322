"""The in-memory retrieval data every layer shares.

  corpus   ``dict[str, Document]`` (or an iterator of Documents when streaming)
  queries  ``dict[str, str]``           query id -> text
  qrels    ``dict[str, dict[str, int]]`` query id -> {doc id: graded relevance}
"""
from __future__ import annotations

import dataclasses

Qrels = dict[str, dict[str, int]]


class DataError(ValueError):
  """Malformed or inconsistent input; the message names the file and line (or id)."""


@dataclasses.dataclass(frozen=True)
class Document:
  doc_id: str
  text: str
  title: str = ""


@dataclasses.dataclass
class RetrievalSet:
  """What training/evaluation reads: documents, one split's queries and qrels, as plain Python."""

  doc_ids: list[str]
  doc_texts: list[str]
  query_ids: list[str]
  query_texts: list[str]
  qrels: Qrels
  hard_negatives: dict[str, list[str]]


def doc_text(title: str, text: str) -> str:
  """The text a document is encoded from: BEIR's convention, title then body."""
  return f"{title} {text}" if title else text
