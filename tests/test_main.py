"""The entry point end to end on tiny checkpoints, and its config errors."""
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edistill import config_lib
from tests.conftest import write_wordpiece_vocab

ROOT = Path(__file__).resolve().parents[1]


def _run(tmp_path, *overrides, config="configs/demo.py:similarity"):
  return subprocess.run([sys.executable, "-m", "edistill.main", "--config", str(ROOT / config),
                         "--workdir", str(tmp_path / "work"), *overrides],
                        capture_output=True, text=True, cwd=ROOT, timeout=300)


@pytest.fixture
def tiny_ckpts(tmp_path, fixtures):
  out = {}
  for arch in ("bert", "mpnet"):
    d = Path(shutil.copytree(fixtures / f"tiny-{arch}", tmp_path / arch))
    write_wordpiece_vocab(d)
    out[arch] = d
  return out


def test_demo_config_runs_and_writes_the_similarity_table(tmp_path, tiny_ckpts):
  proc = _run(tmp_path, f"--config.teacher.name={tiny_ckpts['mpnet']}", f"--config.student.name={tiny_ckpts['bert']}",
              "--config.student.num_layers=1", "--config.student.pooling=cls")
  assert proc.returncode == 0, proc.stderr[-3000:]
  table = (tmp_path / "work" / "similarity.md").read_text()
  assert table.count("| query |") == 2 and table.count("**") == 16  # One best document per row.
  assert (tmp_path / "work" / "config_similarity.json").is_file()  # Not config.json: no training happened.


def test_unknown_config_key_is_named(tmp_path):
  proc = _run(tmp_path, "--config.student.max_lenght=64")
  assert proc.returncode != 0 and "max_lenght" in proc.stderr


def test_unknown_preset_argument_is_named(tmp_path):
  proc = _run(tmp_path, config="configs/ablation.py:row=qemb,studnet=l2")
  assert proc.returncode != 0 and "unknown config argument 'studnet'" in proc.stderr


@pytest.mark.parametrize("key,value,message", [
    ("student.pooling", "max", "config.student.pooling='max'"),
    ("mode", "fly", "config.mode='fly'"),
    ("student.kind", "siamese", "config.student.kind='siamese'"),
    ("data.source", "imagenet", "config.data.source='imagenet'"),
    ("loss.score", -1.0, "config.loss.score=-1.0"),
    ("loss.teacher_temperature", 0.0, "config.loss.teacher_temperature=0.0"),
    ("train.batch_size", 1, "config.train.batch_size=1"),
    ("querygen.ratio", 1.0, "config.querygen.ratio=1.0"),
    ("teacher.mode", "telepathic", "config.teacher.mode='telepathic'"),
    ("teacher.table_dtype", "int4", "config.teacher.table_dtype='int4'"),
    ("student.dropout", 1.0, "config.student.dropout=1.0"),
    ("data.unlabeled_pool", "everything", "config.data.unlabeled_pool='everything'"),
    ("data.unlabeled_path", "q.jsonl", "config.data.unlabeled_path"),  # Only when a pool is chosen, below.
])
def test_validation_names_the_key(key, value, message):
  cfg = config_lib.base_config()
  config_lib.validate(cfg)
  section, field = key.rsplit(".", 1) if "." in key else (None, key)
  (cfg[section] if section else cfg)[field] = value
  if key == "data.unlabeled_path":
    cfg.data.unlabeled_pool = "wordnet_all"
  with pytest.raises(ValueError, match=re.escape(message)):
    config_lib.validate(cfg)


@pytest.mark.parametrize("key,value", [
    ("loss.temperature", float("nan")), ("loss.query_emb", float("nan")), ("loss.label", float("inf")),
    ("train.learning_rate", float("nan")), ("train.weight_decay", -float("inf")),
    ("cross_encoder.temperature", float("nan")),
])
def test_validation_rejects_non_finite_numbers_naming_the_key(key, value):
  cfg = config_lib.base_config()
  section, field = key.split(".")
  cfg[section][field] = value
  with pytest.raises(ValueError, match=re.escape(f"config.{key}={value} must be a finite number")):
    config_lib.validate(cfg)


def test_a_nan_on_the_command_line_stops_before_anything_runs(tmp_path):
  proc = _run(tmp_path, "--config.loss.temperature=nan", "--mode=train", config="configs/ablation.py:row=qemb,runlocal")
  assert proc.returncode != 0 and "config.loss.temperature=nan must be a finite number" in proc.stderr
  assert not (tmp_path / "work" / "config.json").exists()


def test_asymmetric_student_rejects_document_matching_and_all_zero_weights():
  cfg = config_lib.base_config()
  cfg.loss.doc_emb = 1.0
  with pytest.raises(ValueError, match="doc_emb must be 0 for an asymmetric"):
    config_lib.validate(cfg)
  cfg.loss.update(label=0.0, score=0.0, query_emb=0.0, doc_emb=0.0)
  cfg.student.kind = "tied"
  with pytest.raises(ValueError, match="every term has weight 0"):
    config_lib.validate(cfg)


def _load(config: str):
  return config_lib.load_config(ROOT / config)


def test_demo_is_the_ablations_score_row_with_the_six_layer_student_and_large_splits():
  demo = _load("configs/demo.py")
  row = _load("configs/ablation.py:row=score,student=l6,n_test=500,n_dev=250")
  config_lib.validate(demo)
  with row.unlocked():
    row.data.unlabeled_queries = demo.data.unlabeled_queries
    row.data.num_hard_negatives, row.data.teacher_negatives = 1, 30  # Chosen on dev.
    row.train.frozen = ("query_tower/embeddings/", "query_tower/layer_[0-2]/")  # Chosen on dev.
  assert demo.to_dict() == row.to_dict()
  assert _load("configs/demo.py:frozen=0").train.frozen == ()
  with pytest.raises(ValueError, match="frozen=6"):
    _load("configs/demo.py:frozen=6")
  plain = _load("configs/demo.py:hard=0")
  assert (plain.data.num_hard_negatives, plain.data.teacher_negatives) == (0, 0)
  assert (demo.student.kind, demo.student.num_layers, demo.data.corpus_size) == ("tied", 0, 2000)
  assert (demo.data.n_test, demo.data.n_dev) == (500, 250)  # Test splits that can tell (>= 500 queries).
  assert demo.loss.score == 1.0 and demo.loss.query_emb == 0.0
  assert _load("configs/demo.py:steps=7").train.steps == 7


def test_load_config_names_a_missing_file(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope.py"):
    config_lib.load_config(f"{tmp_path / 'nope.py'}:row=qemb")


def wait_for_logged_steps(metrics: Path, procs: list[subprocess.Popen], n: int = 2, timeout: float = 240) -> None:
  """Blocks until ``metrics`` (metrics.jsonl) holds ``n`` logged steps; fails if a process exits first."""
  deadline = time.monotonic() + timeout
  while not (metrics.is_file() and metrics.read_text().count("\n") >= n):
    assert all(p.poll() is None for p in procs), [p.communicate()[0][-3000:] for p in procs]
    assert time.monotonic() < deadline, f"no {n} training steps logged in {timeout} s"
    time.sleep(0.2)


def _tiny_train_cmd(work: Path, tiny_models, *overrides) -> list[str]:
  return [sys.executable, "-m", "edistill.main", "--config", str(ROOT / "configs/ablation.py:row=qemb,runlocal"),
          "--workdir", str(work), f"--config.teacher.name={tiny_models['mpnet']}",
          f"--config.student.name={tiny_models['bert']}", "--config.teacher.num_layers=0",
          "--config.student.num_layers=0", "--config.data.corpus_size=300", *overrides]


def _logged_steps(metrics: Path) -> list[int]:
  import json
  return [json.loads(line)["step"] for line in metrics.read_text().splitlines()]


def _saved_steps(work: Path) -> list[int]:
  d = work / "checkpoints"
  return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.is_dir() else []


def test_sigterm_saves_the_step_and_exits_without_evaluating(tmp_path, tiny_models, isolated_cache):
  """Preemption: the step in flight finishes and is saved, the exit status says SIGTERM (143), and the
  half-trained student is not evaluated (no results table)."""
  import signal
  work = tmp_path / "work"
  cmd = _tiny_train_cmd(work, tiny_models, "--config.train.steps=1000000", "--config.eval.at_end=True")
  proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  metrics = work / "metrics.jsonl"
  wait_for_logged_steps(metrics, [proc])
  proc.send_signal(signal.SIGTERM)
  out = proc.communicate(timeout=120)[0]
  assert proc.returncode == 128 + signal.SIGTERM, out[-3000:]
  saved, logged = _saved_steps(work), _logged_steps(metrics)
  assert len(saved) == 1 and saved[0] >= logged[-1] >= 2, (saved, logged)
  assert f"saved step {saved[0]}" in out
  assert not list(work.glob("results_*")), "a preempted run must not evaluate"


def test_kill_9_and_resume_logs_each_step_once(tmp_path, tiny_models, isolated_cache):
  """A kill -9 after a checkpoint loses the steps logged since; the resumed run logs them again, and
  metrics.jsonl (what plots and tables read) still has each step once, in order."""
  import signal
  work = tmp_path / "work"
  cmd = _tiny_train_cmd(work, tiny_models, "--config.train.steps=1000000", "--config.train.checkpoint_every=3")
  proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  deadline = time.monotonic() + 240
  while not (_saved_steps(work) and (work / "metrics.jsonl").is_file()
             and len(_logged_steps(work / "metrics.jsonl")) > max(_saved_steps(work)) + 1):
    assert proc.poll() is None, proc.communicate()[0][-3000:]
    assert time.monotonic() < deadline
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.communicate(timeout=60)
  killed_at = _logged_steps(work / "metrics.jsonl")[-1]
  assert killed_at > max(_saved_steps(work)), "the kill must fall after the last checkpoint"
  total = killed_at + 2
  done = subprocess.run(_tiny_train_cmd(work, tiny_models, f"--config.train.steps={total}"),
                        cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  assert _logged_steps(work / "metrics.jsonl") == list(range(1, total + 1))


def test_a_train_run_that_fails_before_training_keeps_the_workdirs_config_json(tmp_path, tiny_models, isolated_cache):
  work = tmp_path / "work"
  work.mkdir()
  (work / "config.json").write_text('{"what": "trained this workdir"}')
  proc = subprocess.run(_tiny_train_cmd(work, tiny_models, "--config.data.source=beir",
                                        f"--config.data.path={tmp_path / 'missing'}"),
                        cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0 and "missing" in proc.stderr
  assert (work / "config.json").read_text() == '{"what": "trained this workdir"}'
  assert not list(work.glob("config*.tmp*"))


def test_a_missing_init_from_fails_without_creating_checkpoints(tmp_path, tiny_models, isolated_cache):
  work = tmp_path / "work"
  proc = subprocess.run(_tiny_train_cmd(work, tiny_models, f"--config.train.init_from={tmp_path / 'nope'}"),
                        cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0 and "init_from" in proc.stderr and "does not exist" in proc.stderr
  assert not (work / "checkpoints").exists() and not (work / "config.json").exists()


def test_mode_flag_overrides_the_config_and_precompute_writes_no_checkpoint(tmp_path, tiny_models, isolated_cache):
  models = [f"--config.teacher.name={tiny_models['mpnet']}", f"--config.student.name={tiny_models['bert']}",
            "--config.teacher.num_layers=0", "--config.student.num_layers=0", "--config.data.corpus_size=300"]
  out = _run(tmp_path, "--mode=precompute", *models, config="configs/ablation.py:row=qemb,runlocal")
  assert out.returncode == 0, out.stderr[-3000:]
  assert "precomputed for stdlib" in out.stdout and "teacher tables queries" in out.stdout
  assert not (tmp_path / "work" / "checkpoints").exists()
  # config.json is the record of what trained the workdir: other modes write config_<mode>.json.
  assert (tmp_path / "work" / "config_precompute.json").is_file() and not (tmp_path / "work" / "config.json").exists()
  ev = _run(tmp_path, "--mode=eval", *models, config="configs/ablation.py:row=qemb,runlocal")
  assert ev.returncode != 0 and "no checkpoints to evaluate the student from" in ev.stderr, ev.stderr[-3000:]
  assert not (tmp_path / "work" / "checkpoints").exists()  # Not created by the failed evaluation.
  bad = _run(tmp_path, "--mode=bogus", config="configs/ablation.py:row=qemb,runlocal")
  assert bad.returncode != 0 and "--mode" in bad.stderr and "precompute" in bad.stderr


def test_export_mode_writes_the_asymmetric_query_tower_as_the_model_retrieval_used(tmp_path, tiny_models,
                                                                                 isolated_cache):
  import json

  import jax
  import numpy as np

  from edistill import main
  from edistill.eval import suite
  from edistill.models import zoo
  from edistill import recipes
  from edistill.models import hf_import
  # A teacher with a 6-d Dense head, so the student (hidden 32) needs a query projection.
  tpre = zoo.load(tiny_models["mpnet"], projection_dim=6)
  tpre.params["projection"] = jax.tree.map(np.asarray, tpre.module.init(
      jax.random.key(0), np.ones((1, 4), np.int32), np.ones((1, 4), np.int32))["params"]["projection"])
  teacher = hf_import.export(tpre.params, tpre.config, tpre.head, tmp_path / "teacher6", tiny_models["mpnet"])
  cfg = config_lib.load_config(f"{ROOT / 'configs' / 'ablation.py'}:row=qemb,runlocal")
  cfg.teacher.name, cfg.student.name = str(teacher), str(tiny_models["bert"])
  cfg.teacher.num_layers = cfg.student.num_layers = 0
  cfg.data.corpus_size = 300
  work = tmp_path / "work"
  recipes.train(cfg, work)
  manifest = json.loads(main.run_export(cfg, work))
  assert manifest["kind"] == "asymmetric" and manifest["step"] == cfg.train.steps
  assert manifest["routes"]["document"] == {"path": "document", "max_seq_length": cfg.data.max_doc_length,
                                            "encoder": f"teacher {teacher}"}
  assert json.loads((work / "export" / "edistill_export.json").read_text()) == manifest

  from edistill import checkpoint
  c = checkpoint.Checkpointer(work / "checkpoints")
  params = c.restore_params()
  c.close()
  assert "query_projection" in params  # The tiny teacher is wider: the projection is folded in.
  spre = zoo.load_from_config(cfg.student)
  model = suite.student_model(cfg, spre, params, teacher_docs=np.zeros((1, 1)))
  texts = ["the cat sat", "a dog ran far away", "cats"]
  batch = spre.tokenize(texts, 16)
  expected = np.asarray(model.query_fn(model.query_params, batch["input_ids"], batch["attention_mask"]))
  exported = zoo.load(work / "export" / "query")
  assert exported.module.normalize_first and exported.module.projection_dim == expected.shape[1]
  got = np.asarray(exported.module.apply({"params": jax.device_put(exported.params)}, batch["input_ids"],
                                         batch["attention_mask"]))
  np.testing.assert_allclose(got, expected, atol=1e-6)
  assert zoo.load(work / "export" / "document").head.projection_dim == 6  # The teacher, its Dense head included.


@pytest.mark.parametrize("spec", ["configs/demo.py", "configs/ablation.py:row=unlab,student=l2",
                                  "configs/cross_encoder.py:head=dual", "configs/ce_distill.py:kind=asymmetric,head=dual"])
def test_a_workdirs_config_json_reads_back_as_the_config_that_wrote_it(tmp_path, spec):
  import json
  cfg = config_lib.load_config(ROOT / spec)
  raw = json.loads(cfg.to_json_best_effort())
  raw["student"]["max_length"] = 128  # A retired field an older config.json still carries: dropped.
  (tmp_path / "config.json").write_text(json.dumps(raw))
  back = config_lib.from_json(tmp_path / "config.json")
  assert json.loads(back.to_json_best_effort()) == json.loads(cfg.to_json_best_effort())
  assert back.eval.models == cfg.eval.models and isinstance(back.eval.models, tuple)
  config_lib.validate(back)
  raw["train"]["steps"] = "many"
  (tmp_path / "config.json").write_text(json.dumps(raw))
  with pytest.raises(ValueError, match=r"config.json: train.steps='many' is not a int"):
    config_lib.from_json(tmp_path / "config.json")
  with pytest.raises(FileNotFoundError, match="no config.json"):
    config_lib.from_json(tmp_path / "nowhere" / "config.json")


def test_without_config_the_workdirs_own_config_json_is_used(tmp_path, tiny_ckpts):
  cfg = config_lib.load_config(ROOT / "configs/demo.py:similarity")
  cfg.teacher.name, cfg.student.name = str(tiny_ckpts["mpnet"]), str(tiny_ckpts["bert"])
  cfg.student.num_layers, cfg.student.pooling = 1, "cls"
  (tmp_path / "work").mkdir()
  (tmp_path / "work" / "config.json").write_text(cfg.to_json_best_effort(indent=2))
  proc = subprocess.run([sys.executable, "-m", "edistill.main", "--workdir", str(tmp_path / "work")],
                        capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert (tmp_path / "work" / "similarity.md").read_text().count("| query |") == 2
  empty = subprocess.run([sys.executable, "-m", "edistill.main", "--workdir", str(tmp_path / "none"), "--mode=eval"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert empty.returncode != 0 and "no config.json" in empty.stderr and "pass --config" in empty.stderr


def test_no_pytorch_advice_on_import_where_torch_is_absent():
  hide = "import sys; sys.modules['torch'] = None; "  # transformers then finds no torch, as on a JAX-only install.
  import os
  env = {k: v for k, v in os.environ.items() if k != "TRANSFORMERS_NO_ADVISORY_WARNINGS"}  # This process set it.
  run = lambda code: subprocess.run([sys.executable, "-c", hide + code], capture_output=True, text=True, cwd=ROOT,
                                    timeout=120, env=env).stderr
  assert "PyTorch was not found" in run("import transformers")  # What a bare import prints.
  assert "PyTorch was not found" not in run("import edistill.models.tokenization")


def test_overrides_without_a_config_name_the_way_to_override_a_workdirs(tmp_path):
  from edistill.main import overrides_without_config
  assert overrides_without_config(["--workdir", "w", "--mode", "eval"]) is None
  assert overrides_without_config(["--config", "configs/demo.py", "--config.train.steps=3"]) is None
  assert overrides_without_config(["--config=configs/demo.py", "--config.train.steps", "3"]) is None
  done = subprocess.run([sys.executable, "-m", "edistill.main", "--workdir", str(tmp_path), "--mode", "eval",
                         "--config.data.source=beir"], capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert done.returncode == 1
  assert "--config.data.source overrides a config, but no --config was given" in done.stderr
  assert "--config configs/workdir.py:WORKDIR" in done.stderr and not list(tmp_path.iterdir())
