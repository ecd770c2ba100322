"""Retrieval data formats: the common in-memory model, and readers/writers with validation.

edistill's own on-disk format is BEIR's (a dataset directory with ``corpus.jsonl``,
``queries.jsonl`` and ``qrels/{split}.tsv``) plus a ``manifest.json``; the offline benchmark
builders write it and the BEIR reader reads it. Readers also cover MS MARCO passage (collection,
queries, TREC qrels, text and id triples) and DPR's Natural Questions files (examples, psgs_w100).
Large files stream as generators; every reader validates, gunzips ``*.gz``, and names file:line.

In memory:
  corpus   ``dict[str, Document]`` (or an iterator of Documents when streaming)
  queries  ``dict[str, str]``           query id -> text
  qrels    ``dict[str, dict[str, int]]`` query id -> {doc id: graded relevance}
"""
from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import json
import os
import re
import zlib
from pathlib import Path
from typing import IO, Callable, Container, Hashable, Iterable, Iterator, Mapping, TypeVar

from absl import logging
from tqdm.auto import tqdm

Qrels = dict[str, dict[str, int]]
T = TypeVar("T")


class DataError(ValueError):
  """Malformed or inconsistent input; the message names the file and line (or id)."""


@dataclasses.dataclass(frozen=True)
class Document:
  doc_id: str
  text: str
  title: str = ""


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
  """Yields a temporary sibling of ``path`` to write; on success renames it onto ``path``.

  The rename is atomic, so readers see the old file or the whole new one, never a part. The name
  carries the process id, so concurrent writers (runs sharing a cache) never write the same
  temporary file, and it keeps ``path``'s suffix (``np.savez`` appends ``.npz`` otherwise). On an
  error the temporary file is removed and ``path`` is left as it was.
  """
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp{path.suffix}")
  try:
    yield tmp
    os.replace(tmp, path)
  finally:
    tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
  """Writes ``text`` to ``path`` whole or not at all: locally through ``atomic_file``; an object
  store (``gs://...``) replaces an object whole on its own."""
  if "://" in str(path):
    from etils import epath
    epath.Path(path).write_text(text)
    return
  with atomic_file(path) as tmp:
    tmp.write_text(text, encoding="utf-8")


def _atomic_write_lines(path: Path, lines: Iterable[str]) -> None:
  with atomic_file(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
    for line in lines:
      f.write(line)
      f.write("\n")


def content_key(**fields) -> str:
  """The one naming scheme of every content-keyed cache (embedding tables, CE scores, generated
  queries): sha256 of the fields as sorted JSON (other values by ``str``), 20 hex digits."""
  return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:20]


def texts_fingerprint(texts: Iterable[str]) -> str:
  """Hex sha256 of the texts in order (NUL-separated): a ``content_key`` field for a list of texts."""
  h = hashlib.sha256()
  for t in texts:
    h.update(t.encode())
    h.update(b"\0")
  return h.hexdigest()


def file_sha256(path: str | os.PathLike, desc: str | None = None) -> str:
  """Hex sha256 of a file's bytes, read in 4 MiB chunks; ``desc`` shows a progress bar (big files)."""
  h = hashlib.sha256()
  with open(path, "rb") as f, tqdm(total=os.path.getsize(path), unit="B", unit_scale=True, desc=desc,
                                   disable=desc is None) as bar:
    for chunk in iter(lambda: f.read(1 << 22), b""):
      h.update(chunk)
      bar.update(len(chunk))
  return h.hexdigest()


def write_queries(path: str | os.PathLike, queries: Mapping[str, str]) -> None:
  """A BEIR ``queries.jsonl`` (``{"_id", "text"}`` per line), written atomically."""
  _atomic_write_lines(Path(path), (json.dumps({"_id": q, "text": t}, ensure_ascii=False) for q, t in queries.items()))


def write_beir(out_dir: str | os.PathLike, corpus: Iterable[Document], queries: Mapping[str, str],
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
  _atomic_write_lines(out / "corpus.jsonl", (json.dumps({"_id": d.doc_id, "title": d.title, "text": d.text},
                                                        ensure_ascii=False) for d in docs))
  write_queries(out / "queries.jsonl", queries)
  for split, split_qrels in qrels.items():
    rows = (f"{q}\t{d}\t{r}" for q, ds in split_qrels.items() for d, r in ds.items())
    _atomic_write_lines(out / "qrels" / f"{split}.tsv", ["query-id\tcorpus-id\tscore", *rows])
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
      "sha256": {f: file_sha256(out / f) for f in files},
  }
  _atomic_write_lines(out / "manifest.json", [json.dumps(full, indent=2, sort_keys=True)])
  return out


# --------------------------------------------------------------------------------- reading
# Every reader takes ``errors="raise"`` (the first bad line raises DataError) or ``errors="warn"``
# (bad lines are skipped and counted, and one summary warning per file is logged at the end).
# Messages start with "{path}:{line}: " (1-based). Paths ending in ".gz" are gunzipped on the fly.
# Blank lines are ignored: trailing empty lines are common and carry no record.

_ERRORS = ("raise", "warn")
_QUOTED = 3  # Offending lines quoted in a summary warning.


@dataclasses.dataclass
class Report:
  """What readers skipped under ``errors="warn"``; pass one in (it may be shared) to get the counts.

  ``messages`` keeps the first ``max_messages`` messages in full; ``skipped`` counts them all.
  """

  skipped: int = 0
  messages: list[str] = dataclasses.field(default_factory=list)
  max_messages: int = 100

  def add(self, message: str) -> None:
    self.skipped += 1
    if len(self.messages) < self.max_messages:
      self.messages.append(message)


class _Bad(Exception):
  """One record is malformed; the policy turns it into a DataError or a skip."""


class _Policy:
  """Applies ``errors=`` to one source's bad records and logs one summary for it."""

  def __init__(self, source: str | os.PathLike, errors: str, report: Report | None, unit: str = "line"):
    if errors not in _ERRORS:
      raise ValueError(f"errors must be one of {_ERRORS}, got {errors!r}.")
    self.source, self.errors, self.report, self.unit = str(source), errors, report, unit
    self.skipped, self.first = 0, []

  def bad(self, message: str, lineno: int | None = None) -> None:
    full = f"{self.source}:{lineno}: {message}" if lineno is not None else f"{self.source}: {message}"
    if self.errors == "raise":
      raise DataError(full)
    self.skipped += 1
    if len(self.first) < _QUOTED:
      self.first.append(full)
    if self.report is not None:
      self.report.add(full)

  def summarize(self) -> None:
    if self.skipped:
      logging.warning("%s: skipped %d bad %s(s) (errors='warn'); first: %s", self.source, self.skipped,
                      self.unit, " | ".join(self.first))


def _snippet(line: str, width: int = 60) -> str:
  return f"{line[:width]!r}{'...' if len(line) > width else ''}"


def _open_bytes(path: Path) -> IO[bytes]:
  return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _lines(path: Path, policy: _Policy, separator: str | None = None) -> Iterator[tuple[int, str]]:
  """(1-based line number, text) of each non-blank line of a UTF-8 file, ``.gz`` or not.

  Blank means whitespace only and no ``separator``: a TSV line of bare tabs is a record with empty
  columns (the parser judges it), not a blank line to skip.

  Reads bytes and splits on "\\n" only: passages may hold a stray "\\r", which text mode would take
  for a line end. Strips just the newline (and a "\\r" before it, for CRLF files) and a leading BOM.
  Undecodable lines go to the policy; a truncated ``.gz`` raises naming the file and line.
  """
  lineno = 0
  try:
    with _open_bytes(path) as f:
      for lineno, raw in enumerate(f, 1):
        raw = raw[:-1] if raw.endswith(b"\n") else raw
        raw = raw[:-1] if raw.endswith(b"\r") else raw
        try:
          line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
        except UnicodeDecodeError as e:
          policy.bad(f"not valid UTF-8 ({e.reason} at byte {e.start}).", lineno)
          continue
        if line and (not line.isspace() or (separator is not None and separator in line)):
          yield lineno, line
  except (OSError, EOFError, zlib.error) as e:  # Truncated or corrupt gzip: name the file.
    raise DataError(f"{path}:{lineno + 1}: cannot read ({e}).") from e


def _records(path: str | os.PathLike, parse: Callable[[str], T], policy: _Policy,
             header: tuple[str, ...] | None = None, separator: str | None = "\t") -> Iterator[tuple[int, T]]:
  """(line number, ``parse(line)``) for each good line; bad ones (parse raises _Bad) go to the policy.

  With ``header``, the first line must be exactly those tab-separated names and is not parsed.
  ``separator``: the column separator (see ``_lines``; None for JSON lines).
  """
  path = Path(path)
  for lineno, line in _lines(path, policy, separator):
    if header is not None:
      if tuple(line.split("\t")) != header:
        policy.bad(f"expected the header {'<TAB>'.join(header)!r}, found {_snippet(line)}.", lineno)
      header = None
      continue
    try:
      record = parse(line)
    except _Bad as e:
      policy.bad(str(e), lineno)
      continue
    yield lineno, record


def _columns(line: str, names: tuple[str, ...], ids: tuple[int, ...] = (0,)) -> list[str]:
  """Exactly ``len(names)`` tab-separated columns, the ``ids`` ones non-empty."""
  parts = line.split("\t")
  if len(parts) != len(names):
    raise _Bad(f"expected {len(names)} tab-separated columns ({', '.join(names)}), found {len(parts)} "
               f"in {_snippet(line)}.")
  for i in ids:
    if not parts[i].strip():
      raise _Bad(f"empty {names[i]} in {_snippet(line)}.")
  return parts


_INT = re.compile(r"-?[0-9]+")


def _relevance(value: str, line: str) -> int:
  # int() would also take "1_0", "+1" or "1 " silently; a qrels file should hold plain integers.
  if not _INT.fullmatch(value):
    raise _Bad(f"relevance {value!r} is not an integer in {_snippet(line)}.")
  return int(value)


def _unique(records: Iterable[tuple[int, T]], key: Callable[[T], Hashable], what: str,
            policy: _Policy) -> Iterator[tuple[int, T]]:
  """Drops (or raises on) records whose key was seen before, naming both lines; the first one wins.

  Keeps key -> first line for the whole file: about 120 bytes a record (~1 GB for the 8.8M MS
  MARCO passages), which ``check_duplicates=False`` avoids where ids are known to be unique.
  """
  seen: dict[Hashable, int] = {}
  for lineno, record in records:
    k = key(record)
    first = seen.setdefault(k, lineno)
    if first != lineno:
      policy.bad(f"duplicate {what} {k!r} (first on line {first}).", lineno)
      continue
    yield lineno, record


def _stream(path: str | os.PathLike, errors: str, report: Report | None,
            build: Callable[[_Policy], Iterator[tuple[int, T]]]) -> Iterator[T]:
  """Validates ``errors`` now (not at the first ``next``) and logs the summary when iteration ends."""
  policy = _Policy(path, errors, report)

  def gen() -> Iterator[T]:
    try:
      for _, record in build(policy):
        yield record
    finally:
      policy.summarize()

  return gen()


def _collect(path: str | os.PathLike, errors: str, report: Report | None,
             build: Callable[[_Policy], Iterator[tuple[int, T]]]) -> list[T]:
  return list(_stream(path, errors, report, build))


def _qrels_from(pairs: Iterable[tuple[str, str, int]]) -> Qrels:
  qrels: Qrels = {}
  for q, d, rel in pairs:
    qrels.setdefault(q, {})[d] = rel
  return qrels


# --------------------------------------------------------------------------------- MS MARCO
def iter_msmarco_collection(path: str | os.PathLike, *, errors: str = "raise", report: Report | None = None,
                            check_duplicates: bool = True) -> Iterator[Document]:
  """Streams MS MARCO ``collection.tsv``: ``pid<TAB>passage text`` per line (8.8M lines).

  Split on tabs, never with the csv module: passages hold unbalanced quotes kept verbatim.
  """
  names = ("pid", "text")

  def build(policy: _Policy) -> Iterator[tuple[int, Document]]:
    docs = _records(path, lambda line: Document(*_columns(line, names)), policy)
    return _unique(docs, lambda d: d.doc_id, "pid", policy) if check_duplicates else docs

  return _stream(path, errors, report, build)


def read_msmarco_queries(path: str | os.PathLike, *, errors: str = "raise",
                         report: Report | None = None) -> dict[str, str]:
  """MS MARCO ``queries.{train,dev,eval}*.tsv``: ``qid<TAB>query text`` per line -> {qid: text}."""
  names = ("qid", "text")

  def build(policy: _Policy) -> Iterator[tuple[int, list[str]]]:
    return _unique(_records(path, lambda line: _columns(line, names), policy), lambda r: r[0], "qid", policy)

  return dict(_collect(path, errors, report, build))


def _trec_qrel(line: str) -> tuple[str, str, int]:
  # Tab-separated when there is a tab (so an empty id is seen as one), else any whitespace.
  parts = [p.strip() for p in line.split("\t")] if "\t" in line else line.split()
  names = ("qid", "iteration", "docid", "relevance")
  if len(parts) != 4:
    raise _Bad(f"expected 4 columns ({', '.join(names)}), found {len(parts)} in {_snippet(line)}.")
  for i in (0, 2):
    if not parts[i]:
      raise _Bad(f"empty {names[i]} in {_snippet(line)}.")
  return parts[0], parts[2], _relevance(parts[3], line)


def _known_ids(pairs: Iterable[tuple[int | None, tuple[str, str, int]]], doc_ids: Container[str] | None,
               query_ids: Container[str] | None,
               policy: _Policy) -> Iterator[tuple[int | None, tuple[str, str, int]]]:
  """The (line, qrels pair) whose ids are known (``None`` skips that check); the others go to the
  policy at their line (None: a pair not read from a file)."""
  for lineno, (q, d, rel) in pairs:
    if query_ids is not None and q not in query_ids:
      policy.bad(f"qrels name unknown query id {q!r} (with document {d!r}).", lineno)
    elif doc_ids is not None and d not in doc_ids:
      policy.bad(f"qrels name unknown document id {d!r} (for query {q!r}).", lineno)
    else:
      yield lineno, (q, d, rel)


def read_msmarco_qrels(path: str | os.PathLike, *, errors: str = "raise", report: Report | None = None,
                       doc_ids: Container[str] | None = None, query_ids: Container[str] | None = None) -> Qrels:
  """TREC qrels, as MS MARCO's ``qrels.*.tsv``: ``qid 0 pid relevance`` (tab or space separated).

  The second (iteration) column is ignored; a repeated (qid, pid) pair is a duplicate. With
  ``doc_ids`` / ``query_ids`` a pair naming an unknown id is a bad line (``file:line``).
  """
  def build(policy: _Policy) -> Iterator[tuple[int, tuple[str, str, int]]]:
    pairs = _unique(_records(path, _trec_qrel, policy), lambda r: r[:2], "qrels pair", policy)
    return _known_ids(pairs, doc_ids, query_ids, policy)

  return _qrels_from(_collect(path, errors, report, build))


def iter_msmarco_triples(path: str | os.PathLike, *, errors: str = "raise",
                         report: Report | None = None) -> Iterator[tuple[str, str, str]]:
  """Streams ``triples.train.small.tsv``: ``query<TAB>positive passage<TAB>negative passage`` (texts)."""
  names = ("query", "positive", "negative")

  def parse(line: str) -> tuple[str, str, str]:
    return tuple(_columns(line, names))

  return _stream(path, errors, report, lambda policy: _records(path, parse, policy))


def iter_msmarco_id_triples(path: str | os.PathLike, *, errors: str = "raise",
                            report: Report | None = None) -> Iterator[tuple[str, str, str]]:
  """Streams id triples (``qidpidtriples.train.full*.tsv``): ``qid<TAB>positive pid<TAB>negative pid``."""
  names = ("qid", "positive pid", "negative pid")

  def parse(line: str) -> tuple[str, str, str]:
    return tuple(_columns(line, names, ids=(0, 1, 2)))

  return _stream(path, errors, report, lambda policy: _records(path, parse, policy))


# --------------------------------------------------------------------------------- BEIR
_BEIR_QRELS_HEADER = ("query-id", "corpus-id", "score")


def _json_line(line: str) -> dict:
  try:
    obj = json.loads(line)
  except json.JSONDecodeError as e:
    raise _Bad(f"invalid JSON ({e.msg} at column {e.colno}) in {_snippet(line)}.") from None
  if not isinstance(obj, dict):
    raise _Bad(f"expected a JSON object, found {type(obj).__name__} in {_snippet(line)}.")
  return obj


def _field(obj: Mapping, key: str, where: str = "", *, is_id: bool = False,
           default: str | None = None) -> str:
  """``obj[key]`` as a string: ids may be JSON integers; a missing or null optional field is ``default``."""
  value = obj.get(key)
  if value is None:
    if default is not None:
      return default
    raise _Bad(f"{where}missing required key {key!r}." if key not in obj else f"{where}{key!r} is null.")
  if is_id and isinstance(value, int) and not isinstance(value, bool):
    value = str(value)
  if not isinstance(value, str):
    raise _Bad(f"{where}{key!r} must be a string, found {type(value).__name__}.")
  if is_id and not value.strip():
    raise _Bad(f"{where}empty {key!r}.")
  return value


def _beir_doc(line: str) -> Document:
  obj = _json_line(line)
  return Document(_field(obj, "_id", is_id=True), _field(obj, "text"), _field(obj, "title", default=""))


def _beir_query(line: str) -> tuple[str, str]:
  obj = _json_line(line)
  return _field(obj, "_id", is_id=True), _field(obj, "text")


def iter_beir_corpus(path: str | os.PathLike, *, errors: str = "raise", report: Report | None = None,
                     check_duplicates: bool = True) -> Iterator[Document]:
  """Streams BEIR ``corpus.jsonl``: one ``{"_id", "title", "text"}`` object a line (title optional)."""
  def build(policy: _Policy) -> Iterator[tuple[int, Document]]:
    docs = _records(path, _beir_doc, policy, separator=None)
    return _unique(docs, lambda d: d.doc_id, "_id", policy) if check_duplicates else docs

  return _stream(path, errors, report, build)


def read_beir_queries(path: str | os.PathLike, *, errors: str = "raise",
                      report: Report | None = None) -> dict[str, str]:
  """BEIR ``queries.jsonl``: one ``{"_id", "text"}`` object a line -> {query id: text}."""
  def build(policy: _Policy) -> Iterator[tuple[int, tuple[str, str]]]:
    return _unique(_records(path, _beir_query, policy, separator=None), lambda r: r[0], "_id", policy)

  return dict(_collect(path, errors, report, build))


def _beir_qrel(line: str) -> tuple[str, str, int]:
  q, d, score = _columns(line, _BEIR_QRELS_HEADER, ids=(0, 1))
  return q, d, _relevance(score, line)


def read_beir_qrels(path: str | os.PathLike, *, errors: str = "raise", report: Report | None = None,
                    doc_ids: Container[str] | None = None, query_ids: Container[str] | None = None) -> Qrels:
  """BEIR ``qrels/{split}.tsv``: the header ``query-id<TAB>corpus-id<TAB>score``, then one pair a line.

  With ``doc_ids`` / ``query_ids`` a pair naming an unknown id is a bad line (``file:line``)."""
  def build(policy: _Policy) -> Iterator[tuple[int, tuple[str, str, int]]]:
    rows = _records(path, _beir_qrel, policy, header=_BEIR_QRELS_HEADER)
    return _known_ids(_unique(rows, lambda r: r[:2], "qrels pair", policy), doc_ids, query_ids, policy)

  return _qrels_from(_collect(path, errors, report, build))


def _existing(path: Path) -> Path:
  """``path`` or, failing that, ``path.gz``."""
  if path.is_file():
    return path
  gz = path.with_name(path.name + ".gz")
  if gz.is_file():
    return gz
  raise DataError(f"{path}: no such file (nor {gz.name}).")


def read_beir_dataset(data_dir: str | os.PathLike, split: str = "test", *, errors: str = "raise",
                      report: Report | None = None,
                      check: bool = True) -> tuple[dict[str, Document], dict[str, str], Qrels]:
  """A BEIR dataset directory (as ``write_beir`` writes it) -> (corpus, queries, qrels of ``split``).

  ``queries`` holds every query in ``queries.jsonl``, not only the split's. With ``check`` the qrels
  are checked against the corpus and queries as they are read (same ``errors`` policy; errors name
  the qrels file's line).
  """
  data_dir = Path(data_dir)
  corpus_path = _existing(data_dir / "corpus.jsonl")
  corpus = {d.doc_id: d for d in iter_beir_corpus(corpus_path, errors=errors, report=report)}
  queries = read_beir_queries(_existing(data_dir / "queries.jsonl"), errors=errors, report=report)
  qrels_path = _existing(data_dir / "qrels" / f"{split}.tsv")
  known = (corpus, queries) if check else (None, None)
  qrels = read_beir_qrels(qrels_path, errors=errors, report=report, doc_ids=known[0], query_ids=known[1])
  return corpus, queries, qrels


# --------------------------------------------------------------------------------- DPR / NQ
@dataclasses.dataclass(frozen=True)
class DprExample:
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
  with _open_bytes(path) as f:
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
                    f"found {_snippet(text[i:i + 20])}.")
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


def _dpr_ctx(ctx: object, where: str) -> Document:
  if not isinstance(ctx, dict):
    raise _Bad(f"{where}: expected a JSON object, found {type(ctx).__name__}.")
  if "passage_id" not in ctx and "psg_id" not in ctx:
    raise _Bad(f"{where}: missing required key 'passage_id' (or 'psg_id').")
  doc_id = _field(ctx, "passage_id" if "passage_id" in ctx else "psg_id", f"{where}: ", is_id=True)
  return Document(doc_id, _field(ctx, "text", f"{where}: "), _field(ctx, "title", f"{where}: ", default=""))


def _dpr_ctxs(obj: Mapping, key: str, required: bool) -> tuple[Document, ...]:
  ctxs = obj.get(key)
  if ctxs is None and not required:
    return ()
  if ctxs is None:
    raise _Bad(f"missing required key {key!r}." if key not in obj else f"{key!r} is null.")
  if not isinstance(ctxs, list):
    raise _Bad(f"{key!r} must be a list, found {type(ctxs).__name__}.")
  return tuple(_dpr_ctx(c, f"{key}[{i}]") for i, c in enumerate(ctxs))


def _dpr_example(obj: object) -> DprExample:
  if not isinstance(obj, dict):
    raise _Bad(f"expected a JSON object, found {type(obj).__name__}.")
  answers = obj.get("answers")
  if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
    raise _Bad("missing required key 'answers'." if "answers" not in obj
               else "'answers' must be a list of strings.")
  return DprExample(_field(obj, "question"), tuple(answers), _dpr_ctxs(obj, "positive_ctxs", True),
                    _dpr_ctxs(obj, "negative_ctxs", False), _dpr_ctxs(obj, "hard_negative_ctxs", False))


def iter_dpr_examples(path: str | os.PathLike, *, errors: str = "raise",
                      report: Report | None = None) -> Iterator[DprExample]:
  """DPR retriever data (e.g. ``biencoder-nq-train.json``): one JSON list of examples.

  Each example is ``{"question", "answers", "positive_ctxs", "negative_ctxs", "hard_negative_ctxs"}``
  (the last two optional); a context is ``{"title", "text", "passage_id" or "psg_id", "score", ...}``.
  The whole file is read at once, as ``json.load`` would; errors name the line an example starts on.
  """
  path = Path(path)

  def build(policy: _Policy) -> Iterator[tuple[int, DprExample]]:
    policy.unit = "example"
    for lineno, element in _json_array(path):
      try:
        example = _dpr_example(element)
      except _Bad as e:
        policy.bad(str(e), lineno)
        continue
      yield lineno, example

  return _stream(path, errors, report, build)


def iter_dpr_passages(path: str | os.PathLike, *, errors: str = "raise", report: Report | None = None,
                      check_duplicates: bool = True) -> Iterator[Document]:
  """Streams DPR's Wikipedia ``psgs_w100.tsv``: header ``id<TAB>text<TAB>title``, then one passage a line.

  That file was written by Python's csv module, so a field may be quoted (``"a ""b"" c"``); quoted
  fields are unquoted here line by line (fields never span lines in it).
  """
  names = ("id", "text", "title")

  def passage(line: str) -> Document:
    doc_id, text, title = (_unquote(p) for p in _columns(line, names))
    return Document(doc_id, text, title)

  def build(policy: _Policy) -> Iterator[tuple[int, Document]]:
    docs = _records(path, passage, policy, header=names)
    return _unique(docs, lambda d: d.doc_id, "id", policy) if check_duplicates else docs

  return _stream(path, errors, report, build)


def _unquote(field: str) -> str:
  if len(field) >= 2 and field[0] == '"' and field[-1] == '"':
    return field[1:-1].replace('""', '"')
  return field


# --------------------------------------------------------------------------------- consistency
def check_qrels(qrels: Qrels, doc_ids: Container[str] | None, query_ids: Container[str] | None,
                source: str | os.PathLike, *, errors: str = "raise", report: Report | None = None) -> Qrels:
  """The qrels whose query and document ids are all known; ``None`` skips that check.

  An unknown id raises DataError naming it and ``source`` (the qrels file); with ``errors="warn"``
  each (query, document) pair it touches is dropped and counted, and queries left empty are removed.
  """
  policy = _Policy(source, errors, report, unit="qrels pair")
  pairs = ((None, (q, d, rel)) for q, docs in qrels.items() for d, rel in docs.items())
  try:
    return _qrels_from(pair for _, pair in _known_ids(pairs, doc_ids, query_ids, policy))
  finally:
    policy.summarize()
