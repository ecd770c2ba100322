"""The cross-encoder recipes: training one (``cross_encoder``), distilling one into a dual-encoder
student (``ce_distill``; configs/cross_encoder.py, configs/ce_distill.py). Both run in the ordinary
loop (``train/loop.py``: mesh, sharded state, checkpoints, NaN guard, resume).

Training a CE (``student.kind="cross"``): each query's candidates are its positive and either
``data.num_hard_negatives`` hard negatives (``cross_encoder.negatives="hard"``; mined from the top
``mine_depth`` of BM25, ``mine="bm25"``, or of the dual encoder ``cross_encoder.dual_encoder``,
``mine="teacher"``) or every other positive of the global batch
(``"in_batch"``, false negatives masked). The loss is the listwise softmax cross-entropy over each
query's candidate scores at ``cross_encoder.temperature``. Pairs are packed on the host
(``cross_encoder.pack_pairs``); a batch holds ``[b, K, L]`` pair arrays, ``positive_col [b]`` and
``candidate_mask [b, K]`` (True where a candidate takes part).

Distilling a CE (``teacher.kind="cross"``): the trained CE scores each training example's
candidates (positive + hard negatives) once, cached on disk; with the dual head it also keeps the
pooled query/document vectors of every pair. The student's step is ``objective.compute_loss`` with
a ``teachers.CrossEncoderTeacher``: the usual in-batch label loss, score distillation over each
query's own candidates and (dual head) embedding matching of the student's query/document
embeddings to the CE's pooled vectors of the same pair. An asymmetric student scores its projected
queries against the documents of the dual encoder ``cross_encoder.dual_encoder`` (its precomputed
table, gathered per host batch) and matches only the CE's query vectors. In the retrieval tables
``teacher`` is that dual encoder.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import numpy as np
from absl import logging

from edistill import distributed, objective, teachers
from edistill.cache import atomic_file, cache_root, content_key, texts_fingerprint
from edistill.data import pipeline
from edistill.eval import report, rerank
from edistill.models import cross_encoder as ce_lib
from edistill.models import zoo
from edistill.models.dual_encoder import init_projection
from edistill.recipes import embed_distill, registry
from edistill.retrieval import bm25 as bm25_lib
from edistill.retrieval import encode as encode_lib
from edistill.train import loop
from edistill.train.step import jit_loss_step


NEGATIVES = ("hard", "in_batch")


def with_mined_negatives(data, depth: int):
  """``data`` with BM25 hard negatives: each query's top ``depth`` documents (positives are dropped
  later by ``pipeline.build_examples``), replacing any the dataset carried."""
  idx, _ = bm25_lib.topk(data, depth)
  hard = {q: [data.doc_ids[i] for i in row if i >= 0] for q, row in zip(data.query_ids, idx.tolist())}
  logging.info("Mined BM25 hard negatives (top %d) for %d queries", depth, len(hard))
  return dataclasses.replace(data, hard_negatives=hard)


class DerivedPipeline:
  """Batches of ``base`` transformed by ``fn(batch, step, global_rows, local_rows)``: the same
  deterministic, resumable, host-split order (see ``pipeline.Pipeline``)."""

  def __init__(self, base: pipeline.Pipeline, fn: Callable[..., dict]):
    self.base, self.fn = base, fn

  @property
  def examples(self):
    return self.base.examples

  @property
  def steps_per_epoch(self) -> int:
    return self.base.steps_per_epoch

  def batch(self, step: int) -> dict[str, np.ndarray]:
    rows = self.base.global_rows(step)
    b = self.base.local_batch_size
    local = slice(self.base.process_index * b, (self.base.process_index + 1) * b)
    return self.fn(self.base.batch(step), rows, local)

  def iterate(self, start_step: int = 0, num_steps: int | None = None):
    step = start_step
    while num_steps is None or step < start_step + num_steps:
      yield self.batch(step)
      step += 1


def pair_batch(batch: dict, rows: np.ndarray, local: slice, *, base: pipeline.Pipeline,
               template: ce_lib.PairTemplate, length: int, negatives: str, multiple: int = 0) -> dict[str, np.ndarray]:
  """A content-token pipeline batch -> CE training pairs (see module doc), ``length`` columns, or with
  ``multiple`` > 0 the GLOBAL batch's longest pair rounded up to it (every host packs the same shape)."""
  q_ids, q_len = batch["query_input_ids"], batch["query_attention_mask"].sum(-1)
  b = len(q_ids)
  if negatives == "hard":
    d_ids, d_len = batch["doc_input_ids"], batch["doc_attention_mask"].sum(-1)  # [b, C, Bd], [b, C]
    positive_col = np.zeros(b, np.int32)
    candidate_mask = np.ones(d_len.shape, bool)
  elif negatives == "in_batch":  # Every positive of the GLOBAL batch is a candidate of every local query.
    ids, mask = base.docs.take(base.examples.docs[rows, 0])  # [B, Bd]
    d_ids, d_len = np.broadcast_to(ids, (b, *ids.shape)), np.broadcast_to(mask.sum(-1), (b, len(ids)))
    positive_col = np.arange(local.start, local.stop, dtype=np.int32)
    candidate_mask = ~batch["negative_mask"]  # [b, B] with one document per example.
  else:
    raise ValueError(f"unknown cross_encoder.negatives {negatives!r}; expected one of {NEGATIVES}.")
  k = d_ids.shape[1]
  if multiple:
    q_all = base.queries.lengths[base.examples.query[rows]]  # [B] content tokens of the global batch.
    d_all = base.docs.lengths[base.examples.docs[rows]]  # [B, C]
    content = q_all[:, None] + d_all if negatives == "hard" else q_all.max() + d_all[:, 0].max()
    length = ce_lib.pair_length(template, content, length, multiple)
  pairs = ce_lib.pack_pairs(template, np.broadcast_to(q_ids[:, None], (b, k, q_ids.shape[-1])),
                            np.broadcast_to(q_len[:, None], (b, k)), d_ids, d_len, length)
  return {**pairs, "positive_col": positive_col, "candidate_mask": candidate_mask}


def _training_data(cfg, dual_encoder: bool = False):
  """(data, dual): the train split (``embed_distill.training_data``) with ``cross_encoder.mine``'s hard
  negatives (BM25's top ``mine_depth``, or those of the dual encoder ``cross_encoder.dual_encoder``,
  likely false negatives left out: ``data/mining.py``), and that dual encoder as (its ``Pretrained``,
  its cached ``{"queries", "docs"}`` tables), loaded once when it mines or ``dual_encoder`` is set,
  else None."""
  data = embed_distill.training_data(cfg)
  ce = cfg.cross_encoder
  dual = None
  if dual_encoder or ce.mine == "teacher":  # Mining changes no id or text: the tables serve both.
    tpre = zoo.load_from_config(ce.dual_encoder)
    dual = tpre, embed_distill.teacher_tables(tpre, data, cfg.data, ce.dual_encoder.batch_size)
  if ce.mine == "bm25":
    data = with_mined_negatives(data, ce.mine_depth)
  elif ce.mine == "teacher":
    data = embed_distill.with_teacher_negatives(data, dual[1], ce.mine_depth)
  return data, dual


def build_train(cfg, process_index: int = 0, process_count: int = 1) -> loop.Setup:
  """``loop.Setup`` for training a cross-encoder (``student.kind="cross"``)."""
  model, pre = ce_lib.load(cfg.student, cfg.cross_encoder)
  template = ce_lib.PairTemplate.from_tokenizer(pre.tokenizer)
  bq, bd = template.budgets(cfg.data.max_query_length, cfg.data.max_doc_length)
  content = ce_lib.ContentOnly(pre.tokenizer)
  data, _ = _training_data(cfg)
  base = pipeline.from_retrieval_set(data, content, content, bq, bd, cfg.train.batch_size, cfg.data.num_hard_negatives,
                                     cfg.seed, process_index, process_count, cfg.data.bucket_window)
  pipe = DerivedPipeline(base, functools.partial(
      pair_batch, base=base, template=template, length=cfg.data.max_query_length + cfg.data.max_doc_length,
      negatives=cfg.cross_encoder.negatives, multiple=cfg.data.pad_multiple))
  tx = embed_distill.optimizer(cfg.train)
  loss_fn = lambda p, _, batch, rng: objective.cross_encoder_loss(p, batch, rng, model=model,
                                                                 temperature=cfg.cross_encoder.temperature)
  step = functools.partial(jit_loss_step, loss_fn, tx, frozen=tuple(cfg.train.frozen))
  return loop.Setup(pipe, model, None, None, ce_lib.init_params(model, ce_lib.encoder_params(pre)), pre.tokenizer, tx,
                    objective.loss_config(cfg.loss), step)


def example_pairs(examples: pipeline.Examples, num_docs: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The distinct (query row, document row) pairs among the examples' candidates: (queries [P],
  documents [P], ``inverse`` [N * C], each candidate's pair)."""
  keys = np.broadcast_to(examples.query[:, None], examples.docs.shape).astype(np.int64) * num_docs + examples.docs
  unique, inverse = np.unique(keys.reshape(-1), return_inverse=True)
  return unique // num_docs, unique % num_docs, inverse


def teacher_outputs(model: ce_lib.CrossEncoder, params, tokenizer, data, examples: pipeline.Examples,
                    max_query_length: int, max_doc_length: int, batch_size: int = 64) -> dict[str, np.ndarray]:
  """The CE's outputs over every example's candidates, ``[N, C]`` scores (and ``[N, C, H]`` pooled
  query/document vectors for the dual head), cached on disk keyed by the CE and the pairs.

  Each distinct (query, document) pair is scored once.
  """
  pooled = model.head == "dual"
  uq, ud, inverse = example_pairs(examples, len(data.doc_ids))
  key = content_key(model=encode_lib.params_fingerprint(params), module=encode_lib.module_fingerprint(model),
                    queries=texts_fingerprint([data.query_texts[i] for i in uq]),
                    docs=texts_fingerprint([data.doc_texts[i] for i in ud]), lengths=(max_query_length, max_doc_length))
  path = cache_root() / "ce_teacher" / f"{key}.npz"
  if path.is_file():
    with np.load(path) as z:
      out = dict(z)
  else:
    pairs = ce_lib.tokenize_pairs(tokenizer, [data.query_texts[i] for i in uq], [data.doc_texts[i] for i in ud],
                                  max_query_length, max_doc_length)
    out = ce_lib.predict(model, params, pairs, batch_size, pooled=pooled, desc="cross-encoder teacher")
    with atomic_file(path) as tmp:
      np.savez(tmp, **out)
  return {k: v[inverse].reshape(*examples.docs.shape, *v.shape[1:]) for k, v in out.items()}


def _pairs_fingerprint(data, q_rows: np.ndarray, d_rows: np.ndarray) -> str:
  return content_key(queries=texts_fingerprint([data.query_texts[i] for i in q_rows]),
                     docs=texts_fingerprint([data.doc_texts[i] for i in d_rows]))


def write_outputs(path, data, q_rows: np.ndarray, d_rows: np.ndarray, outputs: dict[str, np.ndarray]) -> None:
  """A CE's outputs scored elsewhere (an accelerator: ``benchmarks/ce_gpu.py``), for
  ``cross_encoder.outputs``: the pairs by id, ``outputs`` (``scores`` [P], optionally
  ``query_vectors`` / ``doc_vectors`` [P, H]) and the fingerprint of the pairs' texts."""
  extra = sorted(set(outputs) - {"scores", "query_vectors", "doc_vectors"})
  if "scores" not in outputs or extra:
    raise ValueError(f"CE outputs need 'scores' (and may carry query_vectors/doc_vectors); got {sorted(outputs)}.")
  with atomic_file(path) as tmp:
    np.savez(tmp, query_ids=np.asarray([data.query_ids[i] for i in q_rows]),
             doc_ids=np.asarray([data.doc_ids[i] for i in d_rows]), fingerprint=_pairs_fingerprint(data, q_rows, d_rows),
             **{k: np.asarray(v, np.float32) for k, v in outputs.items()})


def stored_outputs(path, data, examples: pipeline.Examples) -> dict[str, np.ndarray]:
  """``teacher_outputs``' arrays for ``examples`` read from a ``write_outputs`` file. A pair the file
  lacks, or pair texts that differ from those it was scored on, stop the run naming the file."""
  path = str(path)
  try:
    z = np.load(path)
  except (OSError, ValueError) as e:
    raise ValueError(f"config.cross_encoder.outputs={path!r}: cannot read it ({e}).") from e
  with z:
    stored = {k: z[k] for k in z}
  lacking = sorted({"query_ids", "doc_ids", "fingerprint", "scores"} - set(stored))
  if lacking:
    raise ValueError(f"config.cross_encoder.outputs={path!r}: no {lacking}; not a file of "
                     f"recipes/cross_encoder.write_outputs.")
  q_row = {q: i for i, q in enumerate(data.query_ids)}
  d_row = {d: i for i, d in enumerate(data.doc_ids)}
  unknown = [(q, d) for q, d in zip(stored["query_ids"].tolist(), stored["doc_ids"].tolist())
             if q not in q_row or d not in d_row]
  if unknown:
    raise ValueError(f"{path}: {len(unknown)} pairs name queries or documents not in the training data, e.g. "
                     f"{unknown[:3]}; these outputs were scored on other data.")
  fq = np.asarray([q_row[q] for q in stored["query_ids"].tolist()], np.int64)
  fd = np.asarray([d_row[d] for d in stored["doc_ids"].tolist()], np.int64)
  if _pairs_fingerprint(data, fq, fd) != str(stored["fingerprint"]):
    raise ValueError(f"{path}: the texts of its pairs differ from the training data's now; score them again.")
  index = {pair: i for i, pair in enumerate(zip(fq.tolist(), fd.tolist()))}
  uq, ud, inverse = example_pairs(examples, len(data.doc_ids))
  missing = [pair for pair in zip(uq.tolist(), ud.tolist()) if pair not in index]
  if missing:
    show = [(data.query_ids[q], data.doc_ids[d]) for q, d in missing[:3]]
    raise ValueError(f"{path}: {len(missing)} (query, document) pairs of the training examples are not in it, e.g. "
                     f"{show}; score the candidates of these settings (data.num_hard_negatives, mine, mine_depth).")
  rows = np.asarray([index[pair] for pair in zip(uq.tolist(), ud.tolist())])[inverse]
  return {k: stored[k][rows].reshape(*examples.docs.shape, *stored[k].shape[1:])
          for k in ("scores", "query_vectors", "doc_vectors") if k in stored}


def build_distill(cfg, process_index: int = 0, process_count: int = 1) -> loop.Setup:
  """``loop.Setup`` for a dual-encoder student of a trained cross-encoder (``teacher.kind="cross"``)."""
  loss = objective.loss_config(cfg.loss)
  data, dual = _training_data(cfg, dual_encoder=cfg.student.kind == "asymmetric")
  student_pre, student, params = embed_distill.student_parts(cfg)
  base = embed_distill.student_pipeline(cfg, data, student_pre.tokenizer, process_index, process_count)
  tx = embed_distill.optimizer(cfg.train)
  if cfg.cross_encoder.outputs:
    outputs = stored_outputs(cfg.cross_encoder.outputs, data, base.examples)
    needs = {"query_vectors": loss.query_emb, "doc_vectors": loss.doc_emb}
    absent = [k for k, w in needs.items() if w and k not in outputs]
    if absent:
      raise ValueError(f"config.cross_encoder.outputs={cfg.cross_encoder.outputs!r} has no {absent}, which "
                       f"config.loss.query_emb/doc_emb match; a 'dual' head's outputs carry them.")
    ce_dim = next((v.shape[-1] for k, v in outputs.items() if k != "scores"), 0)
  else:
    model, pre, ce_params = ce_lib.restore(cfg.teacher, cfg.cross_encoder, cfg.cross_encoder.checkpoint)
    outputs = teacher_outputs(model, ce_params, pre.tokenizer, data, base.examples, cfg.data.max_query_length,
                              cfg.data.max_doc_length, cfg.cross_encoder.batch_size)
    ce_dim = model.config.hidden_size
  signal = {"scores": "scores", "query_vectors": "query", "doc_vectors": "doc"}  # ce_lib.predict's -> the teacher's.
  table = {teachers.CrossEncoderTeacher.BATCH_KEYS[signal[k]]: v for k, v in outputs.items()}
  s_dim, rng = student.query_encoder.output_dim, jax.random.key(cfg.seed + 1)
  if cfg.student.kind == "asymmetric":
    teacher, teacher_params = _asymmetric_parts(cfg, data, dual, student_pre, params, loss, ce_dim, rng)
  else:
    embed_distill.add_projections(params, s_dim, ce_dim, rng, query=bool(loss.query_emb),
                                  doc=bool(loss.doc_emb))
    teacher, teacher_params = teachers.CrossEncoderTeacher(), None
  pipe = DerivedPipeline(base, lambda batch, rows, local: {**batch, **{k: v[rows[local]] for k, v in table.items()}})
  step = functools.partial(embed_distill.jit_train_step, student, teacher, loss, tx,
                           frozen=tuple(cfg.train.frozen))
  return loop.Setup(pipe, student, teacher, teacher_params, params, student_pre.tokenizer, tx, loss, step, data=data)


def _asymmetric_parts(cfg, data, dual, student_pre, params, loss, ce_dim: int, rng):
  """(teacher, teacher params) of an asymmetric student of a CE: it scores its projected queries against
  the dual encoder's document table (``dual``: ``_training_data``'s; ``query_projection``, started at
  the least-squares fit of its queries onto the dual encoder's, as ``embed_distill`` starts it) and
  matches the CE's pooled query vectors through a head of its own (``query_match_projection``,
  identity when the widths agree). Adds both heads to ``params``."""
  tpre, tables = dual
  s_dim = student_pre.module.output_dim
  if s_dim != tables["docs"].shape[1]:
    params["query_projection"] = embed_distill.lstsq_start(cfg, student_pre, data, tables["queries"])
  if loss.query_emb:
    params["query_match_projection"] = (
        {"kernel": np.eye(s_dim, dtype=np.float32), "bias": np.zeros(s_dim, np.float32)} if s_dim == ce_dim
        else init_projection(jax.random.fold_in(rng, 0), s_dim, ce_dim))
  docs = teachers.Teacher(tpre.module, "precomputed", cfg.cross_encoder.dual_encoder.get("table_dtype", "float32"))
  return teachers.CrossEncoderTeacher(docs=docs), {"docs": tables["docs"]}


def validate_train(cfg) -> None:
  ce = cfg.cross_encoder
  if ce.negatives == "hard" and cfg.data.num_hard_negatives < 1:
    raise ValueError("config.cross_encoder.negatives='hard' needs config.data.num_hard_negatives >= 1.")
  if ce.negatives == "in_batch" and cfg.data.num_hard_negatives:
    raise ValueError("config.cross_encoder.negatives='in_batch' pairs each query with the batch's positives; "
                     "set config.data.num_hard_negatives=0.")


def validate_distill(cfg) -> None:
  ce = cfg.cross_encoder
  if cfg.student.kind == "cross":
    raise ValueError("config.student.kind='cross' cannot learn from a cross-encoder teacher here; use 'tied', "
                     "'untied' or 'asymmetric' (documents: cross_encoder.dual_encoder's embeddings).")
  if cfg.student.kind == "asymmetric" and cfg.loss.doc_emb:
    raise ValueError("config.loss.doc_emb: an asymmetric student's documents are the dual encoder's "
                     "(cross_encoder.dual_encoder), so there is nothing to match; set it to 0.")
  if not ce.checkpoint and not ce.outputs:
    raise ValueError("config.teacher.kind='cross' needs config.cross_encoder.checkpoint (a trained CE's checkpoints) "
                     "or config.cross_encoder.outputs (its outputs scored elsewhere: recipes/cross_encoder.write_outputs).")
  if cfg.data.num_hard_negatives < 1 and (cfg.loss.score or cfg.loss.margin_mse):
    raise ValueError("score distillation from a cross-encoder runs over each query's candidates: set "
                     "config.data.num_hard_negatives >= 1.")
  if ce.head != "dual" and (cfg.loss.query_emb or cfg.loss.doc_emb):
    raise ValueError("config.loss.query_emb/doc_emb need the dual-pooling head's vectors: "
                     "config.cross_encoder.head='dual' (the cls head has no query/document embeddings).")


def _process0_first(build: Callable) -> Callable:
  """Not sharded: process 0 builds first, the others reuse its caches."""
  return lambda cfg, pid=0, nproc=1, multihost=False: distributed.process0_first_if(
      multihost, lambda: build(cfg, pid, nproc), "cross")


def reranker_results(cfg, workdir) -> str:
  """First stage and CE re-ranking on ``cfg.eval.split`` (``eval/rerank.py``)."""
  return report.results_table(rerank.run(cfg, workdir), teacher="first_stage")


registry.register(registry.Recipe("cross_encoder", _process0_first(build_train), "rerank", reranker_results,
                                  validate_train, packs_pairs=True))
registry.register(registry.Recipe("ce_distill", _process0_first(build_distill), "retrieval", embed_distill.results,
                                  validate_distill, packs_pairs=True))
