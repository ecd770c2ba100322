"""edistill entry point.

    python -m edistill.main --config configs/X.py[:arg] --workdir DIR [--mode M] [--config.field=value ...]

Modes (``--mode`` overrides ``config.mode``):
  train       train (resuming from DIR's checkpoints), then evaluate if ``config.eval.at_end``
  eval        evaluate DIR's latest checkpoint (or ``config.eval.checkpoint``) and the baselines
  cross_domain  the same on the test split of every benchmark in ``config.eval.domains``, one table
  precompute  only fill the caches training reads: the dataset, the teacher's query/document tables
              (split across hosts on a pod), pseudo-labels; a later ``train`` starts from them
  export      write the trained student (DIR's latest checkpoint or ``config.eval.checkpoint``) to
              DIR/export as one sentence-transformers model (a query/document Router) whose two
              route directories are HF directories too
  similarity  encode the config's few sentences with teacher and student (configs/demo.py:similarity)
"""
from __future__ import annotations

import json
import logging as std_logging
import sys
import time
from pathlib import Path

import jax
import numpy as np
from absl import app, flags, logging
from etils import epath
from ml_collections import config_flags

from edistill import config_lib, distributed, host
from edistill.retrieval import encode as encode_lib
from edistill.models import zoo

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (configs/X.py[:arg]); absent: the config.json --workdir was trained with.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.")
_MODE = flags.DEFINE_enum("mode", None, list(config_lib.MODES), "Overrides config.mode.")
flags.mark_flags_as_required(["workdir"])


def embed(pre: zoo.Pretrained, texts, max_length: int) -> np.ndarray:
  """``[N, D]`` float32 embeddings of a few texts."""
  fn = lambda p, i, m: pre.module.apply({"params": p}, i, m)
  return encode_lib.encode(fn, pre.params, pre.tokenizer, list(texts), max_length, desc=None)


def similarity_table(name: str, sims: np.ndarray, queries, documents) -> str:
  """Markdown table of query x document cosine similarities, best per row in bold."""
  heads = [d.split(":")[0][:12] for d in documents]
  lines = [f"### {name}", "", "| query | " + " | ".join(heads) + " |", "|---" * (len(heads) + 1) + "|"]
  for q, row in zip(queries, sims):
    cells = [f"**{s:.3f}**" if j == row.argmax() else f"{s:.3f}" for j, s in enumerate(row)]
    lines.append(f"| {q[:40]} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def run_similarity(config, workdir: Path) -> str:
  tables = []
  for role in ("teacher", "student"):
    enc = config[role]
    start = time.perf_counter()
    pre = zoo.load_from_config(enc)
    q = embed(pre, list(config.queries), config.data.max_query_length)
    d = embed(pre, list(config.documents), config.data.max_doc_length)
    n_params = sum(x.size for x in jax.tree.leaves(pre.params))
    logging.info("%s %s: %.1fM params, encoded in %.1fs", role, enc.name, n_params / 1e6,
                 time.perf_counter() - start)
    tables.append(similarity_table(f"{role}: {enc.name} ({n_params / 1e6:.1f}M params)",
                                   q @ d.T, config.queries, config.documents))
  text = "\n\n".join(tables) + "\n"
  if distributed.is_writer():
    (workdir / "similarity.md").write_text(text)
  return text


def run_export(config, workdir) -> str:
  """The trained student as one sentence-transformers model under ``workdir/export`` (models/st_router.py):
  its "query" route is the query tower at ``data.max_query_length``; its "document" route, at
  ``data.max_doc_length``, the same tower (tied), the document tower (untied) or the teacher whose
  document embeddings an asymmetric student was trained and evaluated against (its weights shipped,
  so the export is complete offline). Each route directory is an HF directory too. Returns the
  manifest ``edistill_export.json``."""
  from edistill import checkpoint
  from edistill.eval import suite
  from edistill.models import dual_encoder, hf_import, st_router
  if "://" in str(workdir):
    raise ValueError(f"--mode export writes to a local directory; {workdir} is not one.")
  if jax.process_count() > 1:
    raise ValueError("--mode export runs in one process: start it on one host, without config.distributed.")
  step, params = checkpoint.latest_params(
      epath.Path(config.eval.checkpoint) if config.eval.checkpoint else workdir / "checkpoints",
      " to export (train first, or set config.eval.checkpoint)")
  pre = zoo.load_from_config(config.student)
  kind = config.student.kind
  student = dual_encoder.DualEncoder(pre.module, pre.module if kind == "untied" else None, kind)
  towers = dual_encoder.standalone_towers(student, params)
  out = Path(workdir) / "export"
  tmp = hf_import.fresh_tmp(out)
  lengths = {"query": config.data.max_query_length, "document": config.data.max_doc_length}
  hf_import.export_encoder(*towers["encoder" if kind == "tied" else "query_encoder"], tmp / "query", pre.path,
                           lengths["query"])
  sources = {"query": f"student query tower ({zoo.identity(config.student.name)})"}
  if kind == "asymmetric":  # Its query vectors live in the teacher's document space.
    teacher = suite.retrieval_teacher(config)
    tpre = zoo.load_from_config(teacher)
    hf_import.export_encoder(tpre.module, tpre.params, tmp / "document", tpre.path, lengths["document"])
    sources["document"] = f"teacher {zoo.identity(teacher.name)}"
  else:
    hf_import.export_encoder(*towers["encoder" if kind == "tied" else "doc_encoder"], tmp / "document", pre.path,
                             lengths["document"])
    sources["document"] = "student query tower again" if kind == "tied" else "student document tower"
  st_router.write_router(tmp)
  manifest = {"step": step, "student": zoo.identity(config.student.name), "kind": kind, "similarity": "dot",
              "routes": {r: {"path": r, "max_seq_length": lengths[r], "encoder": sources[r]} for r in st_router.ROUTES}}
  (tmp / "edistill_export.json").write_text(json.dumps(manifest, indent=2))
  hf_import.replace_dir(tmp, out)
  return json.dumps(manifest, indent=2)


class _QuietLibraries(std_logging.Filter):
  """Drops INFO chatter from Orbax, JAX internals and TFDS (one line per checkpoint phase, per dataset
  info read), and TFDS's "Variant folder ... has no dataset_info.json" (it probes a copy it is still
  writing); keeps every other warning."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    if "/tensorflow_datasets/" in record.pathname and "Variant folder" in str(record.msg):
      return False
    return record.levelno >= std_logging.WARNING or not any(
        part in record.pathname for part in ("/orbax/", "/jax/_src/", "/tensorflow_datasets/"))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.get_absl_handler().addFilter(_QuietLibraries())
  config = _CONFIG.value
  if config is None:  # Evaluate / export / resume a workdir as it was trained.
    config = config_lib.from_json(epath.Path(_WORKDIR.value) / "config.json")
    logging.info("config: %s", epath.Path(_WORKDIR.value) / "config.json")
  if _MODE.value:
    with config.unlocked():
      config.mode = _MODE.value
  config_lib.validate(config)
  host.tune_for_cpu_run()  # Before jax starts its threads (see host.py).
  distributed.initialize(config.get("distributed"))  # Before anything touches a JAX backend.
  workdir = epath.Path(_WORKDIR.value)  # A local path or gs://BUCKET/PATH (multi-host: shared by all).
  workdir.mkdir(parents=True, exist_ok=True)
  if distributed.is_writer() and config.mode != "train":  # Training writes config.json once it has started.
    (workdir / f"config_{config.mode}.json").write_text(config.to_json_best_effort(indent=2))
  if config.mode == "similarity":
    print(run_similarity(config, workdir))
  elif config.mode == "train":
    from edistill import recipes
    from edistill.train import loop
    try:
      metrics = recipes.train(config, workdir)
    except loop.Preempted as e:  # Saved; no evaluation of a half-trained student. Exit as killed by it.
      logging.warning("%s", e)
      sys.exit(128 + e.signum)
    if distributed.is_writer():
      print(json.dumps(metrics, indent=2))
    if config.eval.at_end:  # Every process: the evaluation's encodings and searches are split across them.
      text = evaluate(config, workdir)
      if distributed.is_writer():
        print(text)
  elif config.mode == "eval":
    print(evaluate(config, workdir))
  elif config.mode == "cross_domain":
    from edistill.eval import report, suite
    print(report.domains_table(suite.run_domains(config, workdir, multihost=jax.process_count() > 1), config.data))
  elif config.mode == "export":
    print(run_export(config, workdir))
  elif config.mode == "precompute":
    from edistill import recipes
    print(recipes.precompute(config))


def evaluate(config, workdir: Path) -> str:
  """The results tables of ``config.evals``, or of its recipe: retrieval (eval/suite.py), re-ranking for a CE."""
  from edistill import recipes
  return recipes.evaluate(config, workdir)


def overrides_without_config(argv) -> str | None:
  """The error for ``--config.<field>=...`` overrides given without ``--config`` (absl would only say
  "Unknown command line flag"), else None."""
  given = any(a == "--config" or a.startswith("--config=") for a in argv)
  overrides = [a.split("=")[0] for a in argv if a.startswith("--config.")]
  if overrides and not given:
    return (f"{overrides[0]} overrides a config, but no --config was given; to override the config.json a "
            f"workdir was trained with, pass --config configs/workdir.py:WORKDIR.")
  return None


if __name__ == "__main__":
  if (error := overrides_without_config(sys.argv[1:])):
    sys.exit(f"error: {error}")
  app.run(main)
