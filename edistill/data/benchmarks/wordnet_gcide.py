"""WordNet 3.0 gloss -> GCIDE (1913 Webster) entry of the same headword: the main, hard benchmark.

``apt-get download wordnet-base dict-gcide`` + ``dpkg-deb -x`` (cached under the cache root).
"""
from __future__ import annotations

import collections
import dataclasses
import gzip
import re
from pathlib import Path
from typing import Callable, Container, Iterable, Iterator, Sequence

from absl import logging
from tqdm.auto import tqdm

from edistill.data.benchmarks import common, registry
from edistill.data.types import DataError, Document, Qrels

LICENCES = {
    "wordnet-base": "WordNet 3.0 licence (Princeton; permissive, BSD-like)",
    "dict-gcide": "GCIDE: GPL-2+ (GNU Collaborative International Dictionary of English)",
}

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
  return common.words(";".join(parts)).rstrip(";: ")


def gloss_query(synset: Synset) -> str | None:
  """The query for a synset, or None when too short or when it names one of its own lemmas."""
  text = gloss_definition(synset.gloss)
  low = text.lower()
  if len(text.split()) < common.MIN_QUERY_WORDS:
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
  text = common.words(" ".join(kept).replace("{", "").replace("}", ""))
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
                             pos: Sequence[str] = ("noun",)) -> common.Collection:
  """common.Collection from unpacked WordNet ``data.*`` files and GCIDE dictd files."""
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
  return common.Collection(corpus, queries, qrels, manifest)


def other_glosses(wordnet_dir: Path, exclude: Container[str],
                  pos: Sequence[str] = ("noun", "verb", "adj", "adv")) -> dict[str, str]:
  """{synset id: gloss definition} of every WordNet synset not in ``exclude`` (pass the collection's
  query ids) with a definition of at least ``common.MIN_QUERY_WORDS`` words, in file order.

  Real dictionary-style text in no split of the benchmark (nouns without a GCIDE entry or whose
  gloss names their own lemma, and all verbs, adjectives and adverbs): unlabeled queries for the
  label-free losses, pseudo-labelled by the teacher.
  """
  out = {}
  for p in pos:
    with open(Path(wordnet_dir) / f"data.{p}", encoding="utf-8") as f:
      for syn in parse_wordnet_data(f):
        text = gloss_definition(syn.gloss)
        if syn.synset_id not in exclude and len(text.split()) >= common.MIN_QUERY_WORDS:
          out[syn.synset_id] = text
  return out


def wordnet_gloss_pool(root: Path | None = None) -> dict[str, str]:
  """``other_glosses`` of the packaged WordNet, excluding every query of the full WordNet -> GCIDE
  collection (so no train, dev or test query of any slice)."""
  debs = common.fetch_debs(["wordnet-base"], (root or common.cache_dir()) / "debs")
  return other_glosses(debs["wordnet-base"][0] / "usr/share/wordnet", set(build_wordnet_gcide(root=root).queries))


_ASIDES = re.compile(r"\[[^\[\]]*\]|\([^()]*\)")  # Innermost etymology, pronunciation or "(Bot.)" label.
_SENTENCES = re.compile(r"(?<=\.)\s+(?:\d+\.\s+)?")  # Sentence ends and numbered senses.


def definition_sentence(text: str, max_words: int = 40) -> str | None:
  """A GCIDE document's first definition: the text after its headword prefix, asides removed, the
  first sentence of at least ``common.MIN_QUERY_WORDS`` words (the headword and part of speech,
  "Ardor, n.", are shorter), cut to ``max_words``; None when there is none."""
  body, prev = text.partition(": ")[2] or text, None
  while body != prev:  # Asides nest ("[Cf. F. p['e]nible.]"): innermost first.
    body, prev = _ASIDES.sub(" ", body), body
  body = common.words(body)
  for piece in _SENTENCES.split(body):
    piece = piece.strip(" .;:,")
    words = piece.split()
    if len(words) >= common.MIN_QUERY_WORDS:
      return " ".join(words[:max_words])
  return None


def gcide_definitions(exclude: Container[str], root: Path | None = None) -> dict[str, str]:
  """{"def:" + document id: its ``definition_sentence``} of every GCIDE document not in ``exclude``
  (pass the slice's corpus ids), each distinct sentence once (headwords sharing an entry share it):
  dictionary text in no split's corpus, queries-to-be for embedding matching (the paper's "explore
  the data manifold"), pseudo-labelled by the teacher."""
  out, seen = {}, set()
  for doc_id, doc in build_wordnet_gcide(root=root).corpus.items():
    if doc_id not in exclude:
      sentence = definition_sentence(doc.text)
      if sentence and sentence not in seen:
        seen.add(sentence)
        out["def:" + doc_id] = sentence
  return out


def build_wordnet_gcide(pos: Sequence[str] = ("noun",), root: Path | None = None) -> common.Collection:
  """Fetches wordnet-base and dict-gcide (cached) and builds the WordNet -> GCIDE collection."""
  debs = common.fetch_debs(["wordnet-base", "dict-gcide"], (root or common.cache_dir()) / "debs")
  wn, gc = debs["wordnet-base"][0], debs["dict-gcide"][0]
  col = build_wordnet_gcide_from(wn / "usr/share/wordnet", gc / "usr/share/dictd/gcide.index",
                                 gc / "usr/share/dictd/gcide.dict.dz", pos)
  col.manifest["packages"] = {p: v for p, (_, v) in debs.items()}
  col.manifest["licences"] = dict(LICENCES)
  return col




registry.EXTRA_POOLS.register(registry.ExtraPool("gcide_definitions", "wordnet_gcide", gcide_definitions))
registry.register(registry.Benchmark("wordnet_gcide", (1000, 500),
                                         lambda pos: (build_wordnet_gcide(pos), {"pos": list(pos)})))
