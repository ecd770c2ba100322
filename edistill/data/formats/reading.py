"""Line-level reading shared by every format: the ``errors=`` policy, file:line messages, gzip.

Every reader takes ``errors="raise"`` (the first bad line raises DataError) or ``errors="warn"``
(bad lines are skipped and counted, and one summary warning per file is logged at the end).
Messages start with "{path}:{line}: " (1-based). Paths ending in ".gz" are gunzipped on the fly.
Blank lines are ignored: trailing empty lines are common and carry no record.
"""
from __future__ import annotations

import dataclasses
import gzip
import json
import os
import re
import zlib
from pathlib import Path
from typing import IO, Callable, Container, Hashable, Iterable, Iterator, Mapping, TypeVar

from absl import logging

from edistill.data.types import DataError, Qrels

T = TypeVar("T")


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


class Bad(Exception):
  """One record is malformed; the policy turns it into a DataError or a skip."""


class Policy:
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


def snippet(line: str, width: int = 60) -> str:
  return f"{line[:width]!r}{'...' if len(line) > width else ''}"


def open_bytes(path: Path) -> IO[bytes]:
  return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def lines(path: Path, policy: Policy, separator: str | None = None) -> Iterator[tuple[int, str]]:
  """(1-based line number, text) of each non-blank line of a UTF-8 file, ``.gz`` or not.

  Blank means whitespace only and no ``separator``: a TSV line of bare tabs is a record with empty
  columns (the parser judges it), not a blank line to skip.

  Reads bytes and splits on "\\n" only: passages may hold a stray "\\r", which text mode would take
  for a line end. Strips just the newline (and a "\\r" before it, for CRLF files) and a leading BOM.
  Undecodable lines go to the policy; a truncated ``.gz`` raises naming the file and line.
  """
  lineno = 0
  try:
    with open_bytes(path) as f:
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


def records(path: str | os.PathLike, parse: Callable[[str], T], policy: Policy,
            header: tuple[str, ...] | None = None, separator: str | None = "\t") -> Iterator[tuple[int, T]]:
  """(line number, ``parse(line)``) for each good line; bad ones (parse raises Bad) go to the policy.

  With ``header``, the first line must be exactly those tab-separated names and is not parsed.
  ``separator``: the column separator (see ``lines``; None for JSON lines).
  """
  path = Path(path)
  for lineno, line in lines(path, policy, separator):
    if header is not None:
      if tuple(line.split("\t")) != header:
        policy.bad(f"expected the header {'<TAB>'.join(header)!r}, found {snippet(line)}.", lineno)
      header = None
      continue
    try:
      record = parse(line)
    except Bad as e:
      policy.bad(str(e), lineno)
      continue
    yield lineno, record


def columns(line: str, names: tuple[str, ...], ids: tuple[int, ...] = (0,)) -> list[str]:
  """Exactly ``len(names)`` tab-separated columns, the ``ids`` ones non-empty."""
  parts = line.split("\t")
  if len(parts) != len(names):
    raise Bad(f"expected {len(names)} tab-separated columns ({', '.join(names)}), found {len(parts)} "
               f"in {snippet(line)}.")
  for i in ids:
    if not parts[i].strip():
      raise Bad(f"empty {names[i]} in {snippet(line)}.")
  return parts


_INT = re.compile(r"-?[0-9]+")


def relevance(value: str, line: str) -> int:
  # int() would also take "1_0", "+1" or "1 " silently; a qrels file should hold plain integers.
  if not _INT.fullmatch(value):
    raise Bad(f"relevance {value!r} is not an integer in {snippet(line)}.")
  return int(value)


def unique(records: Iterable[tuple[int, T]], key: Callable[[T], Hashable], what: str,
           policy: Policy) -> Iterator[tuple[int, T]]:
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


def stream(path: str | os.PathLike, errors: str, report: Report | None,
           build: Callable[[Policy], Iterator[tuple[int, T]]]) -> Iterator[T]:
  """Validates ``errors`` now (not at the first ``next``) and logs the summary when iteration ends."""
  policy = Policy(path, errors, report)

  def gen() -> Iterator[T]:
    try:
      for _, record in build(policy):
        yield record
    finally:
      policy.summarize()

  return gen()


def collect(path: str | os.PathLike, errors: str, report: Report | None,
            build: Callable[[Policy], Iterator[tuple[int, T]]]) -> list[T]:
  return list(stream(path, errors, report, build))


def qrels_from(pairs: Iterable[tuple[str, str, int]]) -> Qrels:
  qrels: Qrels = {}
  for q, d, rel in pairs:
    qrels.setdefault(q, {})[d] = rel
  return qrels


def known_ids(pairs: Iterable[tuple[int | None, tuple[str, str, int]]], doc_ids: Container[str] | None,
              query_ids: Container[str] | None,
              policy: Policy) -> Iterator[tuple[int | None, tuple[str, str, int]]]:
  """The (line, qrels pair) whose ids are known (``None`` skips that check); the others go to the
  policy at their line (None: a pair not read from a file)."""
  for lineno, (q, d, rel) in pairs:
    if query_ids is not None and q not in query_ids:
      policy.bad(f"qrels name unknown query id {q!r} (with document {d!r}).", lineno)
    elif doc_ids is not None and d not in doc_ids:
      policy.bad(f"qrels name unknown document id {d!r} (for query {q!r}).", lineno)
    else:
      yield lineno, (q, d, rel)


def json_line(line: str) -> dict:
  try:
    obj = json.loads(line)
  except json.JSONDecodeError as e:
    raise Bad(f"invalid JSON ({e.msg} at column {e.colno}) in {snippet(line)}.") from None
  if not isinstance(obj, dict):
    raise Bad(f"expected a JSON object, found {type(obj).__name__} in {snippet(line)}.")
  return obj


def field(obj: Mapping, key: str, where: str = "", *, is_id: bool = False,
          default: str | None = None) -> str:
  """``obj[key]`` as a string: ids may be JSON integers; a missing or null optional field is ``default``."""
  value = obj.get(key)
  if value is None:
    if default is not None:
      return default
    raise Bad(f"{where}missing required key {key!r}." if key not in obj else f"{where}{key!r} is null.")
  if is_id and isinstance(value, int) and not isinstance(value, bool):
    value = str(value)
  if not isinstance(value, str):
    raise Bad(f"{where}{key!r} must be a string, found {type(value).__name__}.")
  if is_id and not value.strip():
    raise Bad(f"{where}empty {key!r}.")
  return value


def existing(path: Path) -> Path:
  """``path`` or, failing that, ``path.gz``."""
  if path.is_file():
    return path
  gz = path.with_name(path.name + ".gz")
  if gz.is_file():
    return gz
  raise DataError(f"{path}: no such file (nor {gz.name}).")


def check_qrels(qrels: Qrels, doc_ids: Container[str] | None, query_ids: Container[str] | None,
                source: str | os.PathLike, *, errors: str = "raise", report: Report | None = None) -> Qrels:
  """The qrels whose query and document ids are all known; ``None`` skips that check.

  An unknown id raises DataError naming it and ``source`` (the qrels file); with ``errors="warn"``
  each (query, document) pair it touches is dropped and counted, and queries left empty are removed.
  """
  policy = Policy(source, errors, report, unit="qrels pair")
  pairs = ((None, (q, d, rel)) for q, docs in qrels.items() for d, rel in docs.items())
  try:
    return qrels_from(pair for _, pair in known_ids(pairs, doc_ids, query_ids, policy))
  finally:
    policy.summarize()
