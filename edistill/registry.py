"""The one registry type: named entries (formats, benchmarks, encoder families, recipes) in order."""
from __future__ import annotations

from typing import TypeVar

T = TypeVar("T")


class Registry(dict):
  """{entry.name: entry}, in registration order (a dict: ``in``, iteration and ``[name]`` work)."""

  def __init__(self, what: str):
    super().__init__()
    self.what = what

  def register(self, entry: T) -> T:
    """Adds ``entry`` under its ``name``; a name registered twice is an error."""
    if entry.name in self:
      raise ValueError(f"{self.what} {entry.name!r} is registered twice.")
    self[entry.name] = entry
    return entry

  def lookup(self, name: str):
    """The entry called ``name``; an unknown one raises naming the known ones."""
    if name not in self:
      raise ValueError(f"unknown {self.what} {name!r}; expected one of {tuple(self)}.")
    return self[name]
