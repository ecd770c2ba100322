"""Offline benchmark builders: real retrieval data made from local or Debian-packaged text.

Sources (recipes, sizes and difficulty: ``shared/DATA.md``):
  ``stdlib``         Python stdlib docstring -> function source. Needs nothing; the CI fixture.
  ``wordnet_gcide``  WordNet 3.0 gloss -> GCIDE (1913 Webster) entry of the same headword. The main,
                     hard benchmark; ``apt-get download wordnet-base dict-gcide`` + ``dpkg-deb -x``.
  ``debian``         Debian package synopsis -> long description (English translation index, fetched
                     by ``apt-get update`` into a private lists directory). Easy.
No step needs root. Downloads are cached under ``$EDISTILL_CACHE`` (or ``~/.cache/edistill``)
``/sources``.

Every builder writes a BEIR directory (``formats.write_beir``) split BY QUERY:
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
licences, options and (via ``write_beir``) counts and sha256 of every file.

CLI: ``python -m edistill.data.sources --source wordnet_gcide --out DIR [--corpus_size N] [--seed S]``
"""
from __future__ import annotations

import ast
import bz2
import collections
import dataclasses
import gzip
import hashlib
import json
import lzma
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import warnings
from pathlib import Path
from typing import Callable, Container, Iterable, Iterator, Mapping, Sequence

from absl import logging
from tqdm.auto import tqdm

from edistill.config_lib import cache_root
from edistill.data.formats import DataError, Document, Qrels, read_beir_dataset, write_beir

SOURCES = ("stdlib", "wordnet_gcide", "debian")
# Default (= pool) test / dev sizes per source; the rest of the queries are train.
POOLS = {"stdlib": (500, 250), "wordnet_gcide": (1000, 500), "debian": (1000, 500)}
MIN_QUERY_WORDS = 4
LICENCES = {
    "wordnet-base": "WordNet 3.0 licence (Princeton; permissive, BSD-like)",
    "dict-gcide": "GCIDE: GPL-2+ (GNU Collaborative International Dictionary of English)",
}


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


def _words(text: str) -> str:
  return " ".join(text.split())


def _rank(seed: int, kind: str, key: str) -> bytes:
  """Seeded, platform-independent sort key (no RNG whose stream could change between versions)."""
  return hashlib.blake2b(f"{seed}\0{kind}\0{key}".encode(), digest_size=16).digest()


# ---------------------------------------------------------------------------------------------
# Splitting and sub-sampling (shared by all sources).


def split_queries(query_ids: Iterable[str], seed: int, n_test: int, n_dev: int,
                  pools: tuple[int, int]) -> dict[str, list[str]]:
  """Query ids -> {"train", "dev", "test"} lists, each in seeded hash order (see module doc)."""
  order = sorted(query_ids, key=lambda q: _rank(seed, "query", q))
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
  for d in sorted((d for d in doc_ids if d not in keep), key=lambda d: _rank(seed, "doc", d)):
    if len(keep) >= size:
      break
    keep.add(d)
  return keep


def default_split_sizes(source: str, corpus_size: int | None) -> tuple[int, int]:
  test, dev = POOLS[source]
  if corpus_size is None:
    return test, dev
  return min(test, corpus_size // 20), min(dev, corpus_size // 40)


def write_collection(col: Collection, out_dir: str | os.PathLike, source: str, *, seed: int = 0,
                     corpus_size: int | None = None, n_test: int | None = None, n_dev: int | None = None,
                     train_share: float = 0.0, options: Mapping | None = None) -> Path:
  """Splits by query, sub-samples the corpus and writes the BEIR directory + manifest."""
  d_test, d_dev = default_split_sizes(source, corpus_size)
  n_test, n_dev = d_test if n_test is None else n_test, d_dev if n_dev is None else n_dev
  splits = split_queries(col.queries, seed, n_test, n_dev, POOLS[source])
  keep = subset_corpus(list(col.corpus), col.qrels, splits, corpus_size, seed, train_share)
  qrels = {}
  for split in ("train", "dev", "test"):
    rows = {q: {d: r for d, r in col.qrels[q].items() if d in keep} for q in splits[split]}
    qrels[split] = {q: ds for q, ds in rows.items() if ds}
  used = {q for s in qrels.values() for q in s}
  # Train queries whose positives fell outside the subset: real, in-distribution queries for the
  # label-free losses (query embedding matching, score distillation against in-batch documents).
  unlabeled = {q: col.queries[q] for q in splits["train"] if q not in used} if corpus_size else None
  manifest = {
      **col.manifest, "source": source, "builder": "edistill.data.sources",
      "options": {**(options or {}), "seed": seed, "corpus_size": corpus_size, "n_test": n_test,
                  "n_dev": n_dev, "train_share": train_share, "pools": list(POOLS[source])},
      "full_counts": {"documents": len(col.corpus), "queries": len(col.queries),
                      "pairs": sum(len(v) for v in col.qrels.values())},
  }
  return write_beir(out_dir, (doc for d, doc in col.corpus.items() if d in keep),
                    {q: t for q, t in col.queries.items() if q in used}, qrels, manifest, unlabeled)


# ---------------------------------------------------------------------------------------------
# Python stdlib: docstring -> function source.

_SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test"}


def first_paragraph(docstring: str) -> str:
  return _words(docstring.strip().split("\n\n", 1)[0])


def _line_starts(data: bytes) -> list[int]:
  starts = [0]
  starts.extend(i + 1 for i, c in enumerate(data) if c == 0x0A)
  return starts


def _is_stub(body: list[ast.stmt]) -> bool:
  """True for a body with nothing left to retrieve: empty, ``pass`` or ``...``."""
  return all(isinstance(s, ast.Pass) or (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))
             for s in body)


def functions_with_docstrings(source: str) -> Iterator[tuple[str, str, str]]:
  """Python source -> (qualified name, docstring's first paragraph, source without the docstring).

  Public module-level functions and methods of public classes (no nested functions) whose
  docstring's first paragraph has MIN_QUERY_WORDS words and whose remaining body is not a stub.
  AST columns are UTF-8 byte offsets, hence the slicing of bytes.
  """
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # Invalid escape sequences in old modules.
    tree = ast.parse(source)
  data = source.encode("utf-8")
  starts = _line_starts(data)

  def visit(node: ast.AST, prefix: str) -> Iterator[tuple[str, str, str]]:
    for child in ast.iter_child_nodes(node):
      if getattr(child, "name", "_").startswith("_"):
        continue  # Private/dunder names (boilerplate docstrings) and statements that are not defs.
      if isinstance(child, ast.ClassDef):
        yield from visit(child, f"{prefix}{child.name}.")
      elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
        name = f"{prefix}{child.name}"
        doc = ast.get_docstring(child, clean=True)
        if doc and len(query := first_paragraph(doc).split()) >= MIN_QUERY_WORDS and not _is_stub(child.body[1:]):
          ds = child.body[0]
          head = data[starts[child.lineno - 1]:starts[ds.lineno - 1] + ds.col_offset]
          end = starts[child.end_lineno] if child.end_lineno < len(starts) else len(data)  # Whole last line.
          tail = data[starts[ds.end_lineno - 1] + ds.end_col_offset:end]
          text = textwrap.dedent((head + tail).decode("utf-8"))
          text = "\n".join(line.rstrip() for line in text.splitlines() if line.strip())
          yield name, " ".join(query), text

  yield from visit(tree, "")


def stdlib_files(root: Path) -> list[Path]:
  """Sorted public stdlib .py files: no tests, no private modules, no third-party site-packages."""
  def public(parts: tuple[str, ...]) -> bool:
    return not _SKIP_DIRS.intersection(parts[:-1]) and not any(
        p.startswith("_") and p != "__init__.py" for p in parts)
  return sorted(p for p in root.rglob("*.py") if public(p.relative_to(root).parts))


def _module_name(path: Path, root: Path) -> str:
  parts = list(path.relative_to(root).with_suffix("").parts)
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def build_stdlib(root: str | os.PathLike | None = None) -> Collection:
  """Functions of the running interpreter's stdlib; identical sources and queries are merged."""
  root = Path(root or sysconfig.get_paths()["stdlib"])
  doc_ids: dict[str, str] = {}  # document text -> doc id (the first function with that text)
  query_ids: dict[str, str] = {}  # query text -> query id
  corpus: dict[str, Document] = {}
  qrels: Qrels = {}
  for path in tqdm(stdlib_files(root), desc="stdlib", disable=None):
    try:
      source = path.read_text(encoding="utf-8")
      found = list(functions_with_docstrings(source))
    except (SyntaxError, UnicodeDecodeError, ValueError):
      continue  # Deliberately broken test data and Python-2 leftovers.
    module = _module_name(path, root)
    for name, query, text in found:
      if text not in doc_ids:
        doc_id = f"{module}.{name}"
        while doc_id in corpus:  # Conditional re-definitions in one module.
          doc_id += "+"
        doc_ids[text] = doc_id
        corpus[doc_id] = Document(doc_id, text)
      qid = query_ids.setdefault(query, f"q:{doc_ids[text]}")
      qrels.setdefault(qid, {})[doc_ids[text]] = 1
  queries = {q: t for t, q in query_ids.items()}
  manifest = {"python": sys.version.split()[0], "implementation": sys.implementation.name,
              "stdlib": "docstring first paragraph -> function source without the docstring"}
  logging.info("stdlib: %d functions, %d distinct queries", len(corpus), len(queries))
  return Collection(corpus, queries, qrels, manifest)


# ---------------------------------------------------------------------------------------------
# Debian packages: apt-get download + dpkg-deb -x, no root needed.


def _run(cmd: list[str], cwd: Path | None = None, hint: str = "") -> str:
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
      _run(["apt-get", "download", pkg], cwd=tmp,
           hint="\n(no package index? run `apt-get update`, or as a user point "
                "-o Dir::State::Lists at a private directory)")
      (deb,) = tmp.glob(f"{pkg}_*.deb")
      version = _run(["dpkg-deb", "-f", str(deb), "Version"]).strip()
      _run(["dpkg-deb", "-x", str(deb), str(tmp / "tree")])
      (tmp / "tree" / ".complete").write_text(json.dumps({"package": pkg, "version": version,
                                                          "deb": deb.name}) + "\n")
      shutil.rmtree(target, ignore_errors=True)
      (tmp / "tree").rename(target)
      shutil.rmtree(tmp, ignore_errors=True)
    out[pkg] = (target, json.loads((target / ".complete").read_text())["version"])
  return out


# ---------------------------------------------------------------------------------------------
# WordNet 3.0 -> GCIDE.


@dataclasses.dataclass(frozen=True)
class Synset:
  synset_id: str  # pos letter + offset, e.g. "n02084071"
  lemmas: tuple[str, ...]  # underscores turned into spaces, adjective markers dropped
  gloss: str


def parse_wordnet_data(lines: Iterable[str]) -> Iterator[Synset]:
  """Lines of a WordNet ``data.{noun,verb,adj,adv}`` file -> synsets (licence header skipped).

  Format (wndb(5)): ``offset lex_filenum ss_type w_cnt(hex) word lex_id ... p_cnt ... | gloss``.
  """
  for line in lines:
    if line.startswith("  ") or not line.strip():
      continue
    head, _, gloss = line.partition(" | ")
    fields = head.split()
    n = int(fields[3], 16)
    lemmas = tuple(re.sub(r"\([a-z]+\)$", "", w).replace("_", " ") for w in fields[4:4 + 2 * n:2])
    pos = "a" if fields[2] == "s" else fields[2]  # Satellite adjectives are adjectives.
    yield Synset(f"{pos}{fields[0]}", lemmas, gloss.strip())


def gloss_definition(gloss: str) -> str:
  """The definition part of a gloss: the ';'-separated parts before the first quoted example."""
  parts = []
  for part in gloss.split(";"):
    if part.strip().startswith('"'):
      break
    parts.append(part)
  return _words(";".join(parts)).rstrip(";: ")


def gloss_query(synset: Synset) -> str | None:
  """The query for a synset, or None when too short or when it names one of its own lemmas."""
  text = gloss_definition(synset.gloss)
  low = text.lower()
  if len(text.split()) < MIN_QUERY_WORDS:
    return None
  if any(re.search(rf"(?<!\w){re.escape(lemma.lower())}(?!\w)", low) for lemma in synset.lemmas):
    return None
  return text


_B64 = {c: i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")}


def dictd_number(code: str) -> int:
  """dictd's index numbers: big-endian base64 digits of any length (not RFC 4648 base64)."""
  value = 0
  for c in code:
    value = value * 64 + _B64[c]
  return value


def parse_dictd_index(lines: Iterable[str]) -> Iterator[tuple[str, int, int]]:
  """``headword \\t offset \\t length`` lines -> (headword, offset, length); dictd's 00-* meta skipped."""
  for i, line in enumerate(lines, 1):
    fields = line.rstrip("\n").split("\t")
    if len(fields) != 3:
      raise DataError(f"dictd index line {i}: expected 3 tab-separated fields, got {len(fields)}.")
    if not fields[0].startswith("00-"):
      yield fields[0], dictd_number(fields[1]), dictd_number(fields[2])


# A source tag closes a segment of an entry: "[1913 Webster]", "[WordNet 1.5 +PJC]", sometimes with
# a stray word after it or a missing bracket.
_SOURCE = r"(?:Webster|WordNet|PJC|Century|RDH|MW10)"
# A WordNet tag anywhere in a line ("[WordNet sense 2]") also closes one.
_TAG = re.compile(rf"^\s*\[([^\[\]]*{_SOURCE}[^\[\]]*)(?:\]|$)|\[([^\[\]]*WordNet[^\[\]]*)\]"
                  r"|^([^\[\]]*WordNet[^\[\]]*)\]\s*$")
_PRONUNCIATION = re.compile(r"\\[^\\]{0,200}\\")  # May wrap onto the next line.
_CITATION = re.compile(r"(?<![\w-])--\s*[A-Z0-9(].*$")  # "--Shak.", "-- 2 Kings", up to the line end.


def gcide_segments(entry: str) -> Iterator[tuple[str, str]]:
  """An entry's text -> (segment text, source tag); a segment ends at its tag line."""
  lines: list[str] = []
  for line in entry.splitlines():
    m = _TAG.search(line)
    if m:
      before = line[:m.start()].strip()
      if before:
        lines.append(before)
      yield "\n".join(lines), next(g for g in m.groups() if g is not None).strip()
      lines = []
    else:
      lines.append(line)
  if any(line.strip() for line in lines):
    yield "\n".join(lines), ""


def clean_gcide_entry(entry: str) -> str:
  """1913 Webster text of an entry, without WordNet segments, Syn: lists, pronunciations, citations."""
  kept = []
  for segment, tag in gcide_segments(entry):
    if "WordNet" in tag:
      continue  # GCIDE's embedded WordNet 1.5 glosses would leak the answer.
    in_syn = False
    for line in _PRONUNCIATION.sub("", segment).splitlines():
      if not line.strip():
        in_syn = False
        continue
      if line.lstrip().startswith("Syn:"):
        in_syn = True
      if in_syn or len(line) - len(line.lstrip()) >= 40:  # Right-aligned citation continuations.
        continue
      kept.append(_CITATION.sub("", line))
  text = _words(" ".join(kept).replace("{", "").replace("}", ""))
  return re.sub(r" ([,;:.])(?=\s|$)", r"\1", text)  # "Banc , Bancus , n." once pronunciations are gone.


def read_gcide(index: Iterable[tuple[str, int, int]], read: Callable[[int, int], bytes]) -> dict[str, tuple[str, str]]:
  """dictd index + reader -> {lowercased headword: (headword as first indexed, cleaned text)}.

  A headword's entries (distinct offsets, index order) are joined; headwords whose text is empty
  once cleaned (pure WordNet 1.5 entries) are dropped.
  """
  offsets: dict[str, list[tuple[int, int]]] = {}
  spelling: dict[str, str] = {}
  for head, off, length in index:
    key = head.lower()
    spelling.setdefault(key, head)
    if (off, length) not in offsets.setdefault(key, []):
      offsets[key].append((off, length))
  cleaned: dict[tuple[int, int], str] = {}  # Entries shared by several headwords are cleaned once.
  out = {}
  for key, spans in tqdm(offsets.items(), desc="gcide", disable=None):
    for span in spans:
      if span not in cleaned:
        cleaned[span] = clean_gcide_entry(read(*span).decode("utf-8", errors="replace"))  # A few stray cp1252 bytes.
    text = " ".join(cleaned[s] for s in spans if cleaned[s])
    if text:
      out[key] = (spelling[key], text)
  return out


def read_gcide_files(index_path: Path, dict_path: Path) -> dict[str, tuple[str, str]]:
  """GCIDE from ``gcide.index`` and ``gcide.dict.dz`` (dictzip is gzip; read whole, ~40 MB)."""
  with gzip.open(dict_path, "rb") as f:
    data = f.read()
  with open(index_path, encoding="utf-8") as f:
    rows = list(parse_dictd_index(f))
  return read_gcide(rows, lambda off, length: data[off:off + length])


def _doc_id(key: str, taken: set[str]) -> str:
  doc_id = "gcide:" + "_".join(key.split())
  while doc_id in taken:
    doc_id += "+"
  taken.add(doc_id)
  return doc_id


def build_wordnet_gcide_from(wordnet_dir: Path, index_path: Path, dict_path: Path,
                             pos: Sequence[str] = ("noun",)) -> Collection:
  """Collection from unpacked WordNet ``data.*`` files and GCIDE dictd files."""
  gcide = read_gcide_files(index_path, dict_path)
  corpus: dict[str, Document] = {}
  ids: dict[str, str] = {}
  taken: set[str] = set()
  for key, (head, text) in gcide.items():
    ids[key] = _doc_id(key, taken)
    corpus[ids[key]] = Document(ids[key], f"{head}: {text}")
  queries: dict[str, str] = {}
  qrels: Qrels = {}
  dropped = collections.Counter()
  for p in pos:
    with open(wordnet_dir / f"data.{p}", encoding="utf-8") as f:
      for syn in parse_wordnet_data(f):
        query = gloss_query(syn)
        positives = {ids[k]: 1 for k in (lemma.lower() for lemma in syn.lemmas) if k in ids}
        if query is None or not positives:
          dropped["filtered" if query is None else "no_gcide_headword"] += 1
          continue
        queries[syn.synset_id] = query
        qrels[syn.synset_id] = positives
  manifest = {"queries_dropped": dict(sorted(dropped.items()))}
  logging.info("wordnet_gcide: %d documents, %d queries (%s dropped)", len(corpus), len(queries), dict(dropped))
  return Collection(corpus, queries, qrels, manifest)


def other_glosses(wordnet_dir: Path, exclude: Container[str],
                  pos: Sequence[str] = ("noun", "verb", "adj", "adv")) -> dict[str, str]:
  """{synset id: gloss definition} of every WordNet synset not in ``exclude`` (pass the collection's
  query ids) with a definition of at least ``MIN_QUERY_WORDS`` words, in file order.

  Real dictionary-style text in no split of the benchmark (nouns without a GCIDE entry or whose
  gloss names their own lemma, and all verbs, adjectives and adverbs): unlabeled queries for the
  label-free losses, pseudo-labelled by the teacher.
  """
  out = {}
  for p in pos:
    with open(Path(wordnet_dir) / f"data.{p}", encoding="utf-8") as f:
      for syn in parse_wordnet_data(f):
        text = gloss_definition(syn.gloss)
        if syn.synset_id not in exclude and len(text.split()) >= MIN_QUERY_WORDS:
          out[syn.synset_id] = text
  return out


def wordnet_gloss_pool(root: Path | None = None) -> dict[str, str]:
  """``other_glosses`` of the packaged WordNet, excluding every query of the full WordNet -> GCIDE
  collection (so no train, dev or test query of any slice)."""
  debs = fetch_debs(["wordnet-base"], (root or cache_dir()) / "debs")
  return other_glosses(debs["wordnet-base"][0] / "usr/share/wordnet", set(build_wordnet_gcide(root=root).queries))


def build_wordnet_gcide(pos: Sequence[str] = ("noun",), root: Path | None = None) -> Collection:
  """Fetches wordnet-base and dict-gcide (cached) and builds the WordNet -> GCIDE collection."""
  debs = fetch_debs(["wordnet-base", "dict-gcide"], (root or cache_dir()) / "debs")
  wn, gc = debs["wordnet-base"][0], debs["dict-gcide"][0]
  col = build_wordnet_gcide_from(wn / "usr/share/wordnet", gc / "usr/share/dictd/gcide.index",
                                 gc / "usr/share/dictd/gcide.dict.dz", pos)
  col.manifest["packages"] = {p: v for p, (_, v) in debs.items()}
  col.manifest["licences"] = dict(LICENCES)
  return col


# ---------------------------------------------------------------------------------------------
# Debian package descriptions: synopsis -> long description.


def read_deb822(lines: Iterable[str]) -> Iterator[dict[str, str]]:
  """RFC-822-style stanzas (Packages, Translation-en): continuation lines keep their newline."""
  stanza: dict[str, str] = {}
  key = None
  for line in lines:
    line = line.rstrip("\n")
    if not line.strip():
      if stanza:
        yield stanza
      stanza, key = {}, None
    elif line[0] in " \t" and key:
      stanza[key] += "\n" + line
    else:
      key, _, value = line.partition(":")
      stanza[key] = value.strip()
  if stanza:
    yield stanza


def long_description(lines: Sequence[str]) -> str:
  """Description continuation lines -> text; a " ." line is a paragraph break."""
  paragraphs, current = [], []
  for line in lines:
    if line.strip() == ".":
      paragraphs.append(" ".join(current))
      current = []
    else:
      current.append(line.strip())
  paragraphs.append(" ".join(current))
  return "\n".join(_words(p) for p in paragraphs if p.strip())


def parse_translation(lines: Iterable[str]) -> Iterator[tuple[str, str, str, str]]:
  """A Translation-en file -> (package, description md5, synopsis, long description)."""
  for stanza in read_deb822(lines):
    desc = stanza.get("Description-en")
    if desc is None or "Package" not in stanza:
      continue
    synopsis, *rest = desc.split("\n")
    yield stanza["Package"], stanza.get("Description-md5", ""), _words(synopsis), long_description(rest)


def package_sources(lines: Iterable[str]) -> dict[str, str]:
  """A Packages file -> {binary package: source package} (Source defaults to the package)."""
  return {s["Package"]: s.get("Source", s["Package"]).split()[0] for s in read_deb822(lines) if "Package" in s}


def debian_pairs(translations: Iterable[tuple[str, str, str, str]], sources: Mapping[str, str],
                 min_doc_words: int = 10) -> Collection:
  """One pair per source package (the binary named like it, else the first by name; unmapped
  binaries group by description md5). Synopses shared by several groups are ambiguous: dropped."""
  groups: dict[str, tuple[str, str, str, str]] = {}
  for row in translations:
    pkg, md5, synopsis, text = row
    if len(synopsis.split()) < 2 or len(text.split()) < min_doc_words:
      continue
    group = sources.get(pkg) or f"md5:{md5}"
    old = groups.get(group)
    if old is None or (pkg != group, pkg) < (old[0] != group, old[0]):
      groups[group] = row
  by_synopsis = collections.Counter(row[2].lower() for row in groups.values())
  by_text = collections.Counter(row[3] for row in groups.values())
  corpus, queries, qrels = {}, {}, {}
  for group in sorted(groups):
    pkg, _, synopsis, text = groups[group]
    if by_synopsis[synopsis.lower()] > 1 or by_text[text] > 1:
      continue
    corpus[f"deb:{pkg}"] = Document(f"deb:{pkg}", text)
    queries[f"q:{pkg}"] = synopsis
    qrels[f"q:{pkg}"] = {f"deb:{pkg}": 1}
  return Collection(corpus, queries, qrels)


def _open_index(path: Path):
  opener = {".gz": gzip.open, ".xz": lzma.open, ".bz2": bz2.open}.get(path.suffix, open)
  return opener(path, "rt", encoding="utf-8")


def apt_lists(root: Path, refresh: bool = False) -> Path:
  """A private, uncompressed apt lists directory with the English translation index."""
  lists = root / "apt-lists"
  if refresh or not list(lists.glob("*_i18n_Translation-en*")):
    (lists / "partial").mkdir(parents=True, exist_ok=True)
    _run(["apt-get", "update", "-o", "Acquire::Languages=en", "-o", f"Dir::State::Lists={lists}",
          "-o", "Acquire::GzipIndexes=false", "-o", f"Dir::Cache={root / 'apt-cache'}"])
  return lists


def release_info(lists: Path) -> dict[str, dict[str, str]]:
  """Origin/Suite/Version/Codename/Date of every InRelease/Release file in a lists directory."""
  out = {}
  for path in sorted(lists.glob("*Release")):
    if path.name.endswith("InRelease") or path.name.endswith("_Release"):
      with open(path, encoding="utf-8", errors="replace") as f:
        head = next((s for s in read_deb822(f) if "Suite" in s or "Codename" in s), {})  # After the PGP armour.
      out[path.name] = {k: head[k] for k in ("Origin", "Suite", "Version", "Codename", "Date") if k in head}
  return out


def build_debian(root: Path | None = None, refresh: bool = False) -> Collection:
  """Debian synopsis -> long description, from a private ``apt-get update`` (cached)."""
  lists = apt_lists(root or cache_dir() / "debian", refresh)
  sources: dict[str, str] = {}
  for path in sorted(lists.glob("*_Packages*")):
    with _open_index(path) as f:
      sources.update(package_sources(f))
  rows = []
  for path in sorted(lists.glob("*_i18n_Translation-en*")):
    with _open_index(path) as f:
      rows.extend(parse_translation(f))
  col = debian_pairs(rows, sources)
  col.manifest = {"releases": release_info(lists), "translation_stanzas": len(rows),
                  "licence": "package descriptions: per-package licences (Debian archive, main)"}
  logging.info("debian: %d stanzas -> %d pairs", len(rows), len(col.queries))
  return col


# ---------------------------------------------------------------------------------------------
# Entry points.


def build(source: str, out_dir: str | os.PathLike, *, seed: int = 0, corpus_size: int | None = None,
          n_test: int | None = None, n_dev: int | None = None, train_share: float | None = None,
          pos: Sequence[str] = ("noun",)) -> Path:
  """Builds ``source`` into ``out_dir`` (BEIR + manifest.json); returns the directory.

  ``train_share`` None: ``TRAIN_SHARE``, the share ``edistill.main`` builds its subsets with, so the
  CLI and training make the same benchmark from the same arguments."""
  if train_share is None:
    train_share = TRAIN_SHARE if corpus_size else 0.0
  if source == "stdlib":
    col, opts = build_stdlib(), {}
  elif source == "wordnet_gcide":
    col, opts = build_wordnet_gcide(pos), {"pos": list(pos)}
  elif source == "debian":
    col, opts = build_debian(), {}
  else:
    raise ValueError(f"unknown source {source!r}; one of {SOURCES}.")
  return write_collection(col, out_dir, source, seed=seed, corpus_size=corpus_size, n_test=n_test,
                          n_dev=n_dev, train_share=train_share, options=opts)


def bm25_mrr(dataset_dir: str | os.PathLike, split: str = "test", k: int = 10,
             max_queries: int | None = None) -> dict[str, float]:
  """BM25 difficulty check of a built dataset: ``mrr@k``, ``recall@k`` and ``queries``.

  Runs the project's BM25 evaluation (``edistill.eval.evaluator.bm25``: bm25s, Lucene scoring,
  English stopwords, tokens split at underscores) on the split's queries that have a relevant
  document; ``max_queries`` takes the first of them in qrels-file order (seeded hash order).
  """
  from edistill.data.tfds_builders import RetrievalSet, doc_text  # Heavy imports, CLI --bm25 only.
  from edistill.eval import evaluator

  corpus, queries, qrels = read_beir_dataset(dataset_dir, split)
  qids = [q for q, ds in qrels.items() if any(r > 0 for r in ds.values())][:max_queries]
  data = RetrievalSet(doc_ids=list(corpus), doc_texts=[doc_text(d.title, d.text) for d in corpus.values()],
                      query_ids=qids, query_texts=[queries[q] for q in qids], qrels={q: qrels[q] for q in qids},
                      hard_negatives={})
  out = evaluator.bm25(data, k, metrics=(f"mrr@{k}", f"recall@{k}"))
  return {f"mrr@{k}": out[f"mrr@{k}"], f"recall@{k}": out[f"recall@{k}"], "queries": int(out["num_queries"])}


def main(argv: Sequence[str] | None = None) -> None:
  import argparse

  parser = argparse.ArgumentParser(prog="python -m edistill.data.sources", description=__doc__.split("\n")[0])
  parser.add_argument("--source", required=True, choices=SOURCES)
  parser.add_argument("--out", required=True, help="output directory (BEIR format + manifest.json)")
  parser.add_argument("--corpus-size", "--corpus_size", type=int, default=None,
                      help="keep this many documents (all dev/test positives + random distractors)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--n-test", "--n_test", type=int, default=None)
  parser.add_argument("--n-dev", "--n_dev", type=int, default=None)
  parser.add_argument("--train-share", "--train_share", type=float, default=None,
                      help="share of the free subset slots given to train positives before distractors "
                           f"(default {TRAIN_SHARE}, as edistill.main builds it)")
  parser.add_argument("--pos", default="noun", help="wordnet_gcide: comma-separated of noun,verb,adj,adv")
  parser.add_argument("--bm25", action="store_true", help="also print BM25 MRR@10 / R@10 on test")
  args = parser.parse_args(argv)
  logging.set_verbosity(logging.INFO)
  out = build(args.source, args.out, seed=args.seed, corpus_size=args.corpus_size, n_test=args.n_test,
              n_dev=args.n_dev, train_share=args.train_share, pos=tuple(args.pos.split(",")))
  manifest = json.loads((out / "manifest.json").read_text())
  print(json.dumps({"out": str(out), "counts": manifest["counts"], "full_counts": manifest["full_counts"]},
                   indent=2))
  if args.bm25:
    print(json.dumps(bm25_mrr(out), indent=2))


if __name__ == "__main__":
  main()
