"""The sharded train step, the loop (resume, NaN guard) and every ablation config, on tiny models."""
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from edistill import checkpoint, config_lib, mesh as mesh_lib, recipes, teachers
from edistill.data import pipeline
from edistill.models import hf_import
from edistill.models.dual_encoder import DualEncoder, init_projection
from edistill.models.encoder import Encoder
from edistill.objective import LossConfig, compute_loss
from edistill.recipes import embed_distill
from edistill.train import loop, metrics_writer, state as state_lib
from edistill.train.step import jit_train_step

ROOT = Path(__file__).resolve().parents[1]
B, C = 8, 2  # Global batch, documents per query (positive + 1 hard negative).


def _batch(seed=0, n_docs=40):
  rng = np.random.default_rng(seed)
  positives = {q: np.array([q % n_docs], np.int32) for q in range(24)}
  ex = pipeline.build_examples(positives, n_docs, num_hard_negatives=C - 1, seed=seed)
  lengths = lambda n, l: rng.integers(3, l + 1, n).astype(np.int32)
  qlen, dlen = lengths(24, 10), lengths(n_docs, 16)
  q = pipeline.Tokens(np.where(np.arange(10) < qlen[:, None], rng.integers(5, 1000, (24, 10)), 0), qlen, 0)
  d = pipeline.Tokens(np.where(np.arange(16) < dlen[:, None], rng.integers(5, 1000, (n_docs, 16)), 0), dlen, 0)
  return pipeline.Pipeline(ex, q, d, B, seed=seed, positives=positives).batch(0)


def _setup(fixtures, kind="asymmetric", teacher_mode="precomputed"):
  cfg, params = hf_import.load_params(fixtures / "tiny-bert")
  tcfg, tparams = hf_import.load_params(fixtures / "tiny-mpnet")
  student = DualEncoder(Encoder(cfg), Encoder(cfg) if kind == "untied" else None, kind)
  params = {"query_tower": params, "query_projection": init_projection(jax.random.key(0), 32, 32)}
  if kind == "untied":
    params["doc_tower"] = jax.tree.map(np.copy, params["query_tower"])
  if kind != "asymmetric":
    params["doc_projection"] = init_projection(jax.random.key(1), 32, 32)
  teacher = teachers.Teacher(Encoder(tcfg, normalize=True), teacher_mode)
  return student, params, teacher, tparams


def _teacher_tables(teacher, tparams, batch, rows=64):
  """Precomputed tables [rows, Dt] holding exactly the embeddings the online teacher computes for the
  batch's rows (zeros elsewhere)."""
  online = teachers.Teacher(teacher.encoder, "online")
  tq = np.asarray(online.query_embeddings({"encoder": tparams}, batch))
  td = np.asarray(online.doc_embeddings({"encoder": tparams}, batch))
  queries = np.zeros((rows, tq.shape[1]), np.float32)
  docs = np.zeros((rows, td.shape[1]), np.float32)
  queries[batch["query_index"]] = tq
  docs[batch["doc_index"].reshape(-1)] = td
  return {"queries": queries, "docs": docs}


def _teacher_inputs(teacher, tparams, batch, mode):
  """(what the step gets as teacher_params, the batch with the teacher's host inputs), as the loop
  builds them (``loop.device_teacher_params`` / ``loop.host_batch``)."""
  t = teachers.Teacher(teacher.encoder, mode, teacher.table_dtype)
  host = {"encoder": tparams} if mode == "online" else _teacher_tables(teacher, tparams, batch)
  return t.device_params(host), {**batch, **t.host_inputs(host, batch)}


ALL_TERMS = LossConfig(label=1.0, score=0.7, margin_mse=0.3, query_emb=0.5, doc_emb=0.4)


def _run(student, params, teacher, teacher_params, batch, cfg, devices, steps=2, **step_kw):
  mesh = mesh_lib.make_mesh({"data": -1, "model": 1}, devices)
  # lr 1e-4: an Adam step is ~lr * sign(g), so an ulp-level difference in a near-zero gradient moves a
  # parameter by at most ~lr; the 1e-5 tolerance then holds for every element.
  tx = state_lib.make_optimizer(1e-4, 10, warmup_steps=0, weight_decay=0.01, grad_clip=1.0)
  state_sh = mesh_lib.tree_shardings(jax.eval_shape(lambda p: state_lib.create(p, tx, 0), params), mesh)
  state = jax.jit(lambda p: state_lib.create(p, tx, 0), out_shardings=state_sh)(params)
  fn = jit_train_step(student, teacher, cfg, tx, state_sh, mesh_lib.replicated(mesh), mesh_lib.batch_sharding(mesh),
                      **step_kw)
  tp = jax.device_put(teacher_params, mesh_lib.replicated(mesh))
  gb = jax.device_put(batch, mesh_lib.batch_sharding(mesh))
  losses = []
  for _ in range(steps):
    state, metrics = fn(state, tp, gb)
    losses.append(metrics)
  return jax.device_get(state.params), [jax.device_get(m) for m in losses]


def _without_key_bias(params):
  """Params with the key-projection bias zeroed. Its true gradient is exactly 0 (adding b.q to every
  score of a row leaves the softmax unchanged), so Adam turns float noise into +-lr steps whose sign
  differs between any two reduction orders; every other parameter must agree to 1e-5."""
  def strip(path, x):
    if "qkv" in str(path) and "bias" in str(path):
      x = np.array(x)
      h = x.shape[0] // 3
      x[h:2 * h] = 0
    return x
  return jax.tree_util.tree_map_with_path(strip, params)


@pytest.mark.parametrize("kind,cfg", [("asymmetric", LossConfig(label=1.0, score=1.0, query_emb=1.0)),
                                      ("untied", ALL_TERMS)])
def test_sharded_step_equals_single_device_step(fixtures, kind, cfg):
  assert len(jax.devices()) == 8
  batch = _batch()
  student, params, teacher, tparams = _setup(fixtures, kind)
  tp, batch = _teacher_inputs(teacher, tparams, batch, "precomputed")
  p1, m1 = _run(student, params, teacher, tp, batch, cfg, jax.devices()[:1])
  p8, m8 = _run(student, params, teacher, tp, batch, cfg, jax.devices())
  for a, b in zip(m1, m8):
    assert set(a) == set(b)
    for k in a:
      np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-5, err_msg=k)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5),
               _without_key_bias(p1), _without_key_bias(p8))
  assert m1[1]["loss"] < m1[0]["loss"] or not np.allclose(m1[0]["loss"], m1[1]["loss"])  # It trained.


def test_online_and_precomputed_teachers_give_the_same_loss(fixtures):
  batch = _batch(1)
  student, params, teacher, tparams = _setup(fixtures, "asymmetric")
  rng = jax.random.key(0)
  out = {}
  for mode in ("online", "precomputed"):
    t = teachers.Teacher(teacher.encoder, mode)
    tp, b = _teacher_inputs(t, tparams, batch, mode)
    out[mode] = compute_loss(params, tp, b, rng, student=student, teacher=t,
                             cfg=LossConfig(label=1.0, score=1.0, query_emb=1.0), deterministic=True)
  np.testing.assert_allclose(out["online"][0], out["precomputed"][0], rtol=1e-6)


@pytest.mark.parametrize("kind", ["asymmetric", "untied"])
def test_extra_padding_leaves_loss_and_gradients_unchanged(fixtures, kind):
  # What data.pad_multiple relies on: a batch padded to 16 / 24 columns instead of its own 10 / 16.
  batch = _batch(3)
  student, params, teacher, tparams = _setup(fixtures, kind, "online")
  cfg = ALL_TERMS if kind == "untied" else LossConfig(label=1.0, score=1.0, query_emb=1.0)
  wide = dict(batch)
  for k, extra in (("query_input_ids", 6), ("query_attention_mask", 6), ("doc_input_ids", 8), ("doc_attention_mask", 8)):
    wide[k] = np.concatenate([batch[k], np.zeros((*batch[k].shape[:-1], extra), np.int32)], axis=-1)
  fn = lambda p, b: compute_loss(p, {"encoder": tparams}, b, jax.random.key(0), student=student,
                                 teacher=teachers.Teacher(teacher.encoder, "online"), cfg=cfg, deterministic=True)[0]
  (l1, g1), (l2, g2) = (jax.value_and_grad(fn)(params, b) for b in (batch, wide))
  np.testing.assert_allclose(l1, l2, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * np.abs(a).max()), g1, g2)


def test_teacher_gets_no_gradient_and_frozen_params_do_not_move(fixtures):
  batch = _batch(2)
  student, params, teacher, tparams = _setup(fixtures, "tied", "online")
  grads = jax.grad(lambda tp: compute_loss(params, tp, batch, jax.random.key(0), student=student, teacher=teacher,
                                           cfg=ALL_TERMS, deterministic=True)[0])({"encoder": tparams})
  assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(grads))
  tx = state_lib.make_optimizer(1e-2, 10, frozen=(r"query_tower/embeddings/",))
  state = state_lib.create(params, tx, 0)
  from edistill.train.step import train_step
  new, _ = train_step(state, {"encoder": tparams}, batch, student=student, teacher=teacher, cfg=ALL_TERMS, tx=tx)
  np.testing.assert_array_equal(new.params["query_tower"]["embeddings"]["word"]["embedding"],
                                params["query_tower"]["embeddings"]["word"]["embedding"])
  assert np.abs(new.params["query_tower"]["layer_0"]["mlp_in"]["kernel"]
                - params["query_tower"]["layer_0"]["mlp_in"]["kernel"]).max() > 0


def test_frozen_lower_layers_cost_no_backward_pass_and_leave_the_update_unchanged(fixtures):
  # train.frozen through the step: no gradient work below the lowest trainable layer (the compiled
  # step's FLOPs drop), and the trainable params get exactly the update they get when only the
  # optimizer freezes the others.
  batch = _batch(2)
  student, params, teacher, tparams = _setup(fixtures, "tied", "online")
  frozen = (r"query_tower/embeddings/", r"query_tower/layer_0/")
  tx = state_lib.make_optimizer(1e-2, 10, frozen=frozen)
  from edistill.train.step import train_step
  runs = {}
  for name, step_frozen in (("optimizer only", ()), ("step", frozen)):
    fn = jax.jit(lambda st, tp, b, f=step_frozen: train_step(st, tp, b, student=student, teacher=teacher,
                                                             cfg=ALL_TERMS, tx=tx, frozen=f))
    state = state_lib.create(params, tx, 0)
    compiled = fn.lower(state, {"encoder": tparams}, batch).compile()
    runs[name] = (compiled.cost_analysis()["flops"], jax.device_get(fn(state, {"encoder": tparams}, batch)[0].params))
  (flops_tx, p_tx), (flops_step, p_step) = runs["optimizer only"], runs["step"]
  assert flops_step < 0.85 * flops_tx, (flops_step, flops_tx)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), p_tx, p_step)
  np.testing.assert_array_equal(p_step["query_tower"]["layer_0"]["mlp_in"]["kernel"],
                                params["query_tower"]["layer_0"]["mlp_in"]["kernel"])


def test_frozen_patterns_that_match_nothing_or_everything_fail_naming_the_key():
  params = {"query_tower": {"embeddings": {"word": np.zeros(2)}, "layer_0": {"mlp_in": np.zeros(2)}}}
  state_lib.check_frozen(params, ())
  state_lib.check_frozen(params, (r"query_tower/embeddings/",))
  with pytest.raises(ValueError, match=r"train.frozen: 'query_tower/layer_7/' matches no parameter"):
    state_lib.check_frozen(params, (r"query_tower/embeddings/", r"query_tower/layer_7/"))
  with pytest.raises(ValueError, match="freezes every parameter"):
    state_lib.check_frozen(params, (r"query_tower/embeddings/", r"query_tower/layer_[0-2]/"))


def test_pull_to_init_converges_to_the_l2sp_minimum_and_is_off_by_default():
  # loss ||theta - t||^2 plus the pull w/2 ||theta - theta0||^2: minimum (2t + w theta0) / (2 + w).
  t, theta0, w = np.array([3.0, -1.0, 0.5]), np.array([1.0, 1.0, 1.0]), 4.0
  tx = state_lib.make_optimizer(0.05, 3000, schedule="constant", pull=w)
  params, opt = {"x": jnp.asarray(theta0)}, None
  opt = tx.init(params)
  step = jax.jit(lambda p, o: (lambda g: (lambda u, o2: (optax.apply_updates(p, u), o2))(*tx.update(g, o, p)))(
      jax.grad(lambda q: jnp.sum((q["x"] - t) ** 2))(p)))
  for _ in range(3000):
    params, opt = step(params, opt)
  np.testing.assert_allclose(params["x"], (2 * t + w * theta0) / (2 + w), atol=2e-3)
  plain = state_lib.make_optimizer(0.05, 3000, schedule="constant")
  assert jax.tree.structure(plain.init(params)) != jax.tree.structure(tx.init(params))
  assert jax.tree.structure(plain.init(params)) == jax.tree.structure(state_lib.make_optimizer(0.05, 3000, pull=0.0,
                                                                                                schedule="constant").init(params))


def test_model_axis_shards_the_big_matrices():
  mesh = mesh_lib.make_mesh({"data": 2, "model": 4})
  tree = {"query_tower": {"layer_0": {"attention": {"qkv": {"kernel": np.zeros((32, 96))}},
                                      "mlp_out": {"kernel": np.zeros((64, 32))}, "output_norm": {"ln": {"scale": np.zeros(32)}}}}}
  sh = mesh_lib.tree_shardings(tree, mesh)
  assert sh["query_tower"]["layer_0"]["attention"]["qkv"]["kernel"].spec == jax.sharding.PartitionSpec(None, "model")
  assert sh["query_tower"]["layer_0"]["mlp_out"]["kernel"].spec == jax.sharding.PartitionSpec("model", None)
  assert sh["query_tower"]["layer_0"]["output_norm"]["ln"]["scale"].spec == jax.sharding.PartitionSpec()
  with pytest.raises(ValueError, match="needs 12 devices"):
    mesh_lib.make_mesh({"data": 3, "model": 4})


def test_sharding_rules_come_from_the_config():
  cfg = config_lib.base_config()
  assert mesh_lib.axes(cfg.mesh) == {"data": -1, "model": 1} and mesh_lib.rules(cfg.mesh) == mesh_lib.DEFAULT_RULES
  mesh = mesh_lib.make_mesh({"data": 2, "model": 4})
  tree = {"tower": {"embeddings": {"word": {"embedding": np.zeros((100, 32))}}, "mlp_in": {"kernel": np.zeros((32, 64))}}}
  cfg.mesh.rules = ((r".*/word/embedding$", 0),)  # Shard the vocabulary; the default mlp_in rule is gone.
  sh = mesh_lib.tree_shardings(tree, mesh, mesh_lib.rules(cfg.mesh))
  assert sh["tower"]["embeddings"]["word"]["embedding"].spec == jax.sharding.PartitionSpec("model", None)
  assert sh["tower"]["mlp_in"]["kernel"].spec == jax.sharding.PartitionSpec()
  cfg.mesh.rules = (("(unclosed", 0),)
  with pytest.raises(ValueError, match=r"config.mesh.rules entry .*bad regex"):
    config_lib.validate(cfg)


# ------------------------------------------------------------------------------------ the loop
def _config(tiny_models, row="qemb", steps=6, **train):
  cfg = config_lib.load_config(f"{ROOT / 'configs' / 'ablation.py'}:row={row},runlocal")
  cfg.teacher.name, cfg.student.name = str(tiny_models["mpnet"]), str(tiny_models["bert"])
  cfg.teacher.num_layers = cfg.student.num_layers = 0
  cfg.data.corpus_size = 300
  cfg.train.update(steps=steps, **train)
  config_lib.validate(cfg)
  return cfg


@pytest.mark.parametrize("row", ["labels", "score", "asym", "qemb", "qgen", "unlab"])
def test_every_ablation_config_builds_and_runs_two_steps(tmp_path, tiny_models, isolated_cache, row):
  metrics = recipes.train(_config(tiny_models, row, steps=2), tmp_path)
  assert np.isfinite(metrics["loss"])
  expected = {"labels": {"label"}, "score": {"label", "score"}, "asym": {"label", "score"},
              "qemb": {"label", "score", "query_emb"}, "qgen": {"label", "score", "query_emb"},
              "unlab": {"label", "score", "query_emb"}}[row]
  assert {k.split("/")[0] for k in metrics if "/" in k} == expected
  assert (tmp_path / "metrics.jsonl").read_text().count("\n") == 2
  assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_bucketed_run_trains_and_its_minutes_leave_out_evaluations(tmp_path, tiny_models, isolated_cache,
                                                                  monkeypatch):
  import time
  cfg = _config(tiny_models, steps=4, log_every=1)
  cfg.data.bucket_window, cfg.data.pad_multiple, cfg.eval.every_steps = 2, 4, 1
  cfg.train.pull_to_init = 0.1  # Its anchor is optimizer state: sharded, checkpointed like the rest.
  shapes = []
  real_batch = pipeline.Pipeline.batch
  monkeypatch.setattr(pipeline.Pipeline, "batch", lambda self, step: (
      lambda b: shapes.append(b["query_input_ids"].shape[1]) or b)(real_batch(self, step)))
  slow_eval = ("eval", 1, lambda params: time.sleep(1.5) or {"x": 0.0})
  loop.train(cfg, tmp_path, recipes.of(cfg).build, [slow_eval])
  logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  minutes = [m["train_minutes"] for m in logged if "train_minutes" in m]
  assert len(minutes) == 4 and all(np.isfinite(m["loss"]) for m in logged if "loss" in m)
  # Each 1.5 s evaluation is not training time; a step with a new batch width compiles (seconds).
  reused = [i for i in range(1, 4) if shapes[i] in shapes[:i]]
  assert reused and all((minutes[i] - minutes[i - 1]) * 60 < 1.0 for i in reused)
  assert all(w % 4 == 0 or w == cfg.data.max_query_length for w in shapes)


def test_teacher_negatives_are_the_mined_ones_in_the_training_examples(tmp_path, tiny_models, isolated_cache):
  from edistill.data import mining
  cfg = _config(tiny_models, "qemb")
  cfg.data.num_hard_negatives, cfg.data.teacher_negatives = 2, 6
  setup = recipes.build(cfg)
  ex, tables = setup.pipe.examples, setup.teacher_params
  mined = mining.teacher_negatives(np.asarray(tables["queries"]), np.asarray(tables["docs"]),
                                   setup.pipe.positives, 6)
  assert ex.docs.shape[1] == 3 and sum(map(len, mined.values())) > 0
  for q, negs in zip(ex.query, ex.docs[:, 1:]):
    pool = mined[int(q)]
    if len(pool) >= 2:  # Fewer mined than wanted: topped up with random documents.
      assert set(negs.tolist()) <= set(pool), (q, negs, pool)
  cfg.data.num_hard_negatives = 0
  with pytest.raises(ValueError, match="teacher_negatives"):
    config_lib.validate(cfg)


def test_resume_after_kill_ends_with_the_same_parameters(tmp_path, tiny_models, isolated_cache, monkeypatch):
  cfg = _config(tiny_models, steps=6, checkpoint_every=3)
  recipes.train(cfg, tmp_path / "straight")
  from edistill import checkpoint
  straight = checkpoint.Checkpointer(tmp_path / "straight" / "checkpoints")
  assert straight.all_steps() == [3, 6]

  real_iterate = pipeline.Pipeline.iterate

  def killed_after_four(self, start=0, num_steps=None):
    for i, batch in enumerate(real_iterate(self, start, num_steps)):
      if i == 4:
        raise KeyboardInterrupt("simulated kill during step 5")
      yield batch

  monkeypatch.setattr(pipeline.Pipeline, "iterate", killed_after_four)
  with pytest.raises(KeyboardInterrupt):
    recipes.train(cfg, tmp_path / "killed")
  monkeypatch.setattr(pipeline.Pipeline, "iterate", real_iterate)
  resumed_ckpt = checkpoint.Checkpointer(tmp_path / "killed" / "checkpoints")
  assert resumed_ckpt.all_steps() == [3]
  resumed_ckpt.close()
  recipes.train(cfg, tmp_path / "killed")  # Resumes from step 3.

  def final(workdir):
    c = checkpoint.Checkpointer(workdir / "checkpoints")
    setup = recipes.build(cfg)
    abstract = jax.eval_shape(lambda p: state_lib.create(p, setup.tx, cfg.seed), setup.init_params)
    try:
      return jax.device_get(c.restore(abstract))
    finally:
      c.close()

  a, b = final(tmp_path / "straight"), final(tmp_path / "killed")
  assert int(a.step) == int(b.step) == 6
  jax.tree.map(np.testing.assert_array_equal, a.params, b.params)
  jax.tree.map(np.testing.assert_array_equal, a.opt_state, b.opt_state)


def _nan_teacher_rows(batch):
  """The batch with its precomputed teacher rows (what the loop gathered from the tables) turned NaN."""
  return {**batch, "teacher_query": batch["teacher_query"] * jnp.nan, "teacher_doc": batch["teacher_doc"] * jnp.nan}


def test_nan_mid_training_stops_with_the_step_range_and_keeps_the_last_good_checkpoint(
    tmp_path, tiny_models, isolated_cache, monkeypatch):
  cfg = _config(tiny_models, steps=8, checkpoint_every=2, log_every=1)
  real_jit = embed_distill.jit_train_step

  def poisoned_from_step_three(*args, **kw):
    fn = real_jit(*args, **kw)
    calls = {"n": 0}

    def step(state, teacher_params, batch):
      calls["n"] += 1
      if calls["n"] >= 3:  # Bad data arrives in the third step.
        batch = _nan_teacher_rows(batch)
      return fn(state, teacher_params, batch)
    return step

  monkeypatch.setattr(embed_distill, "jit_train_step", poisoned_from_step_three)
  with pytest.raises(loop.NonFiniteLossError, match=r"loss is nan at a step in \(2, 3\].*Last checkpoint: 2"):
    recipes.train(cfg, tmp_path)
  from edistill import checkpoint
  c = checkpoint.Checkpointer(tmp_path / "checkpoints")
  assert c.all_steps() == [2]  # The good state survives; nothing non-finite was written.
  c.close()


def test_config_json_is_written_once_training_runs_and_not_by_a_nan_first_step(
    tmp_path, tiny_models, isolated_cache, monkeypatch):
  cfg = _config(tiny_models, steps=2, log_every=1)
  recipes.train(cfg, tmp_path / "ok")
  assert json.loads((tmp_path / "ok" / "config.json").read_text()) == json.loads(cfg.to_json_best_effort())
  (tmp_path / "bad").mkdir()
  (tmp_path / "bad" / "config.json").write_text("{}")
  real_jit = embed_distill.jit_train_step

  def poisoned(*args, **kw):
    fn = real_jit(*args, **kw)
    return lambda state, teacher_params, batch: fn(state, teacher_params, _nan_teacher_rows(batch))

  monkeypatch.setattr(embed_distill, "jit_train_step", poisoned)
  with pytest.raises(loop.NonFiniteLossError, match=r"loss is nan at a step in \(0, 1\]"):
    recipes.train(cfg, tmp_path / "bad")
  assert (tmp_path / "bad" / "config.json").read_text() == "{}"


def test_metrics_lines_after_the_resumed_step_are_dropped():
  lines = [json.dumps({"step": s, "loss": 1.0}) + "\n" for s in (1, 2, 3, 4)] + ['{"step": 5, "lo']
  assert metrics_writer.lines_up_to(lines, 2) == lines[:2]
  assert metrics_writer.lines_up_to(lines, 10) == lines[:4]  # The line cut short by a kill is dropped.
  assert metrics_writer.lines_up_to(lines, 0) == []


def test_online_teacher_in_the_loop_matches_the_precomputed_tables(tmp_path, tiny_models, isolated_cache):
  cfg = _config(tiny_models, steps=1)
  precomputed = recipes.train(cfg, tmp_path / "pre")
  cfg.teacher.mode = "online"  # The tiny teacher shares the student's vocabulary, so this is allowed.
  online = recipes.train(cfg, tmp_path / "online")
  for k in ("loss", "score/loss", "query_emb/loss"):
    np.testing.assert_allclose(online[k], precomputed[k], rtol=1e-5, err_msg=k)


def test_lstsq_projection_recovers_a_linear_map():
  rng = np.random.default_rng(0)
  s = rng.normal(size=(500, 8)).astype(np.float32)
  w, b = rng.normal(size=(8, 12)), rng.normal(size=12)
  p = embed_distill.lstsq_projection(s, (s @ w + b).astype(np.float32), ridge=1e-9)
  np.testing.assert_allclose(p["kernel"], w, atol=1e-4)
  np.testing.assert_allclose(p["bias"], b, atol=1e-4)


def test_pseudo_labels_are_the_teacher_top1_documents():
  from edistill.data.types import RetrievalSet
  data = RetrievalSet(["d0", "d1", "d2"], ["a", "b", "c"], ["q0"], ["x"], {"q0": {"d1": 1}}, {})
  docs = np.eye(3, 4, dtype=np.float32)
  queries = np.array([[0.1, 0.2, 0.9, 0], [0.8, 0.1, 0.0, 0], [0, 0.5, 0.4, 0.3]], np.float32)
  out, top1 = embed_distill.pseudo_labeled(data, ["u0", "u1", "u2"], ["y", "z", "w"], queries, docs)
  assert top1.tolist() == [2, 0, 1]
  assert out.query_ids == ["q0", "u0", "u1", "u2"] and out.query_texts == ["x", "y", "z", "w"]
  assert out.qrels == {"q0": {"d1": 1}, "u0": {"d2": 1}, "u1": {"d0": 1}, "u2": {"d1": 1}}
  with pytest.raises(ValueError, match="also labeled"):
    embed_distill.pseudo_labeled(data, ["q0"], ["x"], queries[:1], docs)


def test_train_step_device_inputs_do_not_grow_with_the_corpus(tmp_path, tiny_models, isolated_cache, monkeypatch):
  # What the loop hands the jitted step (teacher params and batch) must be O(batch): a precomputed
  # teacher's tables stay on the host and only the batch's rows travel.
  real_jit = embed_distill.jit_train_step
  seen = []

  def recording(*args, **kw):
    fn = real_jit(*args, **kw)

    def step(state, teacher_params, batch):
      seen.append(jax.tree.map(lambda x: (x.shape, str(x.dtype)), (teacher_params, batch)))
      return fn(state, teacher_params, batch)
    return step

  monkeypatch.setattr(embed_distill, "jit_train_step", recording)
  inputs, rows = {}, {}
  for corpus, unlabeled in ((150, 0), (300, 40)):
    cfg = _config(tiny_models, steps=1)
    cfg.data.corpus_size, cfg.data.unlabeled_queries = corpus, unlabeled
    rows[corpus] = {k: v.shape[0] for k, v in recipes.build(cfg).teacher_params.items()}
    seen.clear()
    recipes.train(cfg, tmp_path / str(corpus))
    inputs[corpus] = seen[0]
  assert rows[300]["docs"] == 2 * rows[150]["docs"] and rows[300]["queries"] > rows[150]["queries"]
  assert inputs[150][0] is None and "teacher_doc" in inputs[150][1]  # No table on the device; rows in the batch.
  assert inputs[150] == inputs[300]


def test_bfloat16_teacher_rows_halve_their_bytes_and_keep_the_loss_close(fixtures):
  batch = _batch(6)
  student, params, teacher, tparams = _setup(fixtures, "asymmetric")
  cfg = LossConfig(label=1.0, score=1.0, query_emb=1.0)
  out = {}
  for dtype in ("float32", "bfloat16"):
    t = teachers.Teacher(teacher.encoder, "precomputed", dtype)
    tp, b = _teacher_inputs(t, tparams, batch, "precomputed")
    out[dtype] = (b["teacher_doc"].nbytes, float(compute_loss(params, tp, b, jax.random.key(0), student=student,
                                                              teacher=t, cfg=cfg, deterministic=True)[0]))
  assert out["bfloat16"][0] * 2 == out["float32"][0]
  rel = abs(out["bfloat16"][1] - out["float32"][1]) / out["float32"][1]
  assert 0 < rel < 1e-2, out
  with pytest.raises(ValueError, match="table dtype 'int8'"):
    teachers.Teacher(teacher.encoder, "precomputed", "int8")


def test_a_batch_without_the_precomputed_rows_fails_naming_them(fixtures):
  batch = _batch(6)
  student, params, teacher, tparams = _setup(fixtures, "asymmetric")
  with pytest.raises(ValueError, match="'teacher_query' are not in the batch.*host_inputs"):
    compute_loss(params, None, batch, jax.random.key(0), student=student, teacher=teacher,
                 cfg=LossConfig(label=1.0, score=1.0, query_emb=1.0), deterministic=True)


def test_unlabeled_queries_join_training_with_teacher_rows(tmp_path, tiny_models, isolated_cache):
  cfg = _config(tiny_models, steps=1)
  base = recipes.build(cfg)
  cfg.data.unlabeled_queries = 40
  more = recipes.build(cfg)
  assert len(more.pipe.examples) == len(base.pipe.examples) + 40
  assert more.teacher_params["queries"].shape[0] == len(more.pipe.queries) == len(base.pipe.queries) + 40
  np.testing.assert_array_equal(more.teacher_params["queries"][:len(base.pipe.queries)],
                                np.asarray(base.teacher_params["queries"]))
  # Each unlabeled query's positive is its teacher's best document.
  new = more.pipe.examples.query >= len(base.pipe.queries)
  scores = more.teacher_params["queries"][more.pipe.examples.query[new]] @ np.asarray(more.teacher_params["docs"]).T
  np.testing.assert_array_equal(more.pipe.examples.docs[new, 0], scores.argmax(1))
  assert np.isfinite(recipes.train(cfg, tmp_path)["loss"])


def test_an_extra_unlabeled_file_joins_after_the_pool_as_its_own_cached_table(tmp_path, tiny_models, isolated_cache,
                                                                             monkeypatch):
  from edistill.data.formats import beir
  from edistill.retrieval import encode as encode_lib
  cfg = _config(tiny_models, steps=1)
  cfg.data.unlabeled_queries = 20
  pooled = recipes.build(cfg)
  extra = {"x:a": "open a file and read its lines", "x:b": "sort a list in place", "x:c": "join two paths"}
  beir.write_queries(tmp_path / "extra.jsonl", extra)
  cfg.data.unlabeled_extra = str(tmp_path / "extra.jsonl")
  encoded = []
  real = encode_lib.encode
  monkeypatch.setattr(encode_lib, "encode", lambda fn, params, tok, texts, *a, **k: (
      encoded.append(list(texts)), real(fn, params, tok, texts, *a, **k))[1])
  more = recipes.build(cfg)
  assert encoded == [[extra[k] for k in sorted(extra)]]  # Only the extra: the pool's table is a cache hit.
  n = len(pooled.data.query_ids)
  assert more.data.query_ids[n:] == sorted(extra) and more.data.query_texts[n:] == [extra[k] for k in sorted(extra)]
  np.testing.assert_array_equal(more.teacher_params["queries"][:n], np.asarray(pooled.teacher_params["queries"]))
  new = more.pipe.examples.query >= n
  assert new.sum() == 3
  scores = more.teacher_params["queries"][more.pipe.examples.query[new]] @ np.asarray(more.teacher_params["docs"]).T
  np.testing.assert_array_equal(more.pipe.examples.docs[new, 0], scores.argmax(1))
  beir.write_queries(tmp_path / "clash.jsonl", {pooled.data.query_ids[0]: "a query id training already has"})
  cfg.data.unlabeled_extra = str(tmp_path / "clash.jsonl")
  with pytest.raises(ValueError, match=r"unlabeled_extra=.*1 query ids are already training or unlabeled"):
    recipes.build(cfg)


def test_unlabeled_extra_is_checked_by_name_and_suffix(tiny_models):
  cfg = _config(tiny_models, steps=1)
  for bad, message in (("queries.txt", "expected a .jsonl"), ("gcide_definitions", "a pool of data.source='wordnet_gcide'")):
    cfg.data.unlabeled_extra = bad
    with pytest.raises(ValueError, match=message):
      config_lib.validate(cfg)


def test_precompute_fills_the_caches_that_training_then_reads(tmp_path, tiny_models, monkeypatch):
  monkeypatch.setenv("EDISTILL_CACHE", str(tmp_path / "cache"))  # Empty: this test sees every encode.
  cfg = _config(tiny_models, row="unlab", steps=1)
  summary = recipes.precompute(cfg)
  assert "training examples" in summary and "teacher tables queries" in summary
  from edistill.retrieval import encode as encode_lib

  def no_encoding(*args, **kw):
    raise AssertionError("train re-encoded something precompute should have cached")

  monkeypatch.setattr(encode_lib, "encode", no_encoding)
  assert np.isfinite(recipes.train(cfg, tmp_path / "work")["loss"])


def test_init_from_takes_another_runs_params_whatever_its_optimizer(tmp_path, tiny_models, isolated_cache):
  recipes.train(_config(tiny_models, steps=2), tmp_path / "a")
  # Another optimizer state (pull_to_init keeps an anchor) and no update (learning rate 0): the new
  # run's saved params are the first run's.
  cfg = _config(tiny_models, steps=1, learning_rate=0.0, warmup_steps=0, pull_to_init=0.1,
                init_from=str(tmp_path / "a" / "checkpoints"))
  recipes.train(cfg, tmp_path / "b")
  (_, a), (_, b) = (checkpoint.latest_params(tmp_path / d / "checkpoints") for d in ("a", "b"))
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
