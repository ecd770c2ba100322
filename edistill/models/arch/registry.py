"""The architecture registry: what differs between encoder families (see the package docstring)."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

from edistill.registry import Registry


@dataclasses.dataclass(frozen=True)
class LayerTensors:
  """HF tensor names of one transformer layer (each a Linear / LayerNorm prefix)."""

  qkv: tuple[str, str, str]
  attention_out: str
  attention_norm: str
  mlp_in: str
  mlp_out: str
  output_norm: str


@dataclasses.dataclass(frozen=True)
class Arch:
  """name: HF ``model_type``; hf_class: HF's model class (``config.json`` "architectures").
  token_types: token-type embeddings ([B, L] ids, absent: type 0); position_ids(input_ids,
  pad_token_id) -> [B, L], or None for positions 0..L-1 (a static slice of the table);
  relative_buckets(length, num_buckets) -> int32 [L, L]: the buckets of a relative position bias
  shared by every layer, or None for none.
  from_hf(raw config.json) -> the family's ``TransformerConfig`` fields (ValueError on what it cannot
  read); to_hf(cfg) -> its ``config.json`` fields; layer(i) -> ``LayerTensors``; embedding_tensors /
  final_tensors: (param path, HF name) of its extra tensors after the position table / after the layers.
  pooler: HF name of the [CLS] pooler Linear that ``AutoModel`` builds (None: the class has none);
  edistill's embeddings never use it, so an export writes it as zeros (see ``hf_import.export``).
  """

  name: str
  hf_class: str
  token_types: bool
  position_ids: Callable | None
  relative_buckets: Callable | None
  from_hf: Callable[[dict], dict[str, Any]]
  to_hf: Callable[[Any], dict[str, Any]]
  layer: Callable[[int], LayerTensors]
  embedding_tensors: tuple[tuple[tuple[str, ...], str], ...] = ()
  final_tensors: tuple[tuple[tuple[str, ...], str], ...] = ()
  pooler: str | None = "pooler.dense"


ARCHS = Registry("encoder architecture")
register = ARCHS.register
get = ARCHS.lookup


