"""The EmbedDistill recipe: a dual-encoder teacher -> a dual-encoder student (tied, untied or asymmetric).

``build`` prepares the training data (with generated queries at ``querygen.ratio``), loads the
student, precomputes the teacher's query and document tables once (cached, split across the
processes of a pod), adds teacher-labeled unlabeled queries and teacher-mined hard negatives, starts
the projection heads (an asymmetric student's query projection at the least-squares fit of the
teacher's space), and hands the loop a ``Setup`` whose step minimises ``objective.compute_loss``.
"""
from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Callable

import jax
import numpy as np
from absl import logging

from edistill import cache, distributed, objective, teachers
from edistill.data import mining, pipeline, querygen, tables as tables_lib, tfds_builders
from edistill.eval import report, suite
from edistill.models import zoo
from edistill.models.dual_encoder import DualEncoder, init_projection
from edistill.recipes import registry
from edistill.retrieval import encode as encode_lib
from edistill.train import loop, state as state_lib
from edistill.train.step import jit_train_step


def lstsq_projection(student: np.ndarray, teacher: np.ndarray, ridge: float = 1e-3) -> dict[str, np.ndarray]:
  """Ridge least-squares fit of ``teacher ~ student @ kernel + bias`` ([N, Ds] -> [N, Dt]).

  Starting the projection here (on the zero-shot student's embeddings of the training queries)
  puts an asymmetric student's queries in the teacher's space from step 0, instead of spending the
  first few hundred steps learning a random 384 x 768 map while the query tower drifts.
  """
  x = np.concatenate([student, np.ones((len(student), 1), student.dtype)], axis=1).astype(np.float64)
  gram = x.T @ x + ridge * len(x) * np.eye(x.shape[1])
  w = np.linalg.solve(gram, x.T @ teacher.astype(np.float64))
  return {"kernel": w[:-1].astype(np.float32), "bias": w[-1].astype(np.float32)}


def lstsq_start(cfg, student_pre, data, teacher_queries, multihost: bool = False) -> dict[str, np.ndarray]:
  """``lstsq_projection`` of the zero-shot student's embeddings of ``data``'s queries (cached, as
  ``cfg.data.max_query_length`` cuts them) onto the teacher's ``teacher_queries`` [Nq, Dt] of the same rows."""
  student = encode_lib.encode_pretrained(student_pre, data.query_ids, data.query_texts, cfg.data.max_query_length,
                                         Path(zoo.cache_dir()) / "embeddings", desc="student queries",
                                         multihost=multihost)
  return lstsq_projection(student, np.asarray(teacher_queries))


def add_projections(params: dict, s_dim: int, t_dim: int, rng: jax.Array, *, query: bool, doc: bool,
                    query_init: Callable[[], dict] | None = None) -> dict:
  """Adds the heads [s_dim -> t_dim] into the teacher's space that the student needs, when the widths
  differ: ``query_projection`` (``query_init()``, else random from ``fold_in(rng, 0)``) and
  ``doc_projection`` (random from ``fold_in(rng, 1)``). Returns ``params``."""
  if s_dim != t_dim:
    if query:
      params["query_projection"] = (query_init() if query_init else
                                    init_projection(jax.random.fold_in(rng, 0), s_dim, t_dim))
    if doc:
      params["doc_projection"] = init_projection(jax.random.fold_in(rng, 1), s_dim, t_dim)
  return params


def training_data(cfg):
  """The train split, with generated queries mixed in at ``cfg.querygen.ratio``."""
  b = tfds_builders.prepare_config(cfg.data, cfg.seed)
  data = tfds_builders.load(b, cfg.data.split)
  if cfg.querygen.ratio > 0:
    queries = dict(zip(data.query_ids, data.query_texts))
    corpus = dict(zip(data.doc_ids, data.doc_texts))
    n_pairs = sum(1 for ds in data.qrels.values() for r in ds.values() if r > 0)
    want = int(round(n_pairs * cfg.querygen.ratio / (1 - cfg.querygen.ratio)))
    key = cache.content_key(method="model_free", num=want, ict=cfg.querygen.ict_fraction, seed=cfg.seed,
                              inputs=cache.texts_fingerprint(data.query_texts + data.doc_texts))
    gen = querygen.cached(Path(zoo.cache_dir()) / "querygen" / f"{key}.jsonl",
                          lambda: querygen.generate_model_free(queries, data.qrels, corpus, want,
                                                               cfg.querygen.ict_fraction, cfg.seed))
    queries, qrels = querygen.mix(queries, data.qrels, gen, cfg.querygen.ratio, cfg.seed)
    logging.info("Mixed %d generated queries into %d training pairs", len(queries) - len(data.query_ids), n_pairs)
    data = dataclasses.replace(data, query_ids=list(queries), query_texts=list(queries.values()), qrels=qrels)
  return data


def pseudo_labeled(data, ids: list[str], texts: list[str], query_emb: np.ndarray, doc_emb: np.ndarray):
  """``data`` plus unlabeled queries, each relevant to the teacher's top-1 document.

  query_emb: [n, Dt] teacher embeddings of ``texts``; doc_emb: [Nd, Dt] of ``data``'s documents.
  Returns (the extended RetrievalSet, the row indices of the chosen documents [n]).
  """
  clash = sorted(set(ids) & set(data.query_ids))
  if clash:
    raise ValueError(f"unlabeled query ids {clash[:5]} are also labeled training queries.")
  top1 = np.argmax(query_emb @ doc_emb.T, axis=1) if len(ids) else np.zeros(0, np.int64)
  qrels = {**data.qrels, **{q: {data.doc_ids[d]: 1} for q, d in zip(ids, top1)}}
  return dataclasses.replace(data, query_ids=[*data.query_ids, *ids], query_texts=[*data.query_texts, *texts],
                             qrels=qrels), top1


def with_unlabeled(cfg, data, tpre, tables: dict[str, np.ndarray], multihost: bool = False):
  """Adds ``cfg.data.unlabeled_queries`` unlabeled queries (seeded choice of the pool) and every query
  of ``cfg.data.unlabeled_extra``, with teacher pseudo-labels (``multihost``: as in ``build``). Pool and
  extra are encoded as separate cached tables, so adding an extra pool reuses the pool's."""
  d = cfg.data
  encode = functools.partial(encode_lib.encode_pretrained, tpre, max_length=d.max_query_length,
                             cache_dir=Path(zoo.cache_dir()) / "embeddings", batch_size=cfg.teacher.batch_size,
                             multihost=multihost)
  ids, texts, embs = [], [], []
  if d.unlabeled_queries:
    pool = distributed.process0_first_if(multihost, lambda: tfds_builders.unlabeled_queries(
        d.source, d.path, d.corpus_size, cfg.seed, d.errors, d.unlabeled_path, pool=d.unlabeled_pool,
        n_test=d.n_test, n_dev=d.n_dev), "unlabeled")
    pool_ids = sorted(pool)
    pick = np.sort(np.random.default_rng([cfg.seed, 11]).permutation(len(pool_ids))[:d.unlabeled_queries])
    ids = [pool_ids[i] for i in pick]
    texts = [pool[q] for q in ids]
    if len(ids) < d.unlabeled_queries:
      logging.warning("config.data.unlabeled_queries=%d but only %d are available; using them all.",
                      d.unlabeled_queries, len(ids))
    embs.append(encode(ids, texts, desc="teacher unlabeled queries"))
  if d.unlabeled_extra:
    extra = distributed.process0_first_if(multihost, lambda: tfds_builders.extra_unlabeled_queries(
        d.source, d.unlabeled_extra, d.path, d.corpus_size, cfg.seed, d.errors, n_test=d.n_test, n_dev=d.n_dev),
        "unlabeled extra")
    clash = sorted(set(extra) & (set(ids) | set(data.query_ids)))
    if clash:
      raise ValueError(f"config.data.unlabeled_extra={d.unlabeled_extra!r}: {len(clash)} query ids are already "
                       f"training or unlabeled queries, e.g. {clash[0]!r}.")
    extra_ids = sorted(extra)
    extra_texts = [extra[q] for q in extra_ids]
    embs.append(encode(extra_ids, extra_texts, desc="teacher extra unlabeled queries"))
    ids, texts = ids + extra_ids, texts + extra_texts
  emb = np.concatenate(embs)
  data, _ = pseudo_labeled(data, ids, texts, emb, np.asarray(tables["docs"]))
  logging.info("Added %d unlabeled queries (teacher top-1 pseudo-labels)", len(ids))
  return data, {**tables, "queries": tables_lib.as_table(tables["queries"]).concat(emb)}


def teacher_tables(tpre, data, data_cfg, batch_size: int, multihost: bool = False) -> dict:
  """A dual-encoder teacher's ``{"queries": [Nq, Dt], "docs": [Nd, Dt]}`` over ``data``, cached on disk
  and memory-mapped (training gathers its batch's rows on the host: ``teachers.Teacher.host_inputs``)."""
  emb_cache = Path(zoo.cache_dir()) / "embeddings"
  kw = dict(batch_size=batch_size, multihost=multihost, as_table=True)
  return {"queries": encode_lib.encode_pretrained(tpre, data.query_ids, data.query_texts, data_cfg.max_query_length,
                                                  emb_cache, desc="teacher queries", **kw),
          "docs": encode_lib.encode_pretrained(tpre, data.doc_ids, data.doc_texts, data_cfg.max_doc_length,
                                               emb_cache, desc="teacher documents", **kw)}


def with_teacher_negatives(data, tables: dict[str, np.ndarray], depth: int):
  """``data`` whose training queries' hard negatives are the teacher's top ``depth`` non-positives
  (``data/mining.py``; they replace a dataset's own for those queries). Every process mines the same."""
  positives = pipeline.relevant_docs(data.qrels, data.query_ids, data.doc_ids)
  mined = mining.teacher_negatives(np.asarray(tables["queries"]), np.asarray(tables["docs"]), positives, depth)
  hard = {data.query_ids[q]: [data.doc_ids[d] for d in docs] for q, docs in mined.items()}
  logging.info("Mined %d teacher hard negatives for %d queries (depth %d)", sum(map(len, hard.values())), len(hard),
               depth)
  return dataclasses.replace(data, hard_negatives={**data.hard_negatives, **hard})


def student_parts(cfg, multihost: bool = False):
  """(the packaged student, its ``DualEncoder``, its initial params) for ``cfg.student``."""
  student_pre = distributed.process0_first_if(multihost, lambda: zoo.load_from_config(cfg.student), "student")
  kind = cfg.student.kind
  module = student_pre.module.clone(remat=cfg.train.remat == "layer")
  student = DualEncoder(module, module if kind == "untied" else None, kind)
  params = {"query_tower": student_pre.params}
  if kind == "untied":
    params["doc_tower"] = jax.tree.map(np.copy, student_pre.params)
  return student_pre, student, params


def optimizer(tc):
  """The optax transform of a config's ``train`` section."""
  return state_lib.make_optimizer(tc.learning_rate, tc.steps, tc.warmup_steps, tc.weight_decay, tc.grad_clip,
                                  tc.schedule, tuple(tc.frozen), pull=tc.pull_to_init)


def student_pipeline(cfg, data, tokenizer, process_index: int, process_count: int) -> pipeline.Pipeline:
  """Document tokens only where something encodes documents in the step (a student's document tower,
  an online teacher)."""
  doc_tokens = cfg.student.kind != "asymmetric" or cfg.teacher.mode == "online" or cfg.teacher.kind == "cross"
  return pipeline.from_retrieval_set(
      data, tokenizer, tokenizer, cfg.data.max_query_length, cfg.data.max_doc_length,
      cfg.train.batch_size, cfg.data.num_hard_negatives, cfg.seed, process_index, process_count,
      cfg.data.bucket_window, cfg.data.pad_multiple, doc_tokens=doc_tokens)


def build(cfg, process_index: int = 0, process_count: int = 1, multihost: bool = False) -> loop.Setup:
  """Data, student, teacher (tables precomputed once and cached) and optimizer for ``cfg``.

  ``multihost``: every process calls ``build`` together. Process 0 prepares the data and models first
  (they fill caches), then the teacher tables and lstsq student encodings are split across processes
  (``encode_lib.encode_across_processes``). Without it, a multi-process caller must run ``build`` on
  process 0 first (``distributed.process0_first``).
  """
  loss = objective.loss_config(cfg.loss)
  data = distributed.process0_first_if(multihost, lambda: training_data(cfg), "data")
  student_pre, student, params = student_parts(cfg, multihost)
  kind = cfg.student.kind
  teacher, teacher_params = None, None
  if loss.needs_teacher() or kind == "asymmetric":
    tpre = distributed.process0_first_if(multihost, lambda: zoo.load_from_config(cfg.teacher), "teacher")
    teacher = teachers.Teacher(tpre.module, cfg.teacher.mode, cfg.teacher.get("table_dtype", "float32"))
    if cfg.teacher.mode == "online":
      if tpre.tokenizer.get_vocab() != student_pre.tokenizer.get_vocab():
        raise ValueError(f"config.teacher.mode='online' needs the student's tokenizer, but {cfg.teacher.name} and "
                         f"{cfg.student.name} tokenize differently; use mode='precomputed'.")
      teacher_params = {"encoder": tpre.params}
      t_dim = tpre.module.output_dim
    else:
      tables = teacher_tables(tpre, data, cfg.data, cfg.teacher.batch_size, multihost)
      if cfg.data.unlabeled_queries or cfg.data.unlabeled_extra:
        data, tables = with_unlabeled(cfg, data, tpre, tables, multihost)
      if cfg.data.teacher_negatives:
        data = with_teacher_negatives(data, tables, cfg.data.teacher_negatives)
      teacher_params = tables
      t_dim = tables["queries"].shape[1]
    query_init = None
    if cfg.student.projection_init == "lstsq" and cfg.teacher.mode == "precomputed":
      query_init = lambda: lstsq_start(cfg, student_pre, data, teacher_params["queries"], multihost)
    add_projections(params, student_pre.module.output_dim, t_dim, jax.random.key(cfg.seed + 1),
                    query=kind == "asymmetric" or bool(loss.query_emb), doc=bool(loss.doc_emb), query_init=query_init)
  pipe = student_pipeline(cfg, data, student_pre.tokenizer, process_index, process_count)
  tx = optimizer(cfg.train)
  step = functools.partial(jit_train_step, student, teacher, loss, tx, grad_cache_chunk=cfg.train.grad_cache_chunk,
                           frozen=tuple(cfg.train.frozen))
  return loop.Setup(pipe, student, teacher, teacher_params, params, student_pre.tokenizer, tx, loss, step, data=data)


def results(cfg, workdir) -> str:
  """The retrieval table of ``cfg.eval.models`` on ``cfg.eval.split`` (``eval/suite.py``); every process
  calls it together, splitting the encodings and searches."""
  return report.results_table(suite.run(cfg, workdir, multihost=jax.process_count() > 1))


registry.register(registry.Recipe("embed_distill", build, "retrieval", results))
