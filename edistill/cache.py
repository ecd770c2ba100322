"""The one cache root, content keys, hashes and atomic writes, used by every layer.

Every cache (downloads, built datasets, embedding tables, CE scores, generated queries) lives under
``cache_root()`` and is keyed by content (``content_key``), never by a path: an edited input is
rebuilt, never served stale. Writes go through ``atomic_file`` so a reader sees the old file or the
whole new one, never a part, and a crash mid-write leaves what was there.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Iterable, Iterator

from tqdm.auto import tqdm


def cache_root() -> Path:
  """Where downloads, built datasets and embedding caches live: ``$EDISTILL_CACHE`` or ~/.cache/edistill."""
  return Path(os.environ.get("EDISTILL_CACHE", Path.home() / ".cache" / "edistill"))


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


def write_lines_atomic(path: str | os.PathLike, lines: Iterable[str]) -> None:
  """Writes each of ``lines`` plus a newline to ``path``, whole or not at all."""
  with atomic_file(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
    for line in lines:
      f.write(line)
      f.write("\n")
