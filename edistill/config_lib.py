"""Shared config defaults, presets and validation with clear errors.

A config is an ``ml_collections.ConfigDict`` returned by ``get_config(arg)`` in ``configs/X.py``.
``--config configs/X.py:arg`` passes ``arg`` (``k=v`` pairs and flags, e.g. ``row=qemb,runlocal``);
``--config.a.b=v`` overrides a field; an unknown field is rejected by ConfigDict itself, naming it.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import ml_collections
from etils import epath

from edistill import checkpoint, mesh, objective
from edistill.data import benchmarks, formats
from edistill.models import cross_encoder

MODES = ("train", "eval", "cross_domain", "precompute", "export", "similarity")
STUDENT_KINDS = ("tied", "untied", "asymmetric", "cross")  # "cross": train a cross-encoder (configs/cross_encoder.py)
REMAT = ("none", "layer")
UNLABELED_POOLS = benchmarks.UNLABELED_POOLS
OFFLINE_SOURCES = tuple(benchmarks.BENCHMARKS)  # Built here (data/benchmarks/); the rest are read from data.path.
SOURCES = (*OFFLINE_SOURCES, *formats.FORMATS)


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """"a=1,b=x,runlocal" -> ConfigDict(a=1, b='x', runlocal=True), typed like ``defaults``."""
  out = dict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, eq, value = item.partition("=")
    if key not in out:
      raise ValueError(f"unknown config argument {key!r}; expected one of {sorted(out)}.")
    if not eq:
      out[key] = True
    elif isinstance(defaults[key], bool):
      out[key] = value.lower() in ("1", "true", "yes")
    else:
      out[key] = type(defaults[key])(value)
  return ml_collections.ConfigDict(out)


# Fields a workdir's config.json may still carry from an older edistill: dropped on reading, logged.
RETIRED_FIELDS = {"max_length": "token lengths are config.data.max_query_length / max_doc_length"}


def from_json(path: str | os.PathLike) -> ml_collections.ConfigDict:
  """The config a workdir was trained with, from its ``config.json`` (what ``--mode eval`` reads when
  no ``--config`` is given, and ``configs/workdir.py``): ``base_config()`` updated with the file's
  values (lists become tuples where the field is one), keys the base lacks kept as written, retired
  fields (``RETIRED_FIELDS``) dropped. A missing or unreadable file raises naming it."""
  import json
  from absl import logging
  path = epath.Path(path)  # Local or gs://.
  try:
    raw = json.loads(path.read_text())
  except FileNotFoundError:
    raise FileNotFoundError(f"{path}: no config.json (a workdir gets one when training starts); pass --config.") from None
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: not valid JSON ({e}).") from None
  if not isinstance(raw, dict):
    raise ValueError(f"{path}: expected a JSON object of config fields.")

  def merge(base: ml_collections.ConfigDict, values: dict, where: str) -> None:
    for key, value in values.items():
      name = f"{where}{key}"
      if key in RETIRED_FIELDS and key not in base:
        logging.warning("%s: dropped retired field %s (%s).", path, name, RETIRED_FIELDS[key])
      elif isinstance(value, dict) and isinstance(base.get(key), ml_collections.ConfigDict):
        merge(base[key], value, f"{name}.")
      elif key in base and isinstance(base[key], tuple) and isinstance(value, list):
        base[key] = tuple(value)
      elif key in base and base[key] is not None and value is not None and not isinstance(value, type(base[key])) \
          and not (isinstance(base[key], float) and isinstance(value, int)):
        raise ValueError(f"{path}: {name}={value!r} is not a {type(base[key]).__name__} like the field it sets.")
      else:
        base[key] = ml_collections.ConfigDict(value) if isinstance(value, dict) else value

  cfg = base_config()
  merge(cfg, raw, "")
  return cfg


def load_config(spec: str | os.PathLike) -> ml_collections.ConfigDict:
  """``get_config(arg)`` of a config file named as on the command line: ``"path/X.py[:arg]"``."""
  import importlib.util
  path, _, arg = str(spec).partition(":")
  module_spec = importlib.util.spec_from_file_location(Path(path).stem, path)
  if module_spec is None or not Path(path).is_file():
    raise FileNotFoundError(f"config file {path!r} does not exist.")
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg or None)


def encoder_config(name: str, num_layers: int = 0, pooling: str = "mean",
                   normalize: bool = True) -> ml_collections.ConfigDict:
  """One encoder: a zoo name or local HF directory, its head, and ``num_layers`` (0 = all).

  ``dropout`` < 0 keeps the checkpoint's own dropout rates; >= 0 sets both (hidden and attention).
  Token lengths are the data's (``data.max_query_length`` / ``data.max_doc_length``), the same for
  every encoder that reads a text, so a student and its teacher always see the same tokens.
  """
  return ml_collections.ConfigDict({
      "name": name, "num_layers": num_layers,
      "pooling": pooling, "normalize": normalize, "dtype": "float32", "dropout": -1.0})


def dual_encoder_config(name: str) -> ml_collections.ConfigDict:
  """A dual-encoder teacher: ``encoder_config(name)`` and the batch it precomputes its tables at."""
  cfg = encoder_config(name)
  cfg.batch_size = 64
  return cfg


def base_config() -> ml_collections.ConfigDict:
  """Every field a training config has, with defaults (presets change values, never add keys)."""
  cfg = ml_collections.ConfigDict()
  cfg.mode = "train"
  cfg.recipe = ""  # What the config builds (edistill/recipes/); "": implied by student.kind and teacher.kind.
  cfg.seed = 0
  cfg.data = ml_collections.ConfigDict({
      "source": "wordnet_gcide", "path": "", "corpus_size": 10000, "split": "train", "errors": "raise",
      # Offline benchmarks: test / dev queries (0 = the source's default for corpus_size: N/20, N/40).
      "n_test": 0, "n_dev": 0,
      "max_query_length": 32, "max_doc_length": 128, "num_hard_negatives": 0,
      # Training batches (data/pipeline.py): sort runs of bucket_window batches by query length, pad
      # each batch to its longest row rounded up to pad_multiple (0 = off: fixed shapes, random batches).
      "bucket_window": 0, "pad_multiple": 0,
      # > 0: each training query's num_hard_negatives are drawn from the precomputed teacher's top
      # teacher_negatives non-positive documents (likely false negatives left out; data/mining.py).
      "teacher_negatives": 0,
      # Extra training queries without labels (0 = none): each gets the teacher's top-1 document
      # as its positive; from ``unlabeled_path`` or, for an offline benchmark subset, its own.
      # unlabeled_pool: "slice" (the subset's own) or, for wordnet_gcide, "wordnet_all" (+ every other
      # WordNet gloss: ~104k instead of ~36k at 2k documents; data/tfds_builders.unlabeled_queries).
      # unlabeled_extra: more unlabeled queries, all of them, after the pool's pick: a .jsonl / .tsv
      # queries file, or a named pool of the benchmark ("gcide_definitions" for wordnet_gcide: the first
      # definition sentence of every GCIDE entry outside the slice's corpus, 82k at 10k documents).
      "unlabeled_queries": 0, "unlabeled_path": "", "unlabeled_pool": "slice", "unlabeled_extra": ""})
  cfg.teacher = dual_encoder_config("mpnet-base")
  cfg.teacher.mode = "precomputed"  # or "online" (needs the student's tokenizer; costs a teacher forward a step)
  # The dtype precomputed table rows travel to the devices in (teachers.TABLE_DTYPES): "bfloat16" halves them.
  cfg.teacher.table_dtype = "float32"
  cfg.teacher.kind = "dual"  # or "cross": a trained cross-encoder (cross_encoder.checkpoint), configs/ce_distill.py
  cfg.student = encoder_config("minilm-l6")
  cfg.student.kind = "asymmetric"
  cfg.student.projection_init = "lstsq"  # or "random": how the student -> teacher projection starts.
  # Each term's weight (objective.TERMS; 0 disables it) and the settings the terms read.
  cfg.loss = ml_collections.ConfigDict({**{t.name: t.default for t in objective.TERMS.values()}, **objective.SETTINGS})
  cfg.train = ml_collections.ConfigDict({
      "batch_size": 64, "steps": 2000, "learning_rate": 5e-5, "warmup_steps": 100, "weight_decay": 0.01,
      "grad_clip": 1.0, "schedule": "cosine", "frozen": (), "log_every": 20, "checkpoint_every": 500,
      "pull_to_init": 0.0,  # > 0: L2-SP, the gradient of pull / 2 * ||params - initial params||^2 (state.py).
      "keep_checkpoints": 2, "init_from": "",
      # init_from: another run's checkpoints, params only; remap "PATTERN=REPLACEMENT" renames its leaves
      # (re.sub on "a/b/c" names); missing "error" or "init" (a leaf it lacks keeps its fresh value).
      "init_from_remap": (), "init_from_missing": "error",
      "grad_cache_chunk": 0,  # > 0: GradCache with chunks of this many queries (memory-bounded big batches).
      "remat": "none"})  # "layer": recompute each transformer layer in the backward pass (activation memory).
  # Multi-host (jax.distributed). enabled + no coordinator_address = auto-detect (Cloud TPU, SLURM, ...).
  cfg.distributed = ml_collections.ConfigDict({
      "enabled": False, "coordinator_address": "", "num_processes": 0, "process_id": -1,
      "cpu_collectives": "", "timeout_s": 300})
  cfg.querygen = ml_collections.ConfigDict({"ratio": 0.0, "ict_fraction": 0.5})
  cfg.cross_encoder = cross_encoder_config()
  # Axis sizes (-1: the rest of the devices) and the ordered parameter-sharding rules (mesh.py).
  cfg.mesh = ml_collections.ConfigDict({"data": -1, "model": 1, "rules": mesh.DEFAULT_RULES})
  cfg.eval = ml_collections.ConfigDict({
      "split": "test", "models": ("teacher", "student_zero_shot", "student", "bm25"), "k": 100, "scann": True,
      "checkpoint": "", "every_steps": 0, "during_training_split": "dev",
      # --mode cross_domain: benchmarks to evaluate the trained student on (eval/suite.parse_domain),
      # e.g. ("wordnet_gcide:10000", "debian:10000", "stdlib", "beir:/data/scifact").
      "domains": (),
      "at_end": True})  # After training: evaluate every model in eval.models on eval.split.
  # Named evaluations {name: {type, models, split, scann, every_steps}} (eval/evaluators/); empty: the one
  # config.eval describes ("eval": the trained model on eval.during_training_split every eval.every_steps).
  cfg.evals = ml_collections.ConfigDict()
  return cfg


def cross_encoder_config() -> ml_collections.ConfigDict:
  """Cross-encoder settings: trained as ``student.kind="cross"``, distilled from as ``teacher.kind="cross"``."""
  return ml_collections.ConfigDict({
      "head": "cls",  # "cls" ([CLS] -> linear) or "dual" (dual pooling: <mean q tokens, mean d tokens>)
      "normalize": True,  # dual head: L2-normalise the pooled vectors (score = cosine; use a temperature)
      "negatives": "hard",  # CE training candidates: "hard" (data.num_hard_negatives) or "in_batch"
      # Hard negatives from the top mine_depth of "bm25" or of the dual-encoder "teacher" (dual_encoder,
      # likely false negatives left out: data/mining.py); "none": the dataset's own, else random.
      "mine": "bm25",
      "mine_depth": 30,
      # The dual encoder that mine="teacher" mines with and first_stage="teacher" retrieves with.
      "dual_encoder": dual_encoder_config("mpnet-base"),
      "temperature": 1.0,  # listwise softmax over each query's candidates when training the CE
      "checkpoint": "",  # teacher.kind="cross": the trained CE's checkpoint directory
      # teacher.kind="cross": its outputs scored elsewhere instead (an .npz of recipes/cross_encoder.write_outputs)
      "outputs": "",
      "batch_size": 64,  # pairs per forward when precomputing teacher outputs and re-ranking
      "first_stage": "bm25",  # re-ranking evaluation: "bm25" or "teacher" (exact search with dual_encoder)
      "rerank_k": 20})


def runlocal(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The same experiment shrunk to run in seconds on a laptop CPU (tiny data, few steps)."""
  cfg.data.source, cfg.data.corpus_size = "stdlib", 600
  cfg.data.max_query_length, cfg.data.max_doc_length = 16, 32
  cfg.teacher.num_layers, cfg.teacher.batch_size = 1, 128
  cfg.cross_encoder.dual_encoder.num_layers, cfg.cross_encoder.dual_encoder.batch_size = 1, 128
  cfg.student.num_layers = 1
  cfg.train.update(batch_size=8, steps=2, warmup_steps=0, log_every=1, checkpoint_every=0)
  cfg.eval.scann = False
  cfg.eval.at_end = False
  return cfg


def non_finite_keys(cfg: ml_collections.ConfigDict, prefix: str = "config") -> list[tuple[str, float]]:
  """(dotted name, value) of every float field (at any depth, in tuples too) that is NaN or infinite."""
  out = []
  for key, value in cfg.items():
    name = f"{prefix}.{key}"
    if isinstance(value, ml_collections.ConfigDict):
      out.extend(non_finite_keys(value, name))
    elif isinstance(value, (tuple, list)):
      out.extend((f"{name}[{i}]", v) for i, v in enumerate(value) if isinstance(v, float) and not math.isfinite(v))
    elif isinstance(value, float) and not math.isfinite(value):
      out.append((name, value))
  return out


def validate(cfg: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the offending key for inconsistent values."""
  bad = non_finite_keys(cfg)
  if bad:  # NaN passes every "< 0" / "<= 0" check below; it would only surface at the first step.
    (name, value), others = bad[0], [n for n, _ in bad[1:]]
    raise ValueError(f"{name}={value} must be a finite number"
                     + (f" (also non-finite: {', '.join(others)})" if others else "") + ".")
  if cfg.mode not in MODES:
    raise ValueError(f"config.mode={cfg.mode!r}; expected one of {MODES}.")
  for key in ("teacher", "student"):
    enc = cfg[key]
    if enc.pooling not in ("mean", "cls"):
      raise ValueError(f"config.{key}.pooling={enc.pooling!r}; expected 'mean' or 'cls'.")
    if enc.dtype not in ("float32", "bfloat16"):
      raise ValueError(f"config.{key}.dtype={enc.dtype!r}; expected 'float32' or 'bfloat16'.")
    if enc.num_layers < 0:
      raise ValueError(f"config.{key}.num_layers={enc.num_layers} must be >= 0 (0 = all layers).")
    if enc.get("dropout", -1.0) >= 1:
      raise ValueError(f"config.{key}.dropout={enc.dropout} must be < 1 (< 0 keeps the checkpoint's).")
  from edistill import distributed  # Its checks name the config.distributed.* keys.
  if "distributed" in cfg:
    distributed.validate(cfg.distributed)
  if cfg.mode == "similarity":
    return
  if cfg.teacher.mode not in ("precomputed", "online"):
    raise ValueError(f"config.teacher.mode={cfg.teacher.mode!r}; expected 'precomputed' or 'online'.")
  from edistill import teachers  # It owns the table dtypes.
  if cfg.teacher.get("table_dtype", "float32") not in teachers.TABLE_DTYPES:
    raise ValueError(f"config.teacher.table_dtype={cfg.teacher.table_dtype!r}; expected one of {teachers.TABLE_DTYPES}.")
  if cfg.student.projection_init not in ("lstsq", "random"):
    raise ValueError(f"config.student.projection_init={cfg.student.projection_init!r}; expected 'lstsq' or 'random'.")
  if cfg.student.kind not in STUDENT_KINDS:
    raise ValueError(f"config.student.kind={cfg.student.kind!r}; expected one of {STUDENT_KINDS}.")
  if cfg.data.source not in SOURCES:
    raise ValueError(f"config.data.source={cfg.data.source!r}; expected one of {SOURCES}.")
  for k in objective.TERMS:
    if cfg.loss[k] < 0:
      raise ValueError(f"config.loss.{k}={cfg.loss[k]} must be >= 0.")
  if not any(cfg.loss[k] for k in objective.TERMS):
    raise ValueError("config.loss: every term has weight 0; nothing to train.")
  uses_teacher = cfg.student.kind == "asymmetric" or objective.loss_config(cfg.loss).needs_teacher()
  if cfg.student.kind == "asymmetric" and cfg.loss.doc_emb:
    raise ValueError("config.loss.doc_emb must be 0 for an asymmetric student (its documents are the teacher's).")
  for k in ("temperature", "student_temperature", "teacher_temperature"):
    if cfg.loss[k] <= 0:
      raise ValueError(f"config.loss.{k}={cfg.loss[k]} must be > 0.")
  if cfg.train.batch_size < 2:
    raise ValueError(f"config.train.batch_size={cfg.train.batch_size}: in-batch negatives need >= 2.")
  if cfg.train.steps < 1 or cfg.train.log_every < 1:
    raise ValueError("config.train.steps and config.train.log_every must be >= 1.")
  if cfg.data.unlabeled_pool not in UNLABELED_POOLS:
    raise ValueError(f"config.data.unlabeled_pool={cfg.data.unlabeled_pool!r}; expected one of {UNLABELED_POOLS}.")
  if cfg.data.unlabeled_pool == "wordnet_all" and (cfg.data.source != "wordnet_gcide" or cfg.data.unlabeled_path):
    raise ValueError("config.data.unlabeled_pool='wordnet_all' needs config.data.source='wordnet_gcide' and "
                     "no config.data.unlabeled_path.")
  if cfg.data.n_test < 0 or cfg.data.n_dev < 0:
    raise ValueError(f"config.data.n_test={cfg.data.n_test} / n_dev={cfg.data.n_dev} must be >= 0 (0 = default).")
  if (cfg.data.n_test or cfg.data.n_dev) and cfg.data.source not in OFFLINE_SOURCES:
    raise ValueError(f"config.data.n_test / n_dev split an offline benchmark {OFFLINE_SOURCES}; "
                     f"data.source={cfg.data.source!r} brings its own splits.")
  if cfg.data.bucket_window < 0 or cfg.data.pad_multiple < 0:
    raise ValueError(f"config.data.bucket_window={cfg.data.bucket_window} / pad_multiple={cfg.data.pad_multiple} "
                     "must be >= 0 (0 = off).")
  if cfg.data.teacher_negatives < 0:
    raise ValueError(f"config.data.teacher_negatives={cfg.data.teacher_negatives} must be >= 0 (0 = off).")
  if cfg.data.teacher_negatives and (cfg.data.num_hard_negatives < 1 or cfg.teacher.mode != "precomputed"
                                     or cfg.teacher.kind != "dual" or not uses_teacher):
    raise ValueError("config.data.teacher_negatives mines from the dual-encoder teacher's precomputed tables: it "
                     "needs config.data.num_hard_negatives >= 1, teacher.mode='precomputed', teacher.kind='dual' and a "
                     "teacher in use (a distillation loss or an asymmetric student).")
  if cfg.data.unlabeled_queries < 0:
    raise ValueError(f"config.data.unlabeled_queries={cfg.data.unlabeled_queries} must be >= 0.")
  for key in ("unlabeled_queries", "unlabeled_extra"):
    if cfg.data[key] and not uses_teacher:
      raise ValueError(f"config.data.{key} needs a teacher: a distillation loss or an asymmetric student.")
    if cfg.data[key] and cfg.teacher.mode != "precomputed":
      raise ValueError(f"config.data.{key} needs config.teacher.mode='precomputed' (the teacher "
                       "labels them with its top-1 document from its precomputed document table).")
  extra = cfg.data.unlabeled_extra
  if extra and extra not in benchmarks.EXTRA_POOLS and formats.queries_reader(extra) is None:
    raise ValueError(f"config.data.unlabeled_extra={extra!r}: expected a .jsonl (BEIR) or .tsv (MS MARCO) queries "
                     f"file, or one of the pools {tuple(benchmarks.EXTRA_POOLS)}.")
  if extra in benchmarks.EXTRA_POOLS and benchmarks.EXTRA_POOLS[extra].source != cfg.data.source:
    raise ValueError(f"config.data.unlabeled_extra={extra!r} is a pool of data.source="
                     f"{benchmarks.EXTRA_POOLS[extra].source!r}; this config's source is {cfg.data.source!r}.")
  mesh.rules(cfg.mesh)  # Raises naming a malformed config.mesh.rules entry.
  if cfg.train.init_from_missing not in checkpoint.MISSING:
    raise ValueError(f"config.train.init_from_missing={cfg.train.init_from_missing!r}; expected one of "
                     f"{checkpoint.MISSING}.")
  if cfg.train.pull_to_init < 0:
    raise ValueError(f"config.train.pull_to_init={cfg.train.pull_to_init} must be >= 0 (0 = off).")
  if cfg.train.remat not in REMAT:
    raise ValueError(f"config.train.remat={cfg.train.remat!r}; expected one of {REMAT}.")
  if cfg.train.grad_cache_chunk < 0 or (cfg.train.grad_cache_chunk
                                        and cfg.train.batch_size % cfg.train.grad_cache_chunk):
    raise ValueError(f"config.train.grad_cache_chunk={cfg.train.grad_cache_chunk} must be 0 (off) or a positive "
                     f"divisor of config.train.batch_size={cfg.train.batch_size}.")
  _validate_cross_encoder(cfg)
  from edistill import recipes  # Lazy: the recipes import the whole package.
  if cfg.train.grad_cache_chunk and recipes.of(cfg).packs_pairs:
    raise ValueError("config.train.grad_cache_chunk is for dual-encoder students; cross-encoder training and "
                     "CE distillation use the plain step (set it to 0).")
  if not 0 <= cfg.querygen.ratio < 1:
    raise ValueError(f"config.querygen.ratio={cfg.querygen.ratio} must be in [0, 1).")


def _validate_cross_encoder(cfg: ml_collections.ConfigDict) -> None:
  ce = cfg.cross_encoder
  if cfg.teacher.kind not in ("dual", "cross"):
    raise ValueError(f"config.teacher.kind={cfg.teacher.kind!r}; expected 'dual' or 'cross'.")
  if ce.head not in cross_encoder.HEADS:
    raise ValueError(f"config.cross_encoder.head={ce.head!r}; expected one of {cross_encoder.HEADS}.")
  if ce.negatives not in ("hard", "in_batch"):
    raise ValueError(f"config.cross_encoder.negatives={ce.negatives!r}; expected 'hard' or 'in_batch'.")
  if ce.mine not in ("bm25", "teacher", "none"):
    raise ValueError(f"config.cross_encoder.mine={ce.mine!r}; expected 'bm25', 'teacher' or 'none'.")
  if ce.first_stage not in ("bm25", "teacher"):
    raise ValueError(f"config.cross_encoder.first_stage={ce.first_stage!r}; expected 'bm25' or 'teacher'.")
  if ce.temperature <= 0 or ce.rerank_k < 1 or ce.batch_size < 1:
    raise ValueError("config.cross_encoder.temperature, rerank_k and batch_size must be > 0.")
  from edistill import recipes  # Lazy: the recipes import the whole package.
  from edistill.eval import evaluators
  recipes.of(cfg).validate(cfg)
  evaluators.specs(cfg, recipes.of(cfg).evaluator)  # Raises naming a bad config.evals entry.
