"""``--mode eval`` and evaluation during training: teacher, zero-shot student, trained student, BM25.

The trained student comes from a workdir's checkpoint (or ``config.eval.checkpoint``): its query
tower (+ projection) encodes queries; its documents are the teacher's (asymmetric) or its own.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import numpy as np
from absl import logging
from etils import epath

from edistill import cache, checkpoint
from edistill.data import tfds_builders
from edistill.retrieval import encode as encode_lib
from edistill.eval import evaluator, report
from edistill.models import zoo
from edistill.models.dual_encoder import project
from edistill.registry import Registry


def _encoder_fn(pre: zoo.Pretrained, projection=None):
  module = pre.module

  def fn(params, ids, mask):
    emb = module.apply({"params": params["tower"]}, ids, mask)
    return project(params.get("projection"), emb)

  return fn


def pretrained_model(name: str, pre: zoo.Pretrained) -> evaluator.DenseModel:
  fn = _encoder_fn(pre)
  params = {"tower": pre.params}
  return evaluator.DenseModel(name, fn, params, pre.tokenizer, fn, params, pre.tokenizer,
                              num_params=evaluator.count_params(pre.params))


def retrieval_teacher(cfg):
  """The dual encoder whose document embeddings an asymmetric student scores against and whose row the
  retrieval tables call ``teacher``: ``cfg.teacher``, or ``cross_encoder.dual_encoder`` when the
  teacher is a cross-encoder (``teacher.kind="cross"``)."""
  return cfg.cross_encoder.dual_encoder if cfg.teacher.kind == "cross" else cfg.teacher


def student_model(cfg, student_pre: zoo.Pretrained, params: dict, teacher_docs: np.ndarray | None) -> evaluator.DenseModel:
  """The trained student: query tower (+ query projection when asymmetric) and its document side."""
  fn = _encoder_fn(student_pre)
  kind = cfg.student.kind
  q_params = {"tower": params["query_tower"]}
  if kind == "asymmetric":
    if teacher_docs is None:
      raise ValueError("an asymmetric student is evaluated against the teacher's document embeddings.")
    if "query_projection" in params:
      q_params["projection"] = params["query_projection"]
    return evaluator.DenseModel("student", fn, q_params, student_pre.tokenizer, doc_embeddings=teacher_docs,
                                num_params=evaluator.count_params(q_params))
  d_params = {"tower": params["doc_tower" if kind == "untied" else "query_tower"]}
  return evaluator.DenseModel("student", fn, q_params, student_pre.tokenizer, fn, d_params, student_pre.tokenizer,
                              num_params=evaluator.count_params(q_params))


def load_split(cfg, split: str):
  b = tfds_builders.prepare_config(cfg.data, cfg.seed)
  return tfds_builders.load(b, split)


@dataclasses.dataclass
class Context:
  """What the named models of one evaluation share: its config, split data, options, and the
  teacher's document embeddings (computed once, for the teacher's row and an asymmetric student's)."""

  cfg: Any
  workdir: epath.Path
  data: Any
  scann: bool
  metrics: tuple[str, ...]
  student_params: dict | None = None
  multihost: bool = False  # Every process evaluates together: encodings and exact search split across them.
  cache_dir: Path = dataclasses.field(default_factory=lambda: Path(zoo.cache_dir()) / "embeddings")
  _teacher: tuple | None = None
  _student: zoo.Pretrained | None = None

  def student(self) -> zoo.Pretrained:
    """The student's pretrained start (loaded once: the zero-shot row and the trained student share it)."""
    if self._student is None:
      self._student = zoo.load_from_config(self.cfg.student)
    return self._student

  def teacher(self) -> tuple[zoo.Pretrained, np.ndarray]:
    """(the teacher, its document embeddings [N, D]), cached on disk and shared with training's tables."""
    if self._teacher is None:
      pre = zoo.load_from_config(retrieval_teacher(self.cfg))
      docs = encode_lib.encode_pretrained(pre, self.data.doc_ids, self.data.doc_texts, self.cfg.data.max_doc_length,
                                          self.cache_dir, desc="teacher documents", multihost=self.multihost)
      self._teacher = pre, docs
    return self._teacher

  def doc_tokenizer(self):
    """The tokenizer of a document encoder the rows loaded (the teacher's, else the student's), or
    None (BM25 alone): what the header counts cut documents with."""
    loaded = self._teacher[0] if self._teacher is not None else self._student
    return loaded.tokenizer if loaded is not None else None

  def dense_row(self, model: evaluator.DenseModel, q: np.ndarray, d: np.ndarray) -> dict[str, Any]:
    return {**evaluator.dense_scores(q, d, self.data, self.cfg.eval.k, self.scann, metrics=self.metrics,
                                     multihost=self.multihost),
            "params_m": model.num_params / 1e6,
            "query_ms": evaluator.query_latency_ms(model, self.data.query_texts, self.cfg.data.max_query_length)}


@dataclasses.dataclass(frozen=True)
class NamedModel:
  """name: a ``config.eval.models`` / ``config.evals.<entry>.models`` entry; row(ctx) -> its metrics."""

  name: str
  row: Callable[[Context], dict[str, Any]]


MODELS = Registry("evaluated model")


def _teacher_row(ctx: Context) -> dict[str, Any]:
  pre, docs = ctx.teacher()
  model = pretrained_model("teacher", pre)
  q = evaluator.encode_queries(model, ctx.data, ctx.cfg.data.max_query_length, multihost=ctx.multihost)
  return ctx.dense_row(model, q, docs)


def _zero_shot_row(ctx: Context) -> dict[str, Any]:
  model = pretrained_model("student_zero_shot", ctx.student())
  q, d = evaluator.embed(model, ctx.data, ctx.cfg.data.max_query_length, ctx.cfg.data.max_doc_length, ctx.cache_dir,
                         multihost=ctx.multihost)
  return ctx.dense_row(model, q, d)


def _student_row(ctx: Context) -> dict[str, Any]:
  cfg, params = ctx.cfg, ctx.student_params
  if params is None:
    ckpt_dir = epath.Path(cfg.eval.checkpoint) if cfg.eval.checkpoint else ctx.workdir / "checkpoints"
    _, params = checkpoint.latest_params(
        ckpt_dir, " to evaluate the student from (train first, or set config.eval.checkpoint)")
  docs = ctx.teacher()[1] if cfg.student.kind == "asymmetric" else None
  model = student_model(cfg, ctx.student(), params, docs)
  q, d = evaluator.embed(model, ctx.data, cfg.data.max_query_length, cfg.data.max_doc_length, None,
                         multihost=ctx.multihost)
  return ctx.dense_row(model, q, d)


def _bm25_row(ctx: Context) -> dict[str, Any]:
  return evaluator.bm25(ctx.data, ctx.cfg.eval.k, metrics=ctx.metrics)


for _name, _row in (("teacher", _teacher_row), ("student_zero_shot", _zero_shot_row), ("student", _student_row),
                    ("bm25", _bm25_row)):
  MODELS.register(NamedModel(_name, _row))


def run(cfg, workdir: str | Path, split: str | None = None, student_params: dict | None = None,
        models=None, scann: bool | None = None, name: str | None = None,
        metrics: Sequence[str] = report.METRICS, multihost: bool = False) -> dict[str, dict[str, float]]:
  """Evaluates ``models`` (default ``cfg.eval.models``, rows in ``MODELS`` order) on ``split``; writes
  results_<dataset>_<name>.{json,md}, per_query_<dataset>_<name>.json and
  run_<dataset>_<name>_<model>.trec (``dataset``: ``report.data_name(cfg.data)``; ``name`` defaults to the
  split), headed by the lengths used and how many documents they cut. ``multihost``: every process calls this
  together and the encodings and exact searches are split across them (else each computes all)."""
  workdir = epath.Path(workdir)  # Local or gs://.
  split = split or cfg.eval.split
  models = tuple(models or cfg.eval.models)
  unknown = set(models) - set(MODELS)
  if unknown:
    raise ValueError(f"config.eval.models has unknown entries {sorted(unknown)}; expected some of {tuple(MODELS)}.")
  ctx = Context(cfg, workdir, load_split(cfg, split), cfg.eval.scann if scann is None else scann, tuple(metrics),
                student_params, multihost and jax.process_count() > 1)
  rows = {m.name: m.row(ctx) for m in MODELS.values() if m.name in models}
  name = f"{report.data_name(cfg.data)}_{name or split}"
  header = (f"{split_heading(cfg, split, ctx.data, ctx.doc_tokenizer(), ctx.cache_dir)}"
            f"Exact search{' (ScaNN rows: scann/*)' if ctx.scann else ''}; query latency = batch 1, CPU; "
            f"95 % interval: paired bootstrap of % teacher MRR@10 over these queries (per_query_{name}.json).\n\n")
  rows, runs = report.split_runs(rows)
  rows, per_query = report.teacher_intervals(rows)
  if jax.process_index() == 0:  # Only process 0 writes results (every process computes them).
    report.write_results(workdir, name, rows, header, per_query, metrics=metrics, runs=runs)
  return rows


def truncated(tokenizer, texts: Sequence[str], max_length: int, sample: int = 10_000, seed: int = 0) -> tuple[int, int]:
  """(how many of a seeded sample of at most ``sample`` texts are longer than ``max_length`` tokens,
  special tokens included, and so are cut; the sample's size)."""
  rows = np.random.default_rng(seed).permutation(len(texts))[:sample] if len(texts) > sample else np.arange(len(texts))
  if not len(rows):
    return 0, 0
  ids = tokenizer([texts[i] for i in rows], add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
  return sum(len(x) > max_length for x in ids), len(rows)


def truncated_cached(cache_dir: Path | None, tokenizer, texts: Sequence[str], max_length: int) -> tuple[int, int]:
  """``truncated``, kept in ``cache_dir`` under a key of the tokenizer's definition, the texts and the
  length (a results header is written at every evaluation of a run; counting tokenizes up to 10k
  documents, ~1 s). Without a cache dir, or for a tokenizer without a serialisable fast backend,
  counted every call."""
  backend = getattr(tokenizer, "backend_tokenizer", None)
  if cache_dir is None or backend is None:
    return truncated(tokenizer, texts, max_length)
  key = cache.content_key(tokenizer=backend.to_str(), texts=cache.texts_fingerprint(texts), max_length=max_length)
  path = Path(cache_dir) / f"truncated_{key}.json"
  if path.exists():
    return tuple(json.loads(path.read_text()))
  counts = truncated(tokenizer, texts, max_length)
  cache.write_text_atomic(path, json.dumps(counts))  # Makes the directory.
  return counts


def split_heading(cfg, split: str, data, tokenizer=None, cache_dir: Path | None = None) -> str:
  """A results file's first lines: the dataset, split, sizes and lengths used, and (given the document
  encoder's tokenizer) how many documents ``data.max_doc_length`` cuts (kept in ``cache_dir``)."""
  d = cfg.data
  cut = ""
  if tokenizer is not None:
    n, of = truncated_cached(cache_dir, tokenizer, data.doc_texts, d.max_doc_length)
    if of:
      sampled = f" (a seeded sample of {of:,})" if of < len(data.doc_texts) else ""
      cut = f"; {n:,} of {of:,} documents{sampled} ({100 * n / of:.1f} %) are longer and cut"
  return (f"# {report.data_name(d)} {split}: {len(data.query_ids)} queries, {len(data.doc_ids)} documents\n\n"
          f"Lengths: queries {d.max_query_length} tokens, documents {d.max_doc_length}{cut}.\n\n")


def parse_domain(spec: str) -> tuple[str, dict]:
  """A ``config.eval.domains`` entry -> (its name, the ``config.data`` fields it sets).

  ``"SOURCE"`` or ``"SOURCE:CORPUS_SIZE"`` is an offline benchmark (stdlib, wordnet_gcide, debian) with
  its full test and dev pools (``benchmarks.BENCHMARKS[source].pools``: 1,000 / 500 test / dev queries for WordNet and
  Debian), the shape a training run with ``data.n_test`` / ``n_dev`` at the pool sizes sees;
  ``"beir:DIR"`` is a BEIR directory (its ``qrels/test.tsv``).
  """
  from edistill.data import benchmarks
  source, _, arg = spec.partition(":")
  if source == "beir":
    if not arg:
      raise ValueError(f"config.eval.domains entry {spec!r}: 'beir:DIR' needs the directory.")
    return report.dataset_name("beir", arg), {"source": "beir", "path": arg, "corpus_size": 0, "n_test": 0, "n_dev": 0}
  if source not in tuple(benchmarks.BENCHMARKS) or (arg and not arg.isdigit()):
    raise ValueError(f"config.eval.domains entry {spec!r}: expected SOURCE[:CORPUS_SIZE] with SOURCE one of "
                     f"{tuple(benchmarks.BENCHMARKS)}, or beir:DIR.")
  test, dev = benchmarks.BENCHMARKS[source].pools
  size = int(arg) if arg else 0
  return report.dataset_name(source, "", size), {"source": source, "path": "", "corpus_size": size,
                                                 "n_test": test, "n_dev": dev}


def run_domains(cfg, workdir: str | Path, domains=None, models=None, scann: bool | None = None,
                metrics: Sequence[str] = report.METRICS, student_params: dict | None = None,
                name: str = "cross_domain", multihost: bool = False) -> dict[str, dict[str, dict[str, float]]]:
  """Evaluates ``models`` (default ``cfg.eval.models``) on the test split of each of ``domains``
  (default ``cfg.eval.domains``): results_<domain>_test.{json,md} each, and one table over all of
  them in results_<name>.md. Returns {domain: rows}."""
  domains = tuple(domains or cfg.eval.domains)
  if not domains:
    raise ValueError("config.eval.domains is empty: name the benchmarks to evaluate on, e.g. "
                     "('wordnet_gcide:10000', 'debian:10000', 'stdlib', 'beir:/path/to/dir').")
  out = {}
  for spec in domains:
    domain, data = parse_domain(spec)
    dcfg = cfg.copy_and_resolve_references()
    with dcfg.unlocked():
      dcfg.data.update(data)
      # Training-only fields of the trained-on domain.
      dcfg.data.update(unlabeled_queries=0, unlabeled_pool="slice", unlabeled_path="", unlabeled_extra="")
      dcfg.querygen.ratio = 0.0
    logging.info("Cross-domain evaluation on %s", domain)
    out[domain] = run(dcfg, workdir, split="test", student_params=student_params, models=models, scann=scann,
                      metrics=metrics, multihost=multihost)  # results_<domain>_test.
  if jax.process_index() == 0:
    cache.write_text_atomic(epath.Path(workdir) / f"results_{name}.md", report.domains_table(out, cfg.data))
  return out
