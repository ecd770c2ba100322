"""The BERT family (MiniLM is BERT): absolute positions, token-type embeddings."""
from __future__ import annotations

from edistill.models.arch import registry


def _from_hf(raw: dict) -> dict:
  if raw.get("position_embedding_type", "absolute") != "absolute":
    raise ValueError(f"position_embedding_type {raw['position_embedding_type']!r} is not supported (only 'absolute').")
  return {"type_vocab_size": raw.get("type_vocab_size", 2), "pad_token_id": raw.get("pad_token_id", 0)}


def _to_hf(cfg) -> dict:
  return {"type_vocab_size": cfg.type_vocab_size, "position_embedding_type": "absolute"}


def _layer(i: int) -> registry.LayerTensors:
  src = f"encoder.layer.{i}"
  att = f"{src}.attention.self"
  return registry.LayerTensors((f"{att}.query", f"{att}.key", f"{att}.value"), f"{src}.attention.output.dense",
                           f"{src}.attention.output.LayerNorm", f"{src}.intermediate.dense", f"{src}.output.dense",
                           f"{src}.output.LayerNorm")


registry.register(registry.Arch("bert", "BertModel", token_types=True, position_ids=None, relative_buckets=None,
                        from_hf=_from_hf, to_hf=_to_hf, layer=_layer,
                        embedding_tensors=((("embeddings", "token_type", "embedding"),
                                            "embeddings.token_type_embeddings.weight"),)))
