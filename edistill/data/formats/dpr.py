"""DPR's Natural Questions files: biencoder-nq-*.json examples and the psgs_w100.tsv passages."""
from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Iterator, Mapping

from edistill.data.formats import reading, registry
from edistill.data.formats.reading import Report
from edistill.data.types import DataError, Document

@dataclasses.dataclass(frozen=True)
class Example:
  """One DPR retriever example (``biencoder-nq-*.json``, ``nq-{train,dev}.json``)."""

  question: str
  answers: tuple[str, ...]
  positives: tuple[Document, ...]
  negatives: tuple[Document, ...] = ()
  hard_negatives: tuple[Document, ...] = ()


_JSON_SPACE = re.compile(r"[ \t\n\r]*")


def _json_array(path: Path) -> Iterator[tuple[int, object]]:
  """(line where it starts, element) for each element of a file holding one JSON array.

  Decodes element by element with ``raw_decode`` (the same C scanner as ``json.load``) so an
  element's problems can name its line. Invalid JSON raises whatever the policy: there is no
  safe place to resume.
  """
  with reading.open_bytes(path) as f:
    data = f.read()
  try:
    text = data.decode("utf-8-sig")
  except UnicodeDecodeError as e:
    lineno = data.count(b"\n", 0, e.start) + 1
    raise DataError(f"{path}:{lineno}: not valid UTF-8 ({e.reason} at byte {e.start}).") from e
  del data
  line, pos = 1, 0

  def line_at(i: int) -> int:
    nonlocal line, pos
    line, pos = line + text.count("\n", pos, i), i
    return line

  decoder = json.JSONDecoder()
  i = _JSON_SPACE.match(text).end()
  if not text.startswith("[", i):
    raise DataError(f"{path}:{line_at(i)}: expected a JSON list of examples, "
                    f"found {reading.snippet(text[i:i + 20])}.")
  i = _JSON_SPACE.match(text, i + 1).end()
  closed = text.startswith("]", i)
  if closed:  # An empty list.
    i = _JSON_SPACE.match(text, i + 1).end()
  while not closed:
    try:
      element, end = decoder.raw_decode(text, i)
    except json.JSONDecodeError as e:
      raise DataError(f"{path}:{e.lineno}: invalid JSON ({e.msg} at column {e.colno}).") from None
    yield line_at(i), element
    i = _JSON_SPACE.match(text, end).end()
    closed = text.startswith("]", i)
    if not closed and not text.startswith(",", i):
      raise DataError(f"{path}:{line_at(i)}: invalid JSON (expected ',' or ']' between examples).")
    i = _JSON_SPACE.match(text, i + 1).end()
  if i < len(text):
    raise DataError(f"{path}:{line_at(i)}: invalid JSON (extra data after the list).")


def _ctx(ctx: object, where: str) -> Document:
  if not isinstance(ctx, dict):
    raise reading.Bad(f"{where}: expected a JSON object, found {type(ctx).__name__}.")
  if "passage_id" not in ctx and "psg_id" not in ctx:
    raise reading.Bad(f"{where}: missing required key 'passage_id' (or 'psg_id').")
  doc_id = reading.field(ctx, "passage_id" if "passage_id" in ctx else "psg_id", f"{where}: ", is_id=True)
  return Document(doc_id, reading.field(ctx, "text", f"{where}: "),
                  reading.field(ctx, "title", f"{where}: ", default=""))


def _ctxs(obj: Mapping, key: str, required: bool) -> tuple[Document, ...]:
  ctxs = obj.get(key)
  if ctxs is None and not required:
    return ()
  if ctxs is None:
    raise reading.Bad(f"missing required key {key!r}." if key not in obj else f"{key!r} is null.")
  if not isinstance(ctxs, list):
    raise reading.Bad(f"{key!r} must be a list, found {type(ctxs).__name__}.")
  return tuple(_ctx(c, f"{key}[{i}]") for i, c in enumerate(ctxs))


def _example(obj: object) -> Example:
  if not isinstance(obj, dict):
    raise reading.Bad(f"expected a JSON object, found {type(obj).__name__}.")
  answers = obj.get("answers")
  if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
    raise reading.Bad("missing required key 'answers'." if "answers" not in obj
               else "'answers' must be a list of strings.")
  return Example(reading.field(obj, "question"), tuple(answers), _ctxs(obj, "positive_ctxs", True),
                    _ctxs(obj, "negative_ctxs", False), _ctxs(obj, "hard_negative_ctxs", False))


def iter_examples(path: str | os.PathLike, *, errors: str = "raise",
                  report: Report | None = None) -> Iterator[Example]:
  """DPR retriever data (e.g. ``biencoder-nq-train.json``): one JSON list of examples.

  Each example is ``{"question", "answers", "positive_ctxs", "negative_ctxs", "hard_negative_ctxs"}``
  (the last two optional); a context is ``{"title", "text", "passage_id" or "psg_id", "score", ...}``.
  The whole file is read at once, as ``json.load`` would; errors name the line an example starts on.
  """
  path = Path(path)

  def build(policy: reading.Policy) -> Iterator[tuple[int, Example]]:
    policy.unit = "example"
    for lineno, element in _json_array(path):
      try:
        example = _example(element)
      except reading.Bad as e:
        policy.bad(str(e), lineno)
        continue
      yield lineno, example

  return reading.stream(path, errors, report, build)


def iter_passages(path: str | os.PathLike, *, errors: str = "raise", report: Report | None = None,
                  check_duplicates: bool = True) -> Iterator[Document]:
  """Streams DPR's Wikipedia ``psgs_w100.tsv``: header ``id<TAB>text<TAB>title``, then one passage a line.

  That file was written by Python's csv module, so a field may be quoted (``"a ""b"" c"``); quoted
  fields are unquoted here line by line (fields never span lines in it).
  """
  names = ("id", "text", "title")

  def passage(line: str) -> Document:
    doc_id, text, title = (_unquote(p) for p in reading.columns(line, names))
    return Document(doc_id, text, title)

  def build(policy: reading.Policy) -> Iterator[tuple[int, Document]]:
    docs = reading.records(path, passage, policy, header=names)
    return reading.unique(docs, lambda d: d.doc_id, "id", policy) if check_duplicates else docs

  return reading.stream(path, errors, report, build)


def _unquote(field: str) -> str:
  if len(field) >= 2 and field[0] == '"' and field[-1] == '"':
    return field[1:-1].replace('""', '"')
  return field




def splits(root: Path, errors: str) -> dict:
  """The TFDS records of a DPR NQ directory: the passages, and train / dev query splits whose hard
  negatives are the examples' ``hard_negative_ctxs``."""
  doc_ids, records = registry.corpus_records(root, "psgs_w100.tsv", iter_passages, errors)
  out = {"corpus": records}
  for split in ("train", "dev"):
    path = registry.first(root, f"biencoder-nq-{split}.json")
    if path is None:
      continue
    queries, qrels, hard = {}, {}, {}
    for i, ex in enumerate(iter_examples(path, errors=errors)):
      q = f"{split}-{i}"
      queries[q] = ex.question
      qrels[q] = {d.doc_id: 1 for d in ex.positives}
      hard[q] = [d.doc_id for d in ex.hard_negatives]
    qrels = reading.check_qrels(qrels, doc_ids, queries, path, errors=errors)  # Names the example's query id.
    out[f"queries_{split}"] = registry.query_records(queries, qrels, hard)
  return out


registry.register(registry.Format("dpr_nq", "psgs_w100.tsv, biencoder-nq-train.json, biencoder-nq-dev.json", splits))
