"""One sentence-transformers model for a dual encoder: a ``Router`` over two exported directories.

Layout of ``out_dir``::

  modules.json, router_config.json, config_sentence_transformers.json    the Router model
  query/      the query tower: an HF + sentence-transformers directory (``hf_import.export``)
  document/   the document side, the same kind of directory

``SentenceTransformer(out_dir).encode_query`` runs the "query" route, ``encode_document`` (and plain
``encode``) the "document" route. The routes name the directories' own modules (``query``,
``query/1_Pooling``, ...) instead of copies, so each directory stays a complete model by itself
(transformers' ``AutoModel``, a one-route ``SentenceTransformer``, the ONNX backend).
Module types use the ``sentence_transformers.models.*`` names that sentence-transformers 5 (where
``Router`` appeared) and 6 both resolve.
"""
from __future__ import annotations

import json
from pathlib import Path

from edistill.models import hf_import

ROUTES = ("query", "document")
ROUTER_TYPE = "sentence_transformers.models.Router"


def route_modules(route: str, modules: list[dict]) -> list[tuple[str, str]]:
  """A route directory's ``modules.json`` entries -> [(module id relative to the Router, type)]."""
  return [(f"{route}/{m['path']}".rstrip("/"), m["type"]) for m in sorted(modules, key=lambda m: m["idx"])]


def router_config(routes: dict[str, list[tuple[str, str]]]) -> dict:
  """``router_config.json``: each module's type, each route's module ids; unnamed tasks go to documents."""
  return {"types": {mid: kind for mods in routes.values() for mid, kind in mods},
          "structure": {route: [mid for mid, _ in mods] for route, mods in routes.items()},
          "parameters": {"default_route": "document", "allow_empty_key": True, "route_mappings": {}}}


def write_router(out_dir: str | Path, similarity: str = "dot") -> Path:
  """Writes the Router model's files over ``out_dir/query`` and ``out_dir/document`` (already written)."""
  out_dir = Path(out_dir)
  routes = {}
  for route in ROUTES:
    path = out_dir / route / "modules.json"
    if not path.is_file():
      raise FileNotFoundError(f"{out_dir / route}: not a sentence-transformers directory (no modules.json).")
    routes[route] = route_modules(route, json.loads(path.read_text()))
  (out_dir / "router_config.json").write_text(json.dumps(router_config(routes), indent=2))
  (out_dir / "modules.json").write_text(json.dumps([{"idx": 0, "name": "0", "path": "", "type": ROUTER_TYPE}], indent=2))
  (out_dir / hf_import.ST_CONFIG).write_text(hf_import.st_model_config(similarity))
  return out_dir
