"""Cross-encoder teachers: training one, and distilling one into a dual-encoder student.

Both plug into the ordinary loop (``loop.train``: mesh, sharded state, checkpoints, NaN guard,
resume) through ``loop.build``, which hands over to ``build`` here when a config names a
cross-encoder (``configs/cross_encoder.py``, ``configs/ce_distill.py``).

Training a CE (``student.kind="cross"``): each query's candidates are its positive and either
``data.num_hard_negatives`` hard negatives (``cross_encoder.negatives="hard"``; mined from BM25's
top ``mine_depth`` when ``mine="bm25"``) or every other positive of the global batch
(``"in_batch"``, false negatives masked). The loss is the listwise softmax cross-entropy over each
query's candidate scores at ``cross_encoder.temperature``. Pairs are packed on the host
(``cross_encoder.pack_pairs``); a batch holds ``[b, K, L]`` pair arrays, ``positive_col [b]`` and
``candidate_mask [b, K]`` (True where a candidate takes part).

Distilling a CE (``teacher.kind="cross"``): the trained CE scores each training example's
candidates (positive + hard negatives) once, cached on disk; with the dual head it also keeps the
pooled query/document vectors of every pair. The student's step then adds, to the usual in-batch
label loss, score distillation over each query's own candidates and (dual head) embedding matching
of the student's query/document embeddings to the CE's pooled vectors of the same pair.
"""
from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from edistill import checkpoint, losses
from edistill.cache import atomic_file, cache_root, content_key, texts_fingerprint
from edistill.data import pipeline
from edistill.models import cross_encoder as ce_lib
from edistill.models import zoo
from edistill.models.dual_encoder import DualEncoder, init_projection
from edistill.retrieval import bm25 as bm25_lib
from edistill.retrieval import encode as encode_lib
from edistill.train.step import LossConfig, gradient_step

NEGATIVES = ("hard", "in_batch")


# ---------------------------------------------------------------------------------------- data
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
               template: ce_lib.PairTemplate, length: int, negatives: str) -> dict[str, np.ndarray]:
  """A content-token pipeline batch -> CE training pairs (see module doc)."""
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
  pairs = ce_lib.pack_pairs(template, np.broadcast_to(q_ids[:, None], (b, k, q_ids.shape[-1])),
                            np.broadcast_to(q_len[:, None], (b, k)), d_ids, d_len, length)
  return {**pairs, "positive_col": positive_col, "candidate_mask": candidate_mask}


# ------------------------------------------------------------------------------- CE training
def train_loss(params, batch, rng, *, model: ce_lib.CrossEncoder, temperature: float,
               deterministic: bool = False) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Listwise softmax CE over each query's candidates: ``mean_i [logsumexp_k s_ik/tau - s_i,p_i/tau]``."""
  scores = ce_lib.apply_flat(model, params, batch, deterministic, rng)  # [b, K]
  terms = {"label": losses.label_loss(scores, batch["positive_col"], ~batch["candidate_mask"], temperature)}
  return losses.total_loss(terms, {"label": 1.0})


def jit_step(loss_fn, tx, state_shardings, teacher_shardings, batch_sharding):
  """``gradient_step`` on ``loss_fn(params, teacher_params, batch, rng)``, jitted as ``jit_train_step``."""
  def fn(state, teacher_params, batch):
    return gradient_step(state, lambda p, rng: loss_fn(p, teacher_params, batch, rng), tx)
  return jax.jit(fn, in_shardings=(state_shardings, teacher_shardings, batch_sharding),
                 out_shardings=(state_shardings, None), donate_argnums=(0,))


def load_model(enc_cfg, ce_cfg) -> tuple[ce_lib.CrossEncoder, zoo.Pretrained]:
  """The CE architecture on a packaged/local encoder (its weights initialise a new CE)."""
  pre = zoo.load_from_config(enc_cfg)
  model = ce_lib.CrossEncoder(pre.config, ce_cfg.head, ce_cfg.normalize, jnp.dtype(enc_cfg.dtype))
  return model, pre


def _encoder_params(pre: zoo.Pretrained) -> dict:
  return {k: v for k, v in pre.params.items() if k != "projection"}  # A sentence-embedding head is unused.


def build_train(cfg, process_index: int = 0, process_count: int = 1):
  """``loop.Setup`` for training a cross-encoder (``student.kind="cross"``)."""
  from edistill.train import loop, state as state_lib
  model, pre = load_model(cfg.student, cfg.cross_encoder)
  template = ce_lib.PairTemplate.from_tokenizer(pre.tokenizer)
  bq, bd = template.budgets(cfg.data.max_query_length, cfg.data.max_doc_length)
  content = ce_lib.ContentOnly(pre.tokenizer)
  data = loop.training_data(cfg)
  base = pipeline.from_retrieval_set(data, content, content, bq, bd, cfg.train.batch_size, cfg.data.num_hard_negatives,
                                     cfg.seed, process_index, process_count)
  pipe = DerivedPipeline(base, functools.partial(
      pair_batch, base=base, template=template, length=cfg.data.max_query_length + cfg.data.max_doc_length,
      negatives=cfg.cross_encoder.negatives))
  tc = cfg.train
  tx = state_lib.make_optimizer(tc.learning_rate, tc.steps, tc.warmup_steps, tc.weight_decay, tc.grad_clip,
                                tc.schedule, tuple(tc.frozen), pull=tc.pull_to_init)
  loss_fn = lambda p, _, batch, rng: train_loss(p, batch, rng, model=model, temperature=cfg.cross_encoder.temperature)
  return loop.Setup(pipe, model, None, None, ce_lib.init_params(model, _encoder_params(pre)), pre.tokenizer, tx,
                    loop.loss_config(cfg), jit_step=functools.partial(jit_step, loss_fn, tx))


def restore_trained(enc_cfg, ce_cfg, directory: str | Path) -> tuple[ce_lib.CrossEncoder, zoo.Pretrained, dict]:
  """A trained CE: its architecture from ``enc_cfg``/``ce_cfg``, its params from a checkpoint directory."""
  model, pre = load_model(enc_cfg, ce_cfg)
  _, params = checkpoint.latest_params(directory, " of a trained cross-encoder (cross_encoder.checkpoint)")
  expected = ce_lib.init_params(model, _encoder_params(pre))
  if jax.tree.structure(params) != jax.tree.structure(expected) or any(
      np.shape(a) != np.shape(b) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(expected))):
    raise ValueError(f"{directory}: the checkpoint is not a {ce_cfg.head!r}-head cross-encoder on {enc_cfg.name} with "
                     f"num_layers={enc_cfg.num_layers}; check cross_encoder.head and the encoder settings.")
  return model, pre, params


# ------------------------------------------------------------------------------ CE -> DE
def teacher_outputs(model: ce_lib.CrossEncoder, params, tokenizer, data, examples: pipeline.Examples,
                    max_query_length: int, max_doc_length: int, batch_size: int = 64) -> dict[str, np.ndarray]:
  """The CE's outputs over every example's candidates, ``[N, C]`` scores (and ``[N, C, H]`` pooled
  query/document vectors for the dual head), cached on disk keyed by the CE and the pairs.

  Each distinct (query, document) pair is scored once.
  """
  pooled = model.head == "dual"
  q_rows = np.broadcast_to(examples.query[:, None], examples.docs.shape)
  keys = q_rows.astype(np.int64) * len(data.doc_ids) + examples.docs
  unique, inverse = np.unique(keys.reshape(-1), return_inverse=True)
  uq, ud = unique // len(data.doc_ids), unique % len(data.doc_ids)
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


TEACHER_KEYS = {"scores": "teacher_scores", "query_vectors": "teacher_query_vectors",
                "doc_vectors": "teacher_doc_vectors"}


def distill_loss(params, batch, rng, *, student: DualEncoder, cfg: LossConfig,
                 deterministic: bool = False) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Student loss against a cross-encoder teacher, on the global batch.

  With student query embeddings ``q_i``, document embeddings ``d_ic`` of query ``i``'s candidates
  ``c`` (column 0 its positive), CE scores ``T_ic`` and (dual head) CE pooled vectors ``u_ic``/``v_ic``
  of the pair (i, c):
    label      in-batch one-hot CE over ``S = q d^T`` ([B, B*C], false negatives masked), ``loss.temperature``
    score      ``score_distillation`` of ``s_ic = <q_i, d_ic>`` ([B, C]) to ``T_ic`` (tau_s, tau_t)
    margin_mse Margin-MSE over the same [B, C] candidates
    query_emb  ``mean_ic ||u_ic - P_q(q_i)||`` (``loss.emb_kind``)
    doc_emb    ``mean_ic ||v_ic - P_d(d_ic)||``
  """
  q_rng, d_rng = jax.random.split(rng)
  b, c, ld = batch["doc_input_ids"].shape
  q = student.encode_queries(params, batch["query_input_ids"], batch["query_attention_mask"], deterministic, q_rng)
  d = student.encode_docs(params, batch["doc_input_ids"].reshape(b * c, ld),
                          batch["doc_attention_mask"].reshape(b * c, ld), deterministic, d_rng)
  terms = {}
  if cfg.label:
    terms["label"] = losses.label_loss(losses.score_matrix(q, d), jnp.arange(b, dtype=jnp.int32) * c,
                                       batch["negative_mask"], cfg.temperature)
  d = d.reshape(b, c, -1)
  candidates = losses.candidate_scores(q, d)
  if cfg.score:
    terms["score"] = losses.score_distillation(candidates, batch["teacher_scores"], None, cfg.student_temperature,
                                               cfg.teacher_temperature, cfg.score_kind)
  if cfg.margin_mse:
    terms["margin_mse"] = losses.margin_mse(candidates, batch["teacher_scores"], jnp.zeros(b, jnp.int32), None)
  if cfg.query_emb:
    terms["query_emb"] = losses.embedding_matching(jnp.broadcast_to(q[:, None], d.shape), batch["teacher_query_vectors"],
                                                   params.get("query_projection"), cfg.emb_kind)
  if cfg.doc_emb:
    terms["doc_emb"] = losses.embedding_matching(d, batch["teacher_doc_vectors"], params.get("doc_projection"),
                                                 cfg.emb_kind)
  return losses.total_loss(terms, cfg.weights())


def build_distill(cfg, process_index: int = 0, process_count: int = 1):
  """``loop.Setup`` for a dual-encoder student of a trained cross-encoder (``teacher.kind="cross"``)."""
  from edistill.train import loop
  loss = loop.loss_config(cfg)
  student_only = cfg.copy_and_resolve_references()  # The student, its data and optimizer as usual ...
  student_only.loss.update(score=0.0, margin_mse=0.0, query_emb=0.0, doc_emb=0.0)
  student_only.teacher.kind = "dual"  # ... (no dual-encoder teacher is loaded: no term needs one).
  setup = loop.build(student_only, process_index, process_count)
  model, pre, ce_params = restore_trained(cfg.teacher, cfg.cross_encoder, cfg.cross_encoder.checkpoint)
  base = setup.pipe
  data = loop.training_data(cfg)
  outputs = teacher_outputs(model, ce_params, pre.tokenizer, data, base.examples, cfg.data.max_query_length,
                            cfg.data.max_doc_length, cfg.cross_encoder.batch_size)
  table = {TEACHER_KEYS[k]: v for k, v in outputs.items()}
  params = dict(setup.init_params)
  s_dim = setup.student.query_encoder.projection_dim or setup.student.query_encoder.config.hidden_size
  t_dim = model.config.hidden_size
  rng = jax.random.key(cfg.seed + 1)
  for term, name, i in (("query_emb", "query_projection", 0), ("doc_emb", "doc_projection", 1)):
    if getattr(loss, term) and s_dim != t_dim:
      params[name] = init_projection(jax.random.fold_in(rng, i), s_dim, t_dim)
  pipe = DerivedPipeline(base, lambda batch, rows, local: {**batch, **{k: v[rows[local]] for k, v in table.items()}})
  loss_fn = lambda p, _, batch, rng: distill_loss(p, batch, rng, student=setup.student, cfg=loss)
  return dataclasses.replace(setup, pipe=pipe, init_params=params, loss=loss,
                             jit_step=functools.partial(jit_step, loss_fn, setup.tx))


def build(cfg, process_index: int = 0, process_count: int = 1) -> Any:
  if cfg.student.kind == "cross":
    return build_train(cfg, process_index, process_count)
  return build_distill(cfg, process_index, process_count)
