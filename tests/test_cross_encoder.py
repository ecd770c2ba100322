"""Cross-encoder teachers: pair packing and dual-pooling masks, heads against NumPy, sharding, the
CE-distillation losses against NumPy references, and both configs end to end on tiny models."""
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from edistill import config_lib, mesh as mesh_lib, objective, teachers
from edistill.data import pipeline
from edistill.eval import report, suite
from edistill.models import cross_encoder as ce_lib
from edistill.models import hf_import, tokenization
from edistill.models.encoder import Encoder
from edistill import recipes
from edistill.recipes import cross_encoder as ce
from edistill.objective import LossConfig

ROOT = Path(__file__).resolve().parents[1]
BERT_LIKE = ce_lib.PairTemplate(prefix=(2,), middle=(3,), suffix=(3,), pad_id=0, token_types=True)
MPNET_LIKE = ce_lib.PairTemplate(prefix=(0,), middle=(2, 2), suffix=(2,), pad_id=1, token_types=False)


@pytest.fixture(scope="module")
def tokenizer(tiny_models):
  return tokenization.load_tokenizer(tiny_models["bert"])


# ---------------------------------------------------------------------------- pair tokenisation
def test_pair_packing_matches_the_tokenizers_own_pair_encoding(tokenizer):
  queries = ["the cat sat", "dog", "the mats sat on the dog"]
  docs = ["a cat on the mat", "the dog sat on the cat on the mat", "cat"]
  pairs = ce_lib.tokenize_pairs(tokenizer, queries, docs, max_query_length=10, max_doc_length=12)
  assert pairs["input_ids"].shape == (3, 22)
  for i, (q, d) in enumerate(zip(queries, docs)):
    ref = tokenizer(q, d)  # Nothing is truncated at these lengths.
    n = len(ref["input_ids"])
    assert pairs["attention_mask"][i].sum() == n
    np.testing.assert_array_equal(pairs["input_ids"][i, :n], ref["input_ids"])
    np.testing.assert_array_equal(pairs["token_type_ids"][i, :n], ref["token_type_ids"])
    assert (pairs["input_ids"][i, n:] == tokenizer.pad_token_id).all()
    assert (pairs["token_type_ids"][i, n:] == 0).all()


@pytest.mark.parametrize("template", [BERT_LIKE, MPNET_LIKE], ids=["bert", "mpnet"])
def test_dual_pooling_masks_select_exactly_the_query_and_document_tokens(template):
  rng = np.random.default_rng(0)
  bq, bd = template.budgets(8, 10)
  q_len, d_len = np.array([1, 5, bq, 3]), np.array([bd, 2, 4, 1])
  q_ids = np.where(np.arange(bq) < q_len[:, None], rng.integers(100, 200, (4, bq)), template.pad_id)
  d_ids = np.where(np.arange(bd) < d_len[:, None], rng.integers(200, 300, (4, bd)), template.pad_id)
  pairs = ce_lib.pack_pairs(template, q_ids, q_len, d_ids, d_len, 18)
  special = set(template.prefix + template.middle + template.suffix)
  for i in range(4):
    ids, qm, dm = pairs["input_ids"][i], pairs["query_mask"][i].astype(bool), pairs["doc_mask"][i].astype(bool)
    np.testing.assert_array_equal(ids[qm], q_ids[i, :q_len[i]])  # Exactly the query's tokens, in order ...
    np.testing.assert_array_equal(ids[dm], d_ids[i, :d_len[i]])  # ... and the document's.
    assert not (qm & dm).any()
    real = pairs["attention_mask"][i].astype(bool)
    assert real.sum() == q_len[i] + d_len[i] + len(template.prefix + template.middle + template.suffix)
    assert set(ids[real & ~qm & ~dm].tolist()) <= special  # The rest of the real tokens are specials ...
    assert not (qm | dm)[~real].any()  # ... and padding is in neither mask.
    assert (ids[~real] == template.pad_id).all()
    assert real[:real.sum()].all()  # Packed left: no padding between query and document.
  assert ("token_type_ids" in pairs) == template.token_types
  if template.token_types:  # Type 1 from the document's first token through its final [SEP].
    np.testing.assert_array_equal(pairs["token_type_ids"][1], [0] * 7 + [1] * 3 + [0] * 8)


def test_pair_budgets_and_bad_heads_fail_loudly(fixtures):
  with pytest.raises(ValueError, match="leave no room"):
    MPNET_LIKE.budgets(3, 10)
  with pytest.raises(ValueError, match="static length is 5"):
    ce_lib.pack_pairs(BERT_LIKE, np.ones((1, 3)), np.array([3]), np.ones((1, 3)), np.array([3]), 5)
  cfg, params = hf_import.load_params(fixtures / "tiny-bert")
  with pytest.raises(ValueError, match="Unknown cross-encoder head 'max'"):
    ce_lib.CrossEncoder(cfg, head="max").init(jax.random.key(0), _pairs(1, 4))
  with pytest.raises(ValueError, match="only for the dual-pooling head"):
    ce_lib.apply_flat(ce_lib.CrossEncoder(cfg, "cls"), ce_lib.init_params(ce_lib.CrossEncoder(cfg, "cls"), params),
                      _pairs(1, 4), method="pooled")


# ------------------------------------------------------------------------------------ the heads
def _pairs(seed, n, template=BERT_LIKE):
  rng = np.random.default_rng(seed)
  bq, bd = template.budgets(8, 12)
  q_len, d_len = rng.integers(1, bq + 1, n), rng.integers(1, bd + 1, n)
  q_ids = np.where(np.arange(bq) < q_len[:, None], rng.integers(5, 1000, (n, bq)), template.pad_id)
  d_ids = np.where(np.arange(bd) < d_len[:, None], rng.integers(5, 1000, (n, bd)), template.pad_id)
  return ce_lib.pack_pairs(template, q_ids, q_len, d_ids, d_len, 20)


def _model(fixtures, arch, head):
  cfg, params = hf_import.load_params(fixtures / f"tiny-{arch}")
  model = ce_lib.CrossEncoder(cfg, head)
  params = ce_lib.init_params(model, params)
  if head == "cls":  # A nonzero head, so the scores say something.
    params["score"] = {"kernel": np.random.default_rng(1).normal(size=(32, 1)).astype(np.float32),
                       "bias": np.array([0.3], np.float32)}
  return cfg, model, params


@pytest.mark.parametrize("head", ["cls", "dual"])
def test_heads_match_a_numpy_reference_over_the_token_states(fixtures, head):
  cfg, model, params = _model(fixtures, "bert", head)
  pairs = _pairs(0, 6)
  states = np.asarray(Encoder(cfg).apply({"params": params["encoder"]}, pairs["input_ids"], pairs["attention_mask"],
                                         pairs["token_type_ids"], method=Encoder.encode_tokens), np.float64)
  scores = np.asarray(ce_lib.apply_flat(model, params, pairs))
  if head == "cls":
    expected = states[:, 0] @ params["score"]["kernel"][:, 0] + params["score"]["bias"][0]
  else:
    def pooled(mask):
      v = (states * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
      return v / np.linalg.norm(v, axis=-1, keepdims=True)
    u, v = pooled(pairs["query_mask"]), pooled(pairs["doc_mask"])
    expected = (u * v).sum(-1)
    q, d = ce_lib.apply_flat(model, params, pairs, method="pooled")
    np.testing.assert_allclose(q, u, atol=1e-5)
    np.testing.assert_allclose(d, v, atol=1e-5)
  np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-5)
  assert np.std(scores) > 1e-3  # Different pairs get different scores.


@pytest.mark.parametrize("arch,head", [("bert", "cls"), ("mpnet", "dual")])
def test_ce_scores_on_1_and_8_devices_are_equal(fixtures, arch, head):
  assert len(jax.devices()) == 8
  _, model, params = _model(fixtures, arch, head)
  pairs = _pairs(3, 32, BERT_LIKE if arch == "bert" else MPNET_LIKE)
  pairs = {k: v.reshape(8, 4, -1) for k, v in pairs.items()}  # [b, K, L] as in a training batch.
  out = {}
  for n in (1, 8):
    mesh = mesh_lib.make_mesh({"data": -1, "model": 1}, jax.devices()[:n])
    fn = jax.jit(lambda p, x: ce_lib.apply_flat(model, p, x), in_shardings=(
        mesh_lib.replicated(mesh), mesh_lib.batch_sharding(mesh)))
    out[n] = np.asarray(fn(jax.device_put(params, mesh_lib.replicated(mesh)), pairs))
  assert out[1].shape == (8, 4)
  np.testing.assert_allclose(out[1], out[8], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out[1].reshape(-1), ce_lib.predict(model, params, {k: v.reshape(32, -1) for k, v in
                                                                               pairs.items()}, batch_size=12)["scores"],
                             rtol=1e-5, atol=1e-6)  # The batched predictor (with a padded last batch) agrees.


# ------------------------------------------------------------------------- CE training batches
def _content_pipeline(batch_size=4, hard=0):
  rng = np.random.default_rng(0)
  positives = {q: np.array([q, (q + 1) % 12] if q == 2 else [q], np.int32) for q in range(12)}
  ex = pipeline.build_examples(positives, 20, num_hard_negatives=hard, seed=0)
  lengths = lambda n, l: rng.integers(1, l + 1, n).astype(np.int32)
  ql, dl = lengths(12, 6), lengths(20, 9)
  q = pipeline.Tokens(np.where(np.arange(6) < ql[:, None], rng.integers(5, 1000, (12, 6)), 0), ql, 0)
  d = pipeline.Tokens(np.where(np.arange(9) < dl[:, None], rng.integers(5, 1000, (20, 9)), 0), dl, 0)
  return pipeline.Pipeline(ex, q, d, batch_size, positives=positives, process_index=1, process_count=2)


def test_in_batch_ce_candidates_are_every_global_positive_with_false_negatives_masked():
  base = _content_pipeline(batch_size=8)
  step = next(s for s in range(10) if {2, 3} <= set(base.examples.query[base.global_rows(s)].tolist()))
  fn = lambda b, rows, local: ce.pair_batch(b, rows, local, base=base, template=BERT_LIKE, length=20,
                                            negatives="in_batch")
  batch = ce.DerivedPipeline(base, fn).batch(step)
  rows = base.global_rows(step)
  assert batch["input_ids"].shape == (4, 8, 20)  # Host 1 of 2: 4 local queries x 8 global positives.
  np.testing.assert_array_equal(batch["positive_col"], [4, 5, 6, 7])
  for i in range(4):
    g = 4 + i
    q = base.examples.query[rows[g]]
    for k in range(8):
      doc = base.examples.docs[rows[k], 0]
      ids = batch["input_ids"][i, k]
      np.testing.assert_array_equal(ids[batch["query_mask"][i, k] > 0], base.queries.ids[q, :base.queries.lengths[q]])
      np.testing.assert_array_equal(ids[batch["doc_mask"][i, k] > 0], base.docs.ids[doc, :base.docs.lengths[doc]])
      relevant_other = k != g and doc in base.positives[int(q)]
      assert batch["candidate_mask"][i, k] == (not relevant_other)


def test_ce_training_loss_is_the_listwise_softmax_ce(fixtures):
  _, model, params = _model(fixtures, "bert", "cls")
  base = _content_pipeline(batch_size=4, hard=2)
  batch = ce.pair_batch(base.batch(0), None, None, base=base, template=BERT_LIKE, length=20, negatives="hard")
  batch["candidate_mask"][1, 2] = False
  loss, metrics = objective.cross_encoder_loss(params, batch, jax.random.key(0), model=model, temperature=0.5, deterministic=True)
  s = np.asarray(ce_lib.apply_flat(model, params, batch), np.float64) / 0.5
  per_row = [math.log(np.exp(r[m]).sum()) - r[0] for r, m in zip(s, batch["candidate_mask"])]
  np.testing.assert_allclose(loss, np.mean(per_row), rtol=1e-5)
  np.testing.assert_allclose(metrics["label/loss"], np.mean(per_row), rtol=1e-5)


def test_trimmed_ce_batches_drop_only_padding_and_agree_across_hosts(fixtures):
  """``data.pad_multiple`` for CE training: each global batch is cut to its longest pair rounded up
  to the multiple (the same on every host), the cut columns are padding, and the loss is unchanged."""
  _, model, params = _model(fixtures, "bert", "cls")
  for negatives, hard in (("hard", 2), ("in_batch", 0)):
    base = _content_pipeline(batch_size=4, hard=hard)
    other = pipeline.Pipeline(base.examples, base.queries, base.docs, 4, positives=base.positives, process_index=0,
                              process_count=2)
    kw = dict(template=BERT_LIKE, length=20, negatives=negatives)
    widths = []
    for step in range(3):
      full = ce.DerivedPipeline(base, lambda b, r, l: ce.pair_batch(b, r, l, base=base, **kw)).batch(step)
      cut = ce.DerivedPipeline(base, lambda b, r, l: ce.pair_batch(b, r, l, base=base, multiple=4, **kw)).batch(step)
      host0 = ce.DerivedPipeline(other, lambda b, r, l: ce.pair_batch(b, r, l, base=other, multiple=4, **kw)).batch(step)
      width = cut["input_ids"].shape[-1]
      widths.append(width)
      longest = max(full["attention_mask"].sum(-1).max(), host0["attention_mask"].sum(-1).max())
      assert width % 4 == 0 and longest <= width < longest + 4 and width <= 20
      assert host0["input_ids"].shape[-1] == width  # The global batch's shape, on both hosts.
      for k in ce_lib.PAIR_KEYS:
        np.testing.assert_array_equal(cut[k], full[k][..., :width])
      assert not full["attention_mask"][..., width:].any()
      if negatives == "hard":
        losses_ = [objective.cross_encoder_loss(params, b, jax.random.key(0), model=model, temperature=0.5, deterministic=True)[0]
                   for b in (full, cut)]
        np.testing.assert_allclose(losses_[1], losses_[0], rtol=1e-5)
    assert min(widths) < 20  # Some batch is actually cut.
  assert ce_lib.pair_length_of(np.array([5, 9]), 20, 4) == 12 and ce_lib.pair_length_of(np.array([19]), 20, 8) == 20
  assert ce_lib.pair_length_of(np.array([5]), 20, 0) == 20


def test_predict_batches_by_length_and_returns_the_pairs_order(fixtures):
  _, model, params = _model(fixtures, "bert", "dual")
  pairs = _pairs(5, 23)
  full = ce_lib.predict(model, params, pairs, batch_size=5, pooled=True, multiple=0)
  cut = ce_lib.predict(model, params, pairs, batch_size=5, pooled=True, multiple=4)
  direct = np.asarray(ce_lib.apply_flat(model, params, pairs))
  for k in full:
    np.testing.assert_allclose(cut[k], full[k], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(cut["scores"], direct, rtol=1e-5, atol=1e-6)
  assert np.std(direct) > 1e-3


# ---------------------------------------------------------------- CE -> DE losses against NumPy
class _FixedStudent:
  """A 'dual encoder' whose embeddings are its parameters: isolates the loss arithmetic."""

  kind = "untied"

  def encode_queries(self, params, *_):
    return params["q"]

  def encode_docs(self, params, *_):
    return params["d"]


def _np_log_softmax(x):
  x = np.asarray(x, np.float64)
  return x - x.max() - math.log(np.exp(x - x.max()).sum())


def _distill_case(seed, b=4, c=3, ds=5, dt=7):
  rng = np.random.default_rng(seed)
  params = {"q": rng.normal(size=(b, ds)).astype(np.float32), "d": rng.normal(size=(b * c, ds)).astype(np.float32),
            "query_projection": {"kernel": rng.normal(size=(ds, dt)).astype(np.float32) * 0.5,
                                 "bias": rng.normal(size=dt).astype(np.float32)},
            "doc_projection": {"kernel": rng.normal(size=(ds, dt)).astype(np.float32) * 0.5,
                               "bias": rng.normal(size=dt).astype(np.float32)}}
  mask = np.zeros((b, b * c), bool)
  mask[1, 2 * c] = True  # Query 1 is also relevant to query 2's positive: a false in-batch negative.
  batch = {"query_input_ids": np.zeros((b, 4), np.int32), "query_attention_mask": np.ones((b, 4), np.int32),
           "doc_input_ids": np.zeros((b, c, 6), np.int32), "doc_attention_mask": np.ones((b, c, 6), np.int32),
           "doc_index": np.arange(b * c, dtype=np.int32).reshape(b, c),  # Every pipeline batch has it.
           "negative_mask": mask, "teacher_scores": rng.normal(size=(b, c)).astype(np.float32) * 2,
           "teacher_query_vectors": rng.normal(size=(b, c, dt)).astype(np.float32),
           "teacher_doc_vectors": rng.normal(size=(b, c, dt)).astype(np.float32)}
  return params, batch


def _np_distill(params, batch, cfg):
  """Float64 loops: the documented CE-distillation terms."""
  q, d = np.float64(params["q"]), np.float64(params["d"])
  b, c = batch["teacher_scores"].shape
  s = q @ d.T
  label = np.mean([-_np_log_softmax(s[i][~batch["negative_mask"][i]] / cfg.temperature)[
      np.flatnonzero(~batch["negative_mask"][i]).tolist().index(i * c)] for i in range(b)])
  score, kl = [], []
  for i in range(b):
    cand = [q[i] @ d[i * c + j] for j in range(c)]
    log_ps = _np_log_softmax(np.array(cand) / cfg.student_temperature)
    log_pt = _np_log_softmax(np.float64(batch["teacher_scores"][i]) / cfg.teacher_temperature)
    score.append(-(np.exp(log_pt) * log_ps).sum())
    kl.append((np.exp(log_pt) * (log_pt - log_ps)).sum())

  def proj(name, x):
    return x @ np.float64(params[name]["kernel"]) + params[name]["bias"]

  qemb = np.mean([np.linalg.norm(batch["teacher_query_vectors"][i, j] - proj("query_projection", q[i]))
                  for i in range(b) for j in range(c)])
  demb = np.mean([np.linalg.norm(batch["teacher_doc_vectors"][i, j] - proj("doc_projection", d[i * c + j]))
                  for i in range(b) for j in range(c)])
  total = cfg.label * label + cfg.score * (np.mean(score) if cfg.score_kind == "softmax_ce" else np.mean(kl)) \
      + cfg.query_emb * qemb + cfg.doc_emb * demb
  return {"label/loss": label, "score/kl": np.mean(kl), "query_emb/loss": qemb, "doc_emb/loss": demb, "loss": total}


@pytest.mark.parametrize("kind", ["softmax_ce", "kl"])
def test_ce_distillation_losses_match_numpy_references(kind):
  params, batch = _distill_case(0)
  cfg = LossConfig(label=1.0, score=0.7, query_emb=0.5, doc_emb=0.3, temperature=0.5, student_temperature=0.4,
                   teacher_temperature=2.0, score_kind=kind)
  teacher = teachers.CrossEncoderTeacher()
  fn = jax.jit(lambda p, x: objective.compute_loss(p, None, x, jax.random.key(0), student=_FixedStudent(),
                                                   teacher=teacher, cfg=cfg))
  loss, metrics = fn(params, batch)
  ref = _np_distill(params, batch, cfg)
  for k, v in ref.items():
    np.testing.assert_allclose(metrics[k], v, rtol=1e-5, err_msg=k)
  np.testing.assert_allclose(loss, ref["loss"], rtol=1e-5)
  assert ref["score/kl"] > 0.05 and ref["label/loss"] > 0.1  # Nontrivial cases.


class _FixedQueryStudent(_FixedStudent):
  kind = "asymmetric"


def test_asymmetric_ce_student_loss_matches_numpy_reference():
  """An asymmetric student of a CE: its projected queries score against the dual encoder's document rows
  (``teacher_doc``, gathered by the teacher's ``docs`` table), in batch for the label term and per
  candidate against the CE's scores; its queries match the CE's pooled query vectors through
  ``query_match_projection``, not through the scoring head."""
  b, c, ds, dt, h = 4, 3, 5, 7, 6
  params, batch = _distill_case(2, b, c, ds, h)
  rng = np.random.default_rng(3)
  docs = rng.normal(size=(b * c + 2, dt)).astype(np.float32)  # The dual encoder's table (two rows unused).
  batch["doc_index"] = rng.permutation(b * c + 2)[:b * c].astype(np.int32).reshape(b, c)
  del params["d"], params["doc_projection"]
  params["query_match_projection"] = params.pop("query_projection")  # [ds, h]
  params["query_projection"] = {"kernel": rng.normal(size=(ds, dt)).astype(np.float32) * 0.5,
                                "bias": rng.normal(size=dt).astype(np.float32)}
  teacher = teachers.CrossEncoderTeacher(docs=teachers.Teacher(None, "precomputed"))
  batch.update(teacher.host_inputs({"docs": docs}, batch))
  assert batch["teacher_doc"].shape == (b, c, dt)
  cfg = LossConfig(label=1.0, score=0.7, query_emb=0.5, doc_emb=0.0, temperature=0.5, student_temperature=0.4,
                   teacher_temperature=2.0)
  loss, metrics = jax.jit(lambda p, x: objective.compute_loss(p, None, x, jax.random.key(0), student=_FixedQueryStudent(),
                                                              teacher=teacher, cfg=cfg))(params, batch)
  q = np.float64(params["q"])
  qp = q @ np.float64(params["query_projection"]["kernel"]) + params["query_projection"]["bias"]
  d = np.float64(docs[batch["doc_index"].reshape(-1)])  # [b * c, dt]
  unused = {"kernel": np.zeros((dt, h)), "bias": np.zeros(h)}  # The reference's embedding terms, weighted 0.
  ref = _np_distill({"q": qp, "d": d, "query_projection": unused, "doc_projection": unused}, batch,
                    LossConfig(**{**cfg.__dict__, "query_emb": 0.0}))
  qemb = np.mean([np.linalg.norm(batch["teacher_query_vectors"][i, j] - (q[i] @ np.float64(
      params["query_match_projection"]["kernel"]) + params["query_match_projection"]["bias"]))
      for i in range(b) for j in range(c)])
  np.testing.assert_allclose(metrics["label/loss"], ref["label/loss"], rtol=1e-5)
  np.testing.assert_allclose(metrics["score/kl"], ref["score/kl"], rtol=1e-5)
  np.testing.assert_allclose(metrics["query_emb/loss"], qemb, rtol=1e-5)
  np.testing.assert_allclose(loss, ref["loss"] + cfg.query_emb * qemb, rtol=1e-5)
  with pytest.raises(ValueError, match="dual encoder's document"):
    objective.compute_loss(params, None, batch, jax.random.key(0), student=_FixedQueryStudent(),
                           teacher=teachers.CrossEncoderTeacher(), cfg=cfg)


def test_ce_distillation_gradient_moves_student_scores_towards_the_teacher():
  params, batch = _distill_case(1)
  cfg = LossConfig(label=0.0, score=1.0, query_emb=0.0, student_temperature=1.0, teacher_temperature=1.0)
  teacher = teachers.CrossEncoderTeacher()
  grads = jax.grad(lambda p: objective.compute_loss(p, None, batch, jax.random.key(0), student=_FixedStudent(),
                                                    teacher=teacher, cfg=cfg)[0])(params)
  # dL/ds_ic = (p_s - p_t) / (tau_s * B); chain rule through s_ic = <q_i, d_ic>.
  q, d = params["q"].astype(np.float64), params["d"].astype(np.float64).reshape(4, 3, -1)
  s = np.einsum("bd,bcd->bc", q, d)
  ps = np.exp(s) / np.exp(s).sum(1, keepdims=True)
  t = np.float64(batch["teacher_scores"])
  pt = np.exp(t) / np.exp(t).sum(1, keepdims=True)
  np.testing.assert_allclose(grads["q"], np.einsum("bc,bcd->bd", (ps - pt) / 4, d), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(losses_candidate(q, d), s, rtol=1e-6)


def losses_candidate(q, d):
  from edistill import losses
  return np.asarray(losses.candidate_scores(jnp.asarray(q, jnp.float32), jnp.asarray(d, jnp.float32)))


# ------------------------------------------------------------------------- configs end to end
def _load(name, arg):
  return config_lib.load_config(f"{ROOT / 'configs' / f'{name}.py'}:{arg or ''}")


def _tiny(cfg, tiny_models):
  for enc in (cfg.student, cfg.teacher, cfg.cross_encoder.dual_encoder):
    enc.name, enc.num_layers = str(tiny_models["bert"]), 0
  cfg.data.corpus_size = 300
  config_lib.validate(cfg)
  return cfg


@pytest.mark.parametrize("head,negatives", [("cls", "hard"), ("dual", "hard"), ("dual", "in_batch")])
def test_ce_configs_train_rerank_and_distill_two_steps(tmp_path, tiny_models, isolated_cache, head, negatives):
  from edistill.eval import rerank
  cfg = _tiny(_load("cross_encoder", f"head={head},negatives={negatives},runlocal"), tiny_models)
  assert recipes.precompute(cfg).startswith(f"precomputed for {cfg.data.source}: ")
  metrics = recipes.train(cfg, tmp_path / "ce")
  assert np.isfinite(metrics["loss"]) and {k.split("/")[0] for k in metrics if "/" in k} == {"label"}
  rows = rerank.run(cfg, tmp_path / "ce")
  assert set(rows) == {"first_stage", "reranked"}
  assert 0 <= rows["reranked"]["mrr@10"] <= 1 and rows["reranked"]["num_queries"] == rows["first_stage"]["num_queries"]
  # Re-ranking only reorders the top k: recall@k is unchanged.
  assert rows["reranked"]["recall@10"] <= rows["first_stage"]["recall@10"] + 1e-9
  name = f"{report.data_name(cfg.data)}_test"
  assert (tmp_path / "ce" / f"results_{name}.md").is_file()
  # The gain's paired interval: over per-query RR@10 of both rows, written beside the results (BM25
  # as the first stage: the tiny dual encoder finds nothing to share).
  import json
  cfg.cross_encoder.first_stage = "bm25"
  rows = rerank.run(cfg, tmp_path / "ce")
  assert rows["first_stage"]["mrr@10"] > 0
  per_query = json.loads((tmp_path / "ce" / f"per_query_{name}.json").read_text())
  assert set(per_query) == {"first_stage", "reranked"} and len(per_query["reranked"]) == rows["reranked"]["num_queries"]
  ratio = 100 * np.mean(list(per_query["reranked"].values())) / np.mean(list(per_query["first_stage"].values()))
  assert ratio == pytest.approx(100 * rows["reranked"]["mrr@10"] / rows["first_stage"]["mrr@10"], rel=1e-6)
  assert rows["reranked"]["teacher_pct_lo"] <= ratio <= rows["reranked"]["teacher_pct_hi"]
  text = (tmp_path / "ce" / f"results_{name}.md").read_text()
  assert "% first_stage MRR@10" in text and "documents (" in text and " are longer and cut." in text
  if negatives == "in_batch":
    return
  student = _tiny(_load("ce_distill", f"head={head},ce={tmp_path / 'ce' / 'checkpoints'},runlocal"), tiny_models)
  assert "training examples" in recipes.precompute(student)
  assert len(list((isolated_cache / "ce_teacher").glob("*.npz"))) >= 1  # Precompute filled the CE's table.
  metrics = recipes.train(student, tmp_path / "student")
  expected = {"label", "score"} | ({"query_emb", "doc_emb"} if head == "dual" else set())
  assert {k.split("/")[0] for k in metrics if "/" in k} == expected
  assert np.isfinite(metrics["loss"])
  assert len(list((isolated_cache / "ce_teacher").glob("*.npz"))) >= 1  # The CE's outputs were cached.
  if head != "dual":
    return
  # The asymmetric student: the dual encoder's documents; the table's teacher row is that dual encoder.
  asym = _tiny(_load("ce_distill", f"head=dual,kind=asymmetric,ce={tmp_path / 'ce' / 'checkpoints'},runlocal"),
               tiny_models)
  metrics = recipes.train(asym, tmp_path / "asym")
  assert {k.split("/")[0] for k in metrics if "/" in k} == {"label", "score", "query_emb"}
  assert np.isfinite(metrics["loss"])
  # The same student from the CE's outputs written to a file (scored elsewhere, e.g. on a GPU): the
  # same training, to the bit.
  from edistill.recipes import embed_distill
  data, _ = ce._training_data(asym)
  student_pre, _, _ = embed_distill.student_parts(asym)
  examples = embed_distill.student_pipeline(asym, data, student_pre.tokenizer, 0, 1).examples
  model, pre, ce_params = ce_lib.restore(asym.teacher, asym.cross_encoder, asym.cross_encoder.checkpoint)
  outputs = ce.teacher_outputs(model, ce_params, pre.tokenizer, data, examples, asym.data.max_query_length,
                               asym.data.max_doc_length, asym.cross_encoder.batch_size)
  q_rows = np.broadcast_to(examples.query[:, None], examples.docs.shape).reshape(-1)
  ce.write_outputs(tmp_path / "outputs.npz", data, q_rows, examples.docs.reshape(-1),
                   {k: v.reshape(len(q_rows), *v.shape[2:]) for k, v in outputs.items()})
  from_file = asym.copy_and_resolve_references()
  from_file.cross_encoder.update(checkpoint="", outputs=str(tmp_path / "outputs.npz"))
  config_lib.validate(from_file)
  assert recipes.train(from_file, tmp_path / "asym_file")["loss"] == metrics["loss"]
  rows = suite.run(asym, tmp_path / "asym", split="test", models=("teacher", "student"), scann=False)
  assert rows["student"]["num_queries"] == rows["teacher"]["num_queries"] > 0
  de = suite.run(_tiny(_load("cross_encoder", "head=dual,runlocal"), tiny_models), tmp_path / "de", split="test",
                 models=("teacher",), scann=False)
  assert rows["teacher"]["mrr@10"] == pytest.approx(de["teacher"]["mrr@10"], abs=1e-9)


def test_stored_ce_outputs_are_looked_up_by_pair_and_refuse_other_data(tmp_path):
  """``cross_encoder.outputs``: each example's (query, document) pair finds its row whatever the file's
  order; a pair the file lacks, an id not in the data, or edited texts stop the run naming the file."""
  from types import SimpleNamespace
  data = SimpleNamespace(query_ids=["q0", "q1"], query_texts=["a", "b"], doc_ids=["d0", "d1", "d2"],
                         doc_texts=["x", "y", "z"])
  q_rows, d_rows = np.array([1, 0, 0, 1]), np.array([2, 0, 1, 0])
  scores = np.array([12.0, 0.0, 1.0, 10.0], np.float32)
  vectors = np.arange(8, dtype=np.float32).reshape(4, 2)
  path = tmp_path / "out.npz"
  ce.write_outputs(path, data, q_rows, d_rows, {"scores": scores, "query_vectors": vectors})
  examples = pipeline.Examples(np.array([0, 1], np.int32), np.array([[1, 0], [0, 2]], np.int32))
  got = ce.stored_outputs(path, data, examples)
  np.testing.assert_array_equal(got["scores"], [[1.0, 0.0], [10.0, 12.0]])
  np.testing.assert_array_equal(got["query_vectors"], vectors[[[2, 1], [3, 0]]])
  with pytest.raises(ValueError, match=r"out.npz: 1 \(query, document\) pairs .* not in it, e.g. \[\('q1', 'd1'\)\]"):
    ce.stored_outputs(path, data, pipeline.Examples(np.array([1], np.int32), np.array([[1]], np.int32)))
  edited = SimpleNamespace(**{**vars(data), "doc_texts": ["x", "y", "z!"]})
  with pytest.raises(ValueError, match="out.npz: the texts of its pairs differ"):
    ce.stored_outputs(path, edited, examples)
  other = SimpleNamespace(**{**vars(data), "query_ids": ["q0", "q9"]})
  with pytest.raises(ValueError, match="not in the training data"):
    ce.stored_outputs(path, other, examples)
  np.savez(tmp_path / "foreign.npz", scores=scores)
  with pytest.raises(ValueError, match=r"no \['doc_ids', 'fingerprint', 'query_ids'\]; not a file of"):
    ce.stored_outputs(tmp_path / "foreign.npz", data, examples)
  with pytest.raises(ValueError, match="cannot read it"):
    ce.stored_outputs(tmp_path / "missing.npz", data, examples)
  with pytest.raises(ValueError, match="need 'scores'"):
    ce.write_outputs(path, data, q_rows, d_rows, {"logits": scores})


def test_ce_configs_fail_loudly_on_bad_settings():
  with pytest.raises(ValueError, match="head='max'"):
    _load("cross_encoder", "head=max")
  cfg = _load("ce_distill", "head=cls,ce=/nowhere")
  cfg.loss.query_emb = 1.0
  with pytest.raises(ValueError, match="dual-pooling head"):
    config_lib.validate(cfg)
  cfg = _load("ce_distill", "head=cls,ce=/nowhere")
  cfg.student.kind = "cross"
  with pytest.raises(ValueError, match="cannot learn from a cross-encoder"):
    config_lib.validate(cfg)
  cfg = _load("ce_distill", "head=dual,kind=asymmetric,ce=/nowhere")
  config_lib.validate(cfg)
  cfg.loss.doc_emb = 1.0
  with pytest.raises(ValueError, match="loss.doc_emb"):
    config_lib.validate(cfg)
  with pytest.raises(ValueError, match="kind='cross'"):
    _load("ce_distill", "kind=cross")
  cfg = _load("cross_encoder", "head=cls")
  cfg.data.num_hard_negatives = 0
  with pytest.raises(ValueError, match="num_hard_negatives >= 1"):
    config_lib.validate(cfg)


def test_ce_hard_negatives_are_the_dual_encoders_top_non_positives(tiny_models, isolated_cache):
  """``cross_encoder.mine='teacher'``: each training example's negatives are among the dual encoder's
  best ``mine_depth`` documents for its query of those that score below all its positives (NumPy over
  the same cached tables), not BM25's."""
  from edistill.models import zoo
  from edistill.recipes import embed_distill
  cfg = _tiny(_load("cross_encoder", "head=dual,mine=teacher,runlocal"), tiny_models)
  depth, hard = cfg.cross_encoder.mine_depth, cfg.data.num_hard_negatives
  setup = recipes.build(cfg)
  data = embed_distill.training_data(cfg)
  tables = embed_distill.teacher_tables(zoo.load_from_config(cfg.cross_encoder.dual_encoder), data, cfg.data, 128)
  tq, td = np.asarray(tables["queries"]), np.asarray(tables["docs"])
  positives = pipeline.relevant_docs(data.qrels, data.query_ids, data.doc_ids)
  checked = 0
  for q, docs in zip(setup.pipe.examples.query, setup.pipe.examples.docs):
    pos = np.asarray(positives[int(q)])
    scores = td.astype(np.float64) @ tq[q].astype(np.float64)
    below = [int(d) for d in np.argsort(-scores) if d not in set(pos.tolist()) and scores[d] < scores[pos].min()]
    if len(below) < depth:
      continue
    # The random tiny encoder scores many documents within float32 rounding of each other: a tolerance.
    cut, eps = scores[below[depth - 1]], 1e-5
    allowed = {d for d in range(len(td)) if d not in set(pos.tolist()) and cut - eps <= scores[d] < scores[pos].min() + eps}
    if len(allowed) >= hard:
      assert set(docs[1:].tolist()) <= allowed, (q, docs, allowed)
      checked += 1
  assert checked >= len(setup.pipe.examples.query) // 2
  bm25 = recipes.build(_tiny(_load("cross_encoder", "head=dual,mine=bm25,runlocal"), tiny_models))
  assert not np.array_equal(bm25.pipe.examples.docs, setup.pipe.examples.docs)
