"""Debian package synopsis -> long description: easy, MS MARCO-length passages.

The English translation index, fetched by ``apt-get update`` into a private lists directory.
"""
from __future__ import annotations

import bz2
import collections
import gzip
import lzma
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

from absl import logging

from edistill.data.benchmarks import common, registry
from edistill.data.types import Document

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
  return "\n".join(common.words(p) for p in paragraphs if p.strip())


def parse_translation(lines: Iterable[str]) -> Iterator[tuple[str, str, str, str]]:
  """A Translation-en file -> (package, description md5, synopsis, long description)."""
  for stanza in read_deb822(lines):
    desc = stanza.get("Description-en")
    if desc is None or "Package" not in stanza:
      continue
    synopsis, *rest = desc.split("\n")
    yield stanza["Package"], stanza.get("Description-md5", ""), common.words(synopsis), long_description(rest)


def package_sources(lines: Iterable[str]) -> dict[str, str]:
  """A Packages file -> {binary package: source package} (Source defaults to the package)."""
  return {s["Package"]: s.get("Source", s["Package"]).split()[0] for s in read_deb822(lines) if "Package" in s}


def debian_pairs(translations: Iterable[tuple[str, str, str, str]], sources: Mapping[str, str],
                 min_doc_words: int = 10) -> common.Collection:
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
  return common.Collection(corpus, queries, qrels)


def _open_index(path: Path):
  opener = {".gz": gzip.open, ".xz": lzma.open, ".bz2": bz2.open}.get(path.suffix, open)
  return opener(path, "rt", encoding="utf-8")


def apt_lists(root: Path, refresh: bool = False) -> Path:
  """A private, uncompressed apt lists directory with the English translation index."""
  lists = root / "apt-lists"
  if refresh or not list(lists.glob("*_i18n_Translation-en*")):
    (lists / "partial").mkdir(parents=True, exist_ok=True)
    common.run(["apt-get", "update", "-o", "Acquire::Languages=en", "-o", f"Dir::State::Lists={lists}",
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


def build_debian(root: Path | None = None, refresh: bool = False) -> common.Collection:
  """Debian synopsis -> long description, from a private ``apt-get update`` (cached)."""
  lists = apt_lists(root or common.cache_dir() / "debian", refresh)
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




registry.register(registry.Benchmark("debian", (1000, 500), lambda pos: (build_debian(), {})))
