"""HF checkpoint directories <-> edistill encoder parameter trees, without torch.

Reads ``config.json`` + ``model.safetensors`` (or ``pytorch_model.bin``, unpickled here without
torch) and, when present, the sentence-transformers modules (``1_Pooling``, ``*_Dense``,
``*_Normalize``) so a sentence-transformers directory loads as the same embedding model. Writes the
reverse: an HF directory that transformers' ``AutoModel`` and sentence-transformers load.

Every failure names the directory and the offending key.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import os
import pickle
import shutil
import zipfile
from pathlib import Path
from typing import Any

import jax
import numpy as np
import safetensors.numpy
from flax import traverse_util

from edistill.models import arch as arch_lib
from edistill.models.encoder import Encoder, TransformerConfig

Params = dict[str, Any]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


class CheckpointError(ValueError):
  """A checkpoint directory that cannot be read as an edistill encoder."""


@dataclasses.dataclass(frozen=True)
class HeadConfig:
  """The sentence-embedding head stored beside the transformer (sentence-transformers modules)."""

  pooling: str = "mean"
  normalize: bool = False
  projection_dim: int | None = None
  normalize_first: bool = False  # Normalize module before the Dense one (see Encoder).


# ------------------------------------------------------------------------------------- config
def read_config(ckpt_dir: str | Path) -> TransformerConfig:
  """``config.json`` -> TransformerConfig, with a clear error for unsupported architectures."""
  ckpt_dir = Path(ckpt_dir)
  path = ckpt_dir / "config.json"
  if not path.is_file():
    raise CheckpointError(f"{ckpt_dir}: no config.json; not an HF checkpoint directory.")
  try:
    raw = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise CheckpointError(f"{path}: invalid JSON ({e}).") from e
  arch = raw.get("model_type")
  if arch not in arch_lib.ARCHS:
    raise CheckpointError(f"{path}: model_type {arch!r} is not supported; edistill encoders cover "
                          f"{sorted(arch_lib.ARCHS)} (BERT family incl. MiniLM, and MPNet).")
  try:
    family = arch_lib.ARCHS[arch].from_hf(raw)
  except ValueError as e:
    raise CheckpointError(f"{path}: {e}") from e
  try:
    return TransformerConfig(
        arch=arch,
        vocab_size=raw["vocab_size"],
        hidden_size=raw["hidden_size"],
        num_layers=raw["num_hidden_layers"],
        num_heads=raw["num_attention_heads"],
        intermediate_size=raw["intermediate_size"],
        max_position_embeddings=raw["max_position_embeddings"],
        layer_norm_eps=raw.get("layer_norm_eps", 1e-12),
        hidden_act=raw.get("hidden_act", "gelu"),
        relative_attention_num_buckets=raw.get("relative_attention_num_buckets", 32),
        hidden_dropout=raw.get("hidden_dropout_prob", 0.1),
        attention_dropout=raw.get("attention_probs_dropout_prob", 0.1),
        **family,
    )
  except KeyError as e:
    raise CheckpointError(f"{path}: missing required field {e.args[0]!r}.") from e
  except ValueError as e:
    raise CheckpointError(f"{path}: {e}") from e


def config_to_hf(cfg: TransformerConfig) -> dict[str, Any]:
  out = {
      "architectures": [arch_lib.get(cfg.arch).hf_class],
      "model_type": cfg.arch,
      "vocab_size": cfg.vocab_size,
      "hidden_size": cfg.hidden_size,
      "num_hidden_layers": cfg.num_layers,
      "num_attention_heads": cfg.num_heads,
      "intermediate_size": cfg.intermediate_size,
      "max_position_embeddings": cfg.max_position_embeddings,
      "layer_norm_eps": cfg.layer_norm_eps,
      "hidden_act": cfg.hidden_act,
      "pad_token_id": cfg.pad_token_id,
      "hidden_dropout_prob": cfg.hidden_dropout,
      "attention_probs_dropout_prob": cfg.attention_dropout,
  }
  out.update(arch_lib.get(cfg.arch).to_hf(cfg))
  return out


def read_head(ckpt_dir: str | Path) -> HeadConfig:
  """The sentence-transformers pooling / Dense / Normalize modules; mean pooling if absent."""
  ckpt_dir = Path(ckpt_dir)
  modules_path = ckpt_dir / "modules.json"
  if not modules_path.is_file():
    return HeadConfig()
  pooling, normalize, proj, normalize_first = "mean", False, None, False
  for module in json.loads(modules_path.read_text()):
    kind = module.get("type", "")
    sub = ckpt_dir / module.get("path", "")
    if kind.endswith("Pooling"):
      pcfg = json.loads((sub / "config.json").read_text())
      modes = [k for k, v in pcfg.items() if k.startswith("pooling_mode_") and v]
      pooling = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls"}.get(
          modes[0] if len(modes) == 1 else "", None)
      if pooling is None:
        raise CheckpointError(f"{sub / 'config.json'}: pooling modes {modes} are not supported "
                              "(exactly one of mean or cls).")
    elif kind.endswith("Dense"):
      dcfg = json.loads((sub / "config.json").read_text())
      if not dcfg.get("activation_function", "").endswith("Identity"):
        raise CheckpointError(f"{sub}: only a linear Dense head is supported, got activation "
                              f"{dcfg.get('activation_function')!r}.")
      if proj is not None:
        raise CheckpointError(f"{modules_path}: more than one Dense module is not supported.")
      proj = int(dcfg["out_features"])
    elif kind.endswith("Normalize"):
      if normalize:
        raise CheckpointError(f"{modules_path}: more than one Normalize module is not supported.")
      normalize = True
      normalize_first = proj is None
  return HeadConfig(pooling, normalize, proj, normalize_first=normalize_first and proj is not None)


# ------------------------------------------------------------------------------------- tensors
def _linear(prefix: tuple[str, ...], hf: str):
  """(our path, HF names, to_ours, to_hf) for a torch Linear stored as [out, in]; ours is [in, out]."""
  return [((*prefix, "kernel"), (f"{hf}.weight",), lambda ws, shape: ws[0].T.reshape(shape), lambda k: [k.T]),
          _plain((*prefix, "bias"), f"{hf}.bias")]


def _fused_linear(prefix: tuple[str, ...], hfs: tuple[str, ...]):
  """Several torch Linears of the same input fused along the output axis (q | k | v)."""
  n = len(hfs)
  return [((*prefix, "kernel"), tuple(f"{h}.weight" for h in hfs),
           lambda ws, shape: np.concatenate([w.T for w in ws], axis=1).reshape(shape),
           lambda k: [part.T for part in np.split(k, n, axis=1)]),
          ((*prefix, "bias"), tuple(f"{h}.bias" for h in hfs),
           lambda bs, shape: np.concatenate(bs).reshape(shape), lambda b: np.split(b, n))]


def _plain(path, hf):
  return (path, (hf,), lambda xs, shape: xs[0].reshape(shape), lambda x: [x])


def _norm(prefix, hf):
  return [_plain((*prefix, "ln", "scale"), f"{hf}.weight"), _plain((*prefix, "ln", "bias"), f"{hf}.bias")]


def tensor_map(cfg: TransformerConfig):
  """Yields (param path, HF tensor names, hf->ours(arrays, shape), ours->hf(array) -> arrays)."""
  family = arch_lib.get(cfg.arch)
  yield _plain(("embeddings", "word", "embedding"), "embeddings.word_embeddings.weight")
  yield _plain(("embeddings", "position", "embedding"), "embeddings.position_embeddings.weight")
  for path, name in family.embedding_tensors:
    yield _plain(path, name)
  yield from _norm(("embeddings", "norm"), "embeddings.LayerNorm")
  for i in range(cfg.num_layers):
    t, dst = family.layer(i), (f"layer_{i}",)
    yield from _fused_linear((*dst, "attention", "qkv"), t.qkv)
    yield from _linear((*dst, "attention", "out"), t.attention_out)
    yield from _norm((*dst, "attention_norm"), t.attention_norm)
    yield from _linear((*dst, "mlp_in"), t.mlp_in)
    yield from _linear((*dst, "mlp_out"), t.mlp_out)
    yield from _norm((*dst, "output_norm"), t.output_norm)
  for path, name in family.final_tensors:
    yield _plain(path, name)


def _read_torch_bin(path: Path) -> dict[str, np.ndarray]:
  """A ``torch.save``d state dict (zip format) read with pickle + NumPy only.

  Only the globals a plain state dict needs are allowed; anything else is refused, which also
  keeps arbitrary code in a pickle from running.
  """
  dtypes = {"FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
            "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
            "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_}
  with zipfile.ZipFile(path) as zf:
    pkl_name = next((n for n in zf.namelist() if n.endswith("data.pkl")), None)
    if pkl_name is None:
      raise CheckpointError(f"{path}: not a torch zip checkpoint (no data.pkl).")
    root = pkl_name[: -len("data.pkl")]

    def rebuild(storage, offset, size, stride, *unused):
      itemsize = storage.dtype.itemsize
      return np.lib.stride_tricks.as_strided(
          storage[offset:], shape=tuple(size), strides=[s * itemsize for s in stride]).copy()

    class _Storage:
      def __init__(self, name):
        if name not in dtypes:
          raise CheckpointError(f"{path}: unsupported tensor storage torch.{name}.")
        self.dtype = dtypes[name]

    class Unpickler(pickle.Unpickler):
      def find_class(self, module, name):
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
          return rebuild
        if (module, name) == ("collections", "OrderedDict"):
          return collections.OrderedDict
        if module == "torch" and name.endswith("Storage"):
          return _Storage(name)
        raise CheckpointError(f"{path}: refusing to unpickle {module}.{name} (not a plain state dict).")

      def persistent_load(self, pid):
        _, storage_type, key, _, _ = pid
        return np.frombuffer(zf.read(f"{root}data/{key}"), dtype=storage_type.dtype)

    with zf.open(pkl_name) as f:
      return dict(Unpickler(f).load())


def read_tensors(ckpt_dir: str | Path) -> dict[str, np.ndarray]:
  """All tensors of the checkpoint's weights file, by HF name."""
  ckpt_dir = Path(ckpt_dir)
  st, pt = ckpt_dir / "model.safetensors", ckpt_dir / "pytorch_model.bin"
  if st.is_file():
    try:
      return safetensors.numpy.load_file(str(st))
    except Exception as e:  # safetensors raises several error types for corrupt files.
      raise CheckpointError(f"{st}: cannot read safetensors file ({e}).") from e
  if pt.is_file():
    try:
      return _read_torch_bin(pt)
    except (zipfile.BadZipFile, pickle.UnpicklingError, EOFError) as e:
      raise CheckpointError(f"{pt}: cannot read torch checkpoint ({e}).") from e
  raise CheckpointError(f"{ckpt_dir}: no model.safetensors or pytorch_model.bin.")


def _strip_prefix(tensors: dict[str, np.ndarray], ckpt_dir: Path) -> dict[str, np.ndarray]:
  """Drop a task-model prefix ("bert.", "mpnet.", "0.auto_model.", ...) and legacy LN names."""
  anchor = "embeddings.word_embeddings.weight"
  prefix = next((k[: -len(anchor)] for k in tensors if k.endswith(anchor)), None)
  if prefix is None:
    raise CheckpointError(f"{ckpt_dir}: no tensor named *{anchor}; not a BERT/MPNet checkpoint.")
  out = {}
  for k, v in tensors.items():
    if k.startswith(prefix):
      k = k[len(prefix):].replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
      out[k] = v
  return out


def _set(tree: Params, path: tuple[str, ...], value):
  for p in path[:-1]:
    tree = tree.setdefault(p, {})
  tree[path[-1]] = value


def _get(tree: Params, path: tuple[str, ...]):
  for p in path:
    tree = tree[p]
  return tree


def param_shapes(cfg: TransformerConfig) -> dict[tuple[str, ...], tuple[int, ...]]:
  """Expected shape of every transformer parameter (derived from the module, not restated)."""
  ids = jax.ShapeDtypeStruct((1, 8), np.int32)
  shapes = jax.eval_shape(Encoder(cfg).init, jax.random.key(0), ids, ids)["params"]
  return {k: v.shape for k, v in traverse_util.flatten_dict(shapes).items()}


def load_params(ckpt_dir: str | Path, cfg: TransformerConfig | None = None) -> tuple[TransformerConfig, Params]:
  """Reads the transformer weights into edistill's param tree (float32 NumPy arrays).

  ``cfg`` may cut the checkpoint to its first ``cfg.num_layers`` layers (smaller students); it
  must otherwise match ``config.json``.
  """
  ckpt_dir = Path(ckpt_dir)
  full = read_config(ckpt_dir)
  if cfg is None:
    cfg = full
  elif cfg.num_layers > full.num_layers or cfg != full.with_layers(cfg.num_layers):
    raise CheckpointError(f"{ckpt_dir}: requested {cfg} does not match the checkpoint's {full} "
                          "(only num_layers may be smaller).")
  tensors = _strip_prefix(read_tensors(ckpt_dir), ckpt_dir)
  shapes = param_shapes(cfg)
  params: Params = {}
  missing = []
  for path, names, to_ours, to_hf in tensor_map(cfg):
    absent = [n for n in names if n not in tensors]
    if absent:
      missing.extend(absent)
      continue
    expected = shapes[path]
    for name, value, want in zip(names, (np.asarray(tensors[n]) for n in names),
                                 (a.shape for a in to_hf(np.zeros(expected, np.float32)))):
      if value.shape != want:
        raise CheckpointError(f"{ckpt_dir}: tensor {name} has shape {value.shape}, expected "
                              f"{want} (config.json says {cfg.arch} with hidden_size "
                              f"{cfg.hidden_size}, vocab_size {cfg.vocab_size}).")
    _set(params, path, to_ours([np.asarray(tensors[n]) for n in names], expected).astype(np.float32))
  if missing:
    raise CheckpointError(f"{ckpt_dir}: missing tensors {missing[:8]}"
                          f"{' and %d more' % (len(missing) - 8) if len(missing) > 8 else ''}.")
  return cfg, params


def load_head_params(ckpt_dir: str | Path, head: HeadConfig, hidden: int) -> Params:
  """The projection Dense of a sentence-transformers directory, as {'kernel', 'bias'}."""
  if not head.projection_dim:
    return {}
  ckpt_dir = Path(ckpt_dir)
  modules = json.loads((ckpt_dir / "modules.json").read_text())
  dense_dir = next(ckpt_dir / m["path"] for m in modules if m.get("type", "").endswith("Dense"))
  weights = dense_dir / "model.safetensors"
  if not weights.is_file():
    raise CheckpointError(f"{dense_dir}: no model.safetensors for the Dense head.")
  t = safetensors.numpy.load_file(str(weights))
  w = t.get("linear.weight")
  if w is None or w.shape != (head.projection_dim, hidden):
    raise CheckpointError(f"{weights}: linear.weight must have shape ({head.projection_dim}, {hidden}), "
                          f"got {None if w is None else w.shape}.")
  b = t.get("linear.bias", np.zeros(head.projection_dim, np.float32))
  return {"kernel": w.T.astype(np.float32), "bias": b.astype(np.float32)}


# ------------------------------------------------------------------------------------- export
ST_CONFIG = "config_sentence_transformers.json"


def read_max_seq_length(ckpt_dir: str | Path) -> int | None:
  """The token length a sentence-transformers directory encodes at: ``sentence_bert_config.json``'s
  ``max_seq_length``, else the tokenizer's ``model_max_length`` when it is a real length (HF writes
  ~1e30 for "none"); None when neither says."""
  ckpt_dir = Path(ckpt_dir)
  for name, key in (("sentence_bert_config.json", "max_seq_length"), ("tokenizer_config.json", "model_max_length")):
    path = ckpt_dir / name
    value = json.loads(path.read_text()).get(key) if path.is_file() else None
    if isinstance(value, int) and 0 < value < 1_000_000:
      return value
  return None


def public_file_modes(root: Path) -> None:
  """Files under ``root`` readable as the umask allows (safetensors writes 0600 whatever the umask):
  an export is meant to be shared."""
  umask = os.umask(0)
  os.umask(umask)
  for path in root.rglob("*"):
    if path.is_file():
      path.chmod(0o666 & ~umask)


def fresh_tmp(out_dir: Path) -> Path:
  """An empty sibling ``out_dir.tmp`` to write into before ``replace_dir`` (a crashed run's is dropped)."""
  tmp = out_dir.with_name(out_dir.name + ".tmp")
  shutil.rmtree(tmp, ignore_errors=True)
  tmp.mkdir(parents=True)
  return tmp


def replace_dir(tmp: Path, out_dir: Path) -> Path:
  """Moves the finished ``tmp`` to ``out_dir``, replacing an existing one without leaving it half-written."""
  if out_dir.exists():
    old = out_dir.with_name(out_dir.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    out_dir.rename(old)
    tmp.rename(out_dir)
    shutil.rmtree(old)
  else:
    tmp.rename(out_dir)
  return out_dir


def hf_tensors(params: Params, cfg: TransformerConfig, pooler: bool = True) -> dict[str, np.ndarray]:
  """The transformer's tensors by HF name (float32, torch layout), with ``AutoModel``'s [CLS] pooler
  as zeros (``pooler``): edistill's embeddings pool the last hidden states and never read it, and
  zeros make ``AutoModel`` load a complete, deterministic model (``pooler_output`` = 0) instead of
  reporting the pooler MISSING and initialising it at random."""
  tensors = {name: np.ascontiguousarray(value)
             for path, names, _, to_hf in tensor_map(cfg)
             for name, value in zip(names, to_hf(np.asarray(_get(params, path), np.float32)))}
  if pooler and (prefix := arch_lib.get(cfg.arch).pooler):
    tensors[f"{prefix}.weight"] = np.zeros((cfg.hidden_size, cfg.hidden_size), np.float32)
    tensors[f"{prefix}.bias"] = np.zeros((cfg.hidden_size,), np.float32)
  return tensors


def _copy_tokenizer(tokenizer_dir: Path, out: Path, max_seq_length: int) -> None:
  """The tokenizer files, with ``model_max_length`` set to the export's length so a transformers
  user's ``truncation=True`` cuts where edistill did."""
  for name in TOKENIZER_FILES:
    if (tokenizer_dir / name).is_file():
      shutil.copy(tokenizer_dir / name, out / name)
  config = out / "tokenizer_config.json"
  if config.is_file():
    config.write_text(json.dumps({**json.loads(config.read_text()), "model_max_length": max_seq_length}, indent=2))


def st_model_config(similarity: str = "dot") -> str:
  """``config_sentence_transformers.json``: the similarity edistill scores with (inner products)."""
  return json.dumps({"model_type": "SentenceTransformer", "prompts": {}, "default_prompt_name": None,
                     "similarity_fn_name": similarity}, indent=2)


def export(params: Params, cfg: TransformerConfig, head: HeadConfig, out_dir: str | Path,
           tokenizer_dir: str | Path, max_seq_length: int = 256) -> Path:
  """Writes an HF + sentence-transformers directory for the encoder (files as the umask allows).

  ``params`` is the Encoder's param tree (with ``projection`` if ``head.projection_dim``).
  Written to a temporary sibling first and renamed, so an existing export is never half-replaced.
  """
  out_dir = Path(out_dir)
  tmp = fresh_tmp(out_dir)
  safetensors.numpy.save_file(hf_tensors(params, cfg), str(tmp / "model.safetensors"), metadata={"format": "pt"})
  (tmp / "config.json").write_text(json.dumps(config_to_hf(cfg), indent=2))
  _copy_tokenizer(Path(tokenizer_dir), tmp, max_seq_length)
  (tmp / ST_CONFIG).write_text(st_model_config())
  modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}]
  (tmp / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_seq_length,
                                                            "do_lower_case": False}))
  (tmp / "1_Pooling").mkdir()
  (tmp / "1_Pooling" / "config.json").write_text(json.dumps({
      "word_embedding_dimension": cfg.hidden_size,
      "pooling_mode_cls_token": head.pooling == "cls",
      "pooling_mode_mean_tokens": head.pooling == "mean",
      "pooling_mode_max_tokens": False,
      "pooling_mode_mean_sqrt_len_tokens": False}, indent=2))
  modules.append({"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"})

  def add_normalize():
    (tmp / f"{len(modules)}_Normalize").mkdir()
    modules.append({"idx": len(modules), "name": str(len(modules)), "path": f"{len(modules)}_Normalize",
                    "type": "sentence_transformers.models.Normalize"})

  if head.normalize and head.normalize_first:
    add_normalize()
  if head.projection_dim:
    d = tmp / f"{len(modules)}_Dense"
    d.mkdir()
    proj = params["projection"]
    safetensors.numpy.save_file({"linear.weight": np.ascontiguousarray(np.asarray(proj["kernel"], np.float32).T),
                                 "linear.bias": np.asarray(proj["bias"], np.float32)},
                                str(d / "model.safetensors"))
    (d / "config.json").write_text(json.dumps({
        "in_features": cfg.hidden_size, "out_features": head.projection_dim, "bias": True,
        "activation_function": "torch.nn.modules.linear.Identity"}))
    modules.append({"idx": len(modules), "name": str(len(modules)), "path": d.name,
                    "type": "sentence_transformers.models.Dense"})
  if head.normalize and not head.normalize_first:
    add_normalize()
  (tmp / "modules.json").write_text(json.dumps(modules, indent=2))
  public_file_modes(tmp)
  return replace_dir(tmp, out_dir)


def export_encoder(module: Encoder, params: Params, out_dir: str | Path, tokenizer_dir: str | Path,
                   max_seq_length: int) -> Path:
  """``export`` of an Encoder module with its own head (pooling, normalisation, projection)."""
  head = HeadConfig(module.pooling, module.normalize, module.projection_dim, module.normalize_first)
  return export(params, module.config, head, out_dir, tokenizer_dir, max_seq_length)
