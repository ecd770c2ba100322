"""Retrieval data formats, one module each, in a registry keyed by ``config.data.source``.

A format module reads its files (streaming, validating, naming file:line on bad input: ``reading``)
and registers a ``registry.Format``: the files a user places in the dataset directory and ``splits``, which
turns that directory into the TFDS records ``data/tfds_builders.py`` prepares (a ``corpus`` split
and one ``queries_<split>`` per query split). A new format is one new module that calls
``registry.register`` plus its import below.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

# The built-in formats register themselves (this order is FORMATS's order).
from edistill.data.formats import beir, msmarco, dpr  # noqa: I001
from edistill.data.formats.registry import FORMATS, Format, register  # noqa: F401  The registry's API.


def queries_reader(path: str | Path) -> Callable[..., dict[str, str]] | None:
  """The reader of a queries file by its suffix (``.gz`` too): BEIR ``.jsonl`` or MS MARCO ``.tsv``; else None."""
  name = str(path).removesuffix(".gz")
  return beir.read_queries if name.endswith(".jsonl") else msmarco.read_queries if name.endswith(".tsv") else None


