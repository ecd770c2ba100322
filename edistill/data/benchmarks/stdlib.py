"""Python stdlib: docstring first paragraph -> function source. Needs nothing; the CI fixture."""
from __future__ import annotations

import ast
import os
import sys
import sysconfig
import textwrap
import warnings
from pathlib import Path
from typing import Iterator

from absl import logging
from tqdm.auto import tqdm

from edistill.data.benchmarks import common, registry
from edistill.data.types import Document, Qrels

_SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test"}


def first_paragraph(docstring: str) -> str:
  return common.words(docstring.strip().split("\n\n", 1)[0])


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
  docstring's first paragraph has common.MIN_QUERY_WORDS words and whose remaining body is not a stub.
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
        if (doc and len(query := first_paragraph(doc).split()) >= common.MIN_QUERY_WORDS
            and not _is_stub(child.body[1:])):
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


def build_stdlib(root: str | os.PathLike | None = None) -> common.Collection:
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
  return common.Collection(corpus, queries, qrels, manifest)




registry.register(registry.Benchmark("stdlib", (500, 250), lambda pos: (build_stdlib(), {})))
