"""The training loop: data, teacher tables, student init, sharded state, steps, metrics, checkpoints.

Resumes from the workdir's latest checkpoint (same batches after resume: the pipeline order is a
function of the step), stops on a non-finite loss without saving the bad state (the last good
checkpoint stays), saves at the end, and on SIGTERM (preemption) saves the current step and raises
``Preempted`` so the caller stops instead of going on to evaluate. On a pod the processes agree at
each log step whether any of them got the signal, so all save the same step together (a process
stopping alone would leave the others waiting in a collective). Only process 0 writes metrics.
"""
from __future__ import annotations

import dataclasses
import functools
import signal
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from etils import epath
from tqdm.auto import tqdm

from edistill import cache, checkpoint, distributed, mesh as mesh_lib, teachers
from edistill.data import mining, pipeline, querygen, tfds_builders
from edistill.retrieval import encode as encode_lib
from edistill.models import zoo
from edistill.models.dual_encoder import DualEncoder, init_projection
from edistill.train import metrics_writer, state as state_lib
from edistill.train.step import LossConfig, jit_train_step


def stop_requested(local: bool, nproc: int) -> bool:
  """Whether any of ``nproc`` processes got SIGTERM (``local``: this one did); every process must call
  it at the same step. A host all-gather (it waits for the devices), hence only at log steps on a pod."""
  if nproc == 1:
    return local
  return bool(np.any(multihost_utils.process_allgather(np.int32(local))))


class NonFiniteLossError(FloatingPointError):
  """The loss became NaN/Inf; the message names the step range since the last good check."""


class Preempted(Exception):
  """Training stopped on a signal after saving ``step``; rerunning the same command resumes there."""

  def __init__(self, signum: int, step: int, directory):
    super().__init__(f"signal {signum}: saved step {step} in {directory}; rerun the same command to resume.")
    self.signum, self.step = signum, step


def loss_config(cfg) -> LossConfig:
  return LossConfig(**{f.name: cfg.loss[f.name] for f in dataclasses.fields(LossConfig)})


@dataclasses.dataclass
class Setup:
  """Everything the loop needs, built from a config (also used by tests and benchmarks)."""

  pipe: pipeline.Pipeline
  student: DualEncoder
  teacher: teachers.Teacher | None
  teacher_params: Any
  init_params: Any
  tokenizer: Any
  tx: Any
  loss: LossConfig
  jit_step: Any = None  # (state_sh, teacher_sh, batch_sh) -> step fn; None: jit_train_step (edistill/train/ce.py sets it)
  data: Any = None  # The RetrievalSet the pipeline was built from (unlabeled queries included), for benchmarks.


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
  if cfg.cross_encoder.mine == "bm25" and (cfg.student.kind == "cross" or cfg.cross_encoder.checkpoint):
    from edistill.train import ce  # Training a cross-encoder, or distilling one: BM25 hard negatives.
    data = ce.with_mined_negatives(data, cfg.cross_encoder.mine_depth)
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
  """Adds ``cfg.data.unlabeled_queries`` unlabeled queries (seeded choice) with teacher pseudo-labels
  (``multihost``: as in ``build``)."""
  d = cfg.data
  pool = _process0_first_if(multihost, lambda: tfds_builders.unlabeled_queries(
      d.source, d.path, d.corpus_size, cfg.seed, d.errors, d.unlabeled_path, pool=d.unlabeled_pool,
      n_test=d.n_test, n_dev=d.n_dev), "unlabeled")
  pool_ids = sorted(pool)
  pick = np.sort(np.random.default_rng([cfg.seed, 11]).permutation(len(pool_ids))[:cfg.data.unlabeled_queries])
  ids = [pool_ids[i] for i in pick]
  texts = [pool[q] for q in ids]
  if len(ids) < cfg.data.unlabeled_queries:
    logging.warning("config.data.unlabeled_queries=%d but only %d are available; using them all.",
                    cfg.data.unlabeled_queries, len(ids))
  emb = encode_lib.encode_pretrained(tpre, ids, texts, cfg.data.max_query_length, Path(zoo.cache_dir()) / "embeddings",
                                     batch_size=cfg.teacher.batch_size, desc="teacher unlabeled queries",
                                     multihost=multihost)
  data, _ = pseudo_labeled(data, ids, texts, emb, tables["docs"])
  logging.info("Added %d unlabeled queries (teacher top-1 pseudo-labels)", len(ids))
  return data, {**tables, "queries": np.concatenate([tables["queries"], emb])}


def with_teacher_negatives(data, tables: dict[str, np.ndarray], depth: int):
  """``data`` whose training queries' hard negatives are the teacher's top ``depth`` non-positives
  (``data/mining.py``; they replace a dataset's own for those queries). Every process mines the same."""
  positives = pipeline.relevant_docs(data.qrels, data.query_ids, data.doc_ids)
  mined = mining.teacher_negatives(tables["queries"], tables["docs"], positives, depth)
  hard = {data.query_ids[q]: [data.doc_ids[d] for d in docs] for q, docs in mined.items()}
  logging.info("Mined %d teacher hard negatives for %d queries (depth %d)", sum(map(len, hard.values())), len(hard),
               depth)
  return dataclasses.replace(data, hard_negatives={**data.hard_negatives, **hard})


def _process0_first_if(multihost: bool, fn, name: str):
  """``distributed.process0_first(fn)`` when ``multihost``, else just ``fn()``."""
  return distributed.process0_first(fn, f"build:{name}") if multihost else fn()


def build(cfg, process_index: int = 0, process_count: int = 1, multihost: bool = False) -> Setup:
  """Data, student, teacher (tables precomputed once and cached) and optimizer for ``cfg``.

  ``multihost``: every process calls ``build`` together. Process 0 prepares the data and models first
  (they fill caches), then the teacher tables and lstsq student encodings are split across processes
  (``encode_lib.encode_across_processes``). Without it, a multi-process caller must run ``build`` on
  process 0 first (``distributed.process0_first``).
  """
  if "cross" in (cfg.student.kind, cfg.teacher.kind):
    from edistill.train import ce  # Not sharded: process 0 builds first, the others reuse its caches.
    return _process0_first_if(multihost, lambda: ce.build(cfg, process_index, process_count), "cross")
  loss = loss_config(cfg)
  data = _process0_first_if(multihost, lambda: training_data(cfg), "data")
  student_pre = _process0_first_if(multihost, lambda: zoo.load_from_config(cfg.student), "student")
  kind = cfg.student.kind
  module = student_pre.module.clone(remat=cfg.train.remat == "layer")
  student = DualEncoder(module, module if kind == "untied" else None, kind)
  params = {"query_tower": student_pre.params}
  if kind == "untied":
    params["doc_tower"] = jax.tree.map(np.copy, student_pre.params)

  teacher, teacher_params = None, None
  if loss.needs_teacher() or kind == "asymmetric":
    tpre = _process0_first_if(multihost, lambda: zoo.load_from_config(cfg.teacher), "teacher")
    teacher = teachers.Teacher(tpre.module, cfg.teacher.mode)
    if cfg.teacher.mode == "online":
      if tpre.tokenizer.get_vocab() != student_pre.tokenizer.get_vocab():
        raise ValueError(f"config.teacher.mode='online' needs the student's tokenizer, but {cfg.teacher.name} and "
                         f"{cfg.student.name} tokenize differently; use mode='precomputed'.")
      teacher_params = {"encoder": tpre.params}
      t_dim = tpre.module.projection_dim or tpre.config.hidden_size
    else:
      cache = Path(zoo.cache_dir()) / "embeddings"
      kw = dict(batch_size=cfg.teacher.batch_size, multihost=multihost)
      tables = {
          "queries": encode_lib.encode_pretrained(tpre, data.query_ids, data.query_texts, cfg.data.max_query_length,
                                                  cache, desc="teacher queries", **kw),
          "docs": encode_lib.encode_pretrained(tpre, data.doc_ids, data.doc_texts, cfg.data.max_doc_length,
                                               cache, desc="teacher documents", **kw)}
      if cfg.data.unlabeled_queries:
        data, tables = with_unlabeled(cfg, data, tpre, tables, multihost)
      if cfg.data.teacher_negatives:
        data = with_teacher_negatives(data, tables, cfg.data.teacher_negatives)
      teacher_params = tables
      t_dim = tables["queries"].shape[1]
    s_dim = student_pre.module.projection_dim or student_pre.config.hidden_size
    rng = jax.random.key(cfg.seed + 1)
    if (kind == "asymmetric" or loss.query_emb) and s_dim != t_dim:
      if cfg.student.projection_init == "lstsq" and cfg.teacher.mode == "precomputed":
        student_q = encode_lib.encode_pretrained(student_pre, data.query_ids, data.query_texts, cfg.data.max_query_length,
                                                 Path(zoo.cache_dir()) / "embeddings", desc="student queries",
                                                 multihost=multihost)
        params["query_projection"] = lstsq_projection(student_q, teacher_params["queries"])
      else:
        params["query_projection"] = init_projection(jax.random.fold_in(rng, 0), s_dim, t_dim)
    if loss.doc_emb and s_dim != t_dim:
      params["doc_projection"] = init_projection(jax.random.fold_in(rng, 1), s_dim, t_dim)
  pipe = pipeline.from_retrieval_set(
      data, student_pre.tokenizer, student_pre.tokenizer, cfg.data.max_query_length, cfg.data.max_doc_length,
      cfg.train.batch_size, cfg.data.num_hard_negatives, cfg.seed, process_index, process_count,
      cfg.data.bucket_window, cfg.data.pad_multiple)
  tc = cfg.train
  tx = state_lib.make_optimizer(tc.learning_rate, tc.steps, tc.warmup_steps, tc.weight_decay, tc.grad_clip,
                                tc.schedule, tuple(tc.frozen), pull=tc.pull_to_init)
  return Setup(pipe, student, teacher, teacher_params, params, student_pre.tokenizer, tx, loss, data=data)


def precompute(cfg) -> str:
  """Fills every cache ``train`` reads (dataset, teacher tables, pseudo-labels, lstsq encodings) and
  returns a one-paragraph summary; on a pod every process calls it together (encodings are split)."""
  nproc = jax.process_count()
  setup = build(cfg, jax.process_index(), nproc, multihost=nproc > 1)
  tables = setup.teacher_params if isinstance(setup.teacher_params, dict) else {}
  shapes = ", ".join(f"{k} {tuple(np.shape(v))}" for k, v in tables.items() if k in ("queries", "docs"))
  return (f"precomputed for {cfg.data.source}: {len(setup.pipe.examples)} training examples "
          f"({setup.pipe.steps_per_epoch} steps per epoch at batch {cfg.train.batch_size})"
          + (f"; teacher tables {shapes}" if shapes else "") + f"; cache {zoo.cache_dir()}.")


def _check_init_from(cfg, ckpt_dir) -> None:
  """A missing ``train.init_from`` fails before anything is built or created (a resume ignores it)."""
  if cfg.train.init_from and not (ckpt_dir.exists() and any(ckpt_dir.iterdir())):
    if not epath.Path(cfg.train.init_from).is_dir():
      raise checkpoint.CheckpointNotFoundError(
          f"config.train.init_from={cfg.train.init_from!r}: init checkpoint directory does not exist.")


def train(cfg, workdir: str | Path) -> dict[str, float]:
  """Runs (or resumes) training to ``cfg.train.steps``; returns the last logged metrics.

  ``config.json`` is (re)written only once training has really started: just before the first
  metrics line or checkpoint, so a run that fails before (a missing path, a NaN first loss) leaves
  the workdir's record of what trained it as it was.
  Raises ``Preempted`` after saving if SIGTERM arrives, ``NonFiniteLossError`` on a NaN/Inf loss.
  """
  workdir = epath.Path(workdir)
  pid, nproc = jax.process_index(), jax.process_count()
  _check_init_from(cfg, workdir / "checkpoints")
  setup = build(cfg, pid, nproc, multihost=nproc > 1)  # Every process together: encodings split across them.
  mesh = mesh_lib.make_mesh(dict(cfg.mesh))
  batch_sharding = mesh_lib.batch_sharding(mesh)
  distributed.check_batch_layout(batch_sharding, cfg.train.batch_size, pid, nproc)
  abstract = jax.eval_shape(lambda p: state_lib.create(p, setup.tx, cfg.seed), setup.init_params)
  state_sh = mesh_lib.tree_shardings(abstract, mesh)
  teacher_sh = mesh_lib.replicated(mesh)
  teacher_params = jax.device_put(setup.teacher_params, teacher_sh) if setup.teacher_params is not None else None
  make_step = setup.jit_step or functools.partial(jit_train_step, setup.student, setup.teacher, setup.loss, setup.tx,
                                                  grad_cache_chunk=cfg.train.grad_cache_chunk)
  step_fn = make_step(state_sh, teacher_sh, batch_sharding)

  ckpt = checkpoint.Checkpointer(workdir / "checkpoints", cfg.train.keep_checkpoints, cfg.train.checkpoint_every)
  target = checkpoint.abstract_like(abstract, state_sh)
  if ckpt.latest_step() is not None:
    state = ckpt.restore(target)
    logging.info("Resumed from %s at step %d", ckpt.directory, int(state.step))
  else:
    params = setup.init_params
    if cfg.train.init_from:
      params = checkpoint.restore_params(cfg.train.init_from, target)
    state = jax.jit(lambda p: state_lib.create(p, setup.tx, cfg.seed), out_shardings=state_sh)(params)

  stop = {"signal": None}
  previous = signal.signal(signal.SIGTERM, lambda signum, _: stop.update(signal=signum))
  start, total = int(state.step), cfg.train.steps
  writer = metrics_writer.MetricsWriter(workdir, enabled=pid == 0, start_step=start)
  recorded = {"config": pid != 0}

  def record() -> None:  # config.json, the record of what trained the workdir: before its first line or checkpoint.
    if not recorded["config"]:
      cache.write_text_atomic(workdir / "config.json", cfg.to_json_best_effort(indent=2))
      recorded["config"] = True

  def save(step: int) -> None:  # Never a non-finite state; config.json first.
    _check_finite(state, good_step, step, ckpt)
    record()
    ckpt.save(step, state)

  last: dict[str, float] = {}
  good_step, t0, eval_s = start, time.perf_counter(), 0.0
  preempted = None
  try:
    bar = tqdm(total=total, initial=start, desc="train", disable=pid != 0)
    for step, local in zip(range(start, total), setup.pipe.iterate(start)):
      batch = jax.make_array_from_process_local_data(batch_sharding, local)
      state, metrics = step_fn(state, teacher_params, batch)
      done = step + 1
      log_step = done % cfg.train.log_every == 0 or done == total  # Host sync: metrics, and the pod's stop vote.
      if log_step:
        last = {k: float(v) for k, v in jax.device_get(metrics).items()}
        if not np.isfinite(last["loss"]):
          raise NonFiniteLossError(
              f"loss is {last['loss']} at a step in ({good_step}, {done}]; stopping without saving this "
              f"state. Last checkpoint: {ckpt.latest_step()} in {ckpt.directory}.")
        good_step = done
        train_s = time.perf_counter() - t0 - eval_s  # Training only: evaluations during training excluded.
        last["examples_per_s"] = cfg.train.batch_size * (done - start) / max(train_s, 1e-9)
        last["train_minutes"] = train_s / 60  # Since this process started (or resumed) training.
        record()
        writer.write(done, last)
        bar.set_postfix(loss=f"{last['loss']:.4f}")
      bar.update(1)
      if cfg.eval.every_steps and done % cfg.eval.every_steps == 0 and pid == 0:
        t_eval = time.perf_counter()
        writer.write(done, evaluate_during_training(cfg, workdir, state))
        eval_s += time.perf_counter() - t_eval
      if ckpt.should_save(done) and done != total:
        save(done)
      if (nproc == 1 or log_step) and stop_requested(stop["signal"] is not None, nproc):
        signum = int(stop["signal"] or signal.SIGTERM)  # Another process may have got it.
        logging.warning("Signal %s: saving step %d and stopping.", signum, done)
        save(done)
        preempted = Preempted(signum, done, ckpt.directory)
        break
    else:
      save(int(state.step))
    bar.close()
  finally:
    signal.signal(signal.SIGTERM, previous)
    writer.close()
    ckpt.close()  # Waits for the last (async) save to finish.
  if preempted is not None:
    raise preempted
  return last


def evaluate_during_training(cfg, workdir: Path, state) -> dict[str, float]:
  """The current student on ``cfg.eval.during_training_split`` (exact search), as "eval/<metric>"."""
  from edistill.eval import suite
  if cfg.student.kind == "cross":
    from edistill.eval import rerank
    rows = rerank.run(cfg, workdir, split=cfg.eval.during_training_split, params=jax.device_get(state.params))
    return {f"eval/{k}": v for k, v in rows["reranked"].items()}
  rows = suite.run(cfg, workdir, split=cfg.eval.during_training_split, student_params=jax.device_get(state.params),
                   models=("student",), scann=False)
  return {f"eval/{k}": v for k, v in rows["student"].items() if k not in ("params_m", "query_ms")}


@jax.jit
def _all_finite(params) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(params)]))


def _check_finite(state, good_step: int, step: int, ckpt) -> None:
  """Refuses to checkpoint parameters that went non-finite between two logged steps."""
  if not bool(_all_finite(state.params)):
    raise NonFiniteLossError(f"non-finite parameters at a step in ({good_step}, {step}]; stopping without "
                             f"saving this state. Last checkpoint: {ckpt.latest_step()} in {ckpt.directory}.")
