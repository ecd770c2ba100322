"""Multi-host training for real: two CPU processes (jax.distributed over gloo on localhost) train like
one process with the same global batch; config and layout mistakes fail loudly."""
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import ml_collections
import numpy as np
import pytest

from edistill import checkpoint, config_lib, distributed, mesh as mesh_lib
from edistill.eval import report
from edistill.models import hf_import
from edistill import recipes
from tests.test_main import wait_for_logged_steps
from tests.test_train import _config, _without_key_bias

ROOT = Path(__file__).resolve().parents[1]
STEPS = 3


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _main_command(tiny_models, workdir: Path, *flags: str) -> list[str]:
  """``python -m edistill.main`` with the same config as ``_config(tiny_models, steps=STEPS)``."""
  return [sys.executable, "-m", "edistill.main", "--config", "configs/ablation.py:row=qemb,runlocal",
          f"--workdir={workdir}", f"--config.teacher.name={tiny_models['mpnet']}",
          f"--config.student.name={tiny_models['bert']}", "--config.teacher.num_layers=0",
          "--config.student.num_layers=0", "--config.data.corpus_size=300", f"--config.train.steps={STEPS}", *flags]


def _run_processes(commands: list[list[str]], env: dict, timeout: float = 240) -> list[subprocess.CompletedProcess]:
  """Runs the commands concurrently; on a failure or timeout, fails with every process's output."""
  procs = [subprocess.Popen(c, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for c in commands]
  deadline, outs = time.monotonic() + timeout, []
  for p in procs:
    try:
      outs.append(p.communicate(timeout=max(deadline - time.monotonic(), 1)))
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      outs.append(p.communicate())
  results = [subprocess.CompletedProcess(c, p.returncode, o, e) for c, p, (o, e) in zip(commands, procs, outs)]
  if any(r.returncode for r in results):
    report = "\n".join(f"--- process {i}: exit {r.returncode}\nstdout:\n{r.stdout[-3000:]}\nstderr:\n{r.stderr[-6000:]}"
                       for i, r in enumerate(results))
    pytest.fail(f"multi-process run failed (timeout {timeout}s):\n{report}")
  return results


def _metrics(workdir: Path) -> list[dict]:
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def _params(workdir: Path):
  c = checkpoint.Checkpointer(workdir / "checkpoints")
  try:
    assert c.all_steps() == [STEPS]
    return jax.device_get(c.restore_params())
  finally:
    c.close()


def _encoded_rows(stderr: str) -> dict[str, tuple[int, int, int]]:
  """The rows a process encoded itself, from its log: {"teacher queries": (start, stop, of N), ...}."""
  pattern = r"\] (.+) \(shard 0\): process \d of \d encoded rows \[(\d+), (\d+)\) of (\d+)"
  return {desc: tuple(map(int, rows)) for desc, *rows in re.findall(pattern, stderr)}


def _shards(root: Path) -> dict[str, dict]:
  out = {}
  for path in sorted(root.glob("*/shard_*[0-9].npy")):
    out[f"{path.parent.name}/{path.name}"] = {"ids": np.load(path.with_name(path.stem + ".ids.npy")).tolist(),
                                              "embeddings": np.load(path)}
  return out


_SEARCH_CHILD = r"""
import json, sys
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(f"127.0.0.1:{sys.argv[1]}", num_processes=2, process_id=int(sys.argv[2]))
import numpy as np
from edistill.retrieval import index
rng = np.random.default_rng(0)
docs = rng.integers(-2, 3, size=(301, 6)).astype(np.float32)  # Exact scores with ties.
queries = rng.integers(-2, 3, size=(13, 6)).astype(np.float32)
i, s = index.exact_search(queries, docs, 25, query_batch=4, doc_batch=16, multihost=True)
print(json.dumps({"devices": len(jax.local_devices()), "index": i.tolist(), "scores": s.tolist()}))
"""


def test_two_processes_split_exact_search_over_all_their_devices_and_agree_with_one(tmp_path):
  from edistill.retrieval import index
  port = _free_port()
  results = _run_processes([[sys.executable, "-c", _SEARCH_CHILD, str(port), str(i)] for i in (0, 1)],
                           _env(tmp_path), timeout=120)
  outs = [json.loads(r.stdout.strip().splitlines()[-1]) for r in results]
  rng = np.random.default_rng(0)
  docs = rng.integers(-2, 3, size=(301, 6)).astype(np.float32)
  queries = rng.integers(-2, 3, size=(13, 6)).astype(np.float32)
  ref_i, ref_s = index.exact_search(queries, docs, 25, mesh=mesh_lib.make_mesh({"data": 1}, jax.devices()[:1]))
  for out in outs:  # Each process: 2 devices, 7 or 6 of the 13 queries, then the gathered whole.
    assert out["devices"] == 2
    np.testing.assert_array_equal(np.array(out["index"]), ref_i)
    np.testing.assert_array_equal(np.array(out["scores"], np.float32), ref_s)


def _env(cache: Path) -> dict:
  """Two CPU processes x 2 devices each, sharing the dataset/teacher cache."""
  return {**os.environ, "EDISTILL_CACHE": str(cache), "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT),
          "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}


def _distributed_flags(port: int, process_id: int) -> list[str]:
  return ["--config.distributed.enabled=True", f"--config.distributed.coordinator_address=127.0.0.1:{port}",
          "--config.distributed.num_processes=2", f"--config.distributed.process_id={process_id}",
          "--config.distributed.cpu_collectives=gloo", "--config.distributed.timeout_s=120"]


def test_two_processes_train_like_one_process(tmp_path, tiny_models, isolated_cache):
  # Reference: this process (8 devices), same config, same global batch of 8. It also fills the
  # dataset cache the two processes then read; its teacher tables are moved aside so that the two
  # processes encode them again, each its own half.
  recipes.train(_config(tiny_models, steps=STEPS), tmp_path / "one")
  shutil.move(isolated_cache / "embeddings", tmp_path / "embeddings_one")
  port = _free_port()
  workdir = tmp_path / "two"
  results = _run_processes([_main_command(tiny_models, workdir, *_distributed_flags(port, i)) for i in (0, 1)],
                           _env(isolated_cache))
  for i, r in enumerate(results):
    assert f"process {i} of 2, 2 local of 4 devices" in r.stderr
  # The teacher tables were split: process 0 encoded rows [0, ceil(N/2)) itself, process 1 the rest.
  rows = [_encoded_rows(r.stderr) for r in results]
  assert set(rows[0]) == set(rows[1]) == {"teacher queries", "teacher documents"}
  for desc, (a0, b0, n) in rows[0].items():
    assert (a0, b0) == (0, -(-n // 2)) and rows[1][desc] == (b0, n, n), (desc, rows)
    print(f"{desc}: process 0 encoded {b0 - a0} rows, process 1 {n - b0}, of {n}")
  # Process 0 cached the gathered tables: same shards as the one-process encoding, same ids, ~same values.
  one_tables, two_tables = _shards(tmp_path / "embeddings_one"), _shards(isolated_cache / "embeddings")
  assert len(two_tables) == len(rows[0]) and set(two_tables) <= set(one_tables)
  for name, t in two_tables.items():
    assert t["ids"] == one_tables[name]["ids"]
    diff = float(np.abs(t["embeddings"] - one_tables[name]["embeddings"]).max())
    print(f"{name}: {t['embeddings'].shape}, max |diff| vs one process {diff:.1e}")
    assert diff <= 1e-5
  # Only process 0 wrote logs and printed results; both took part in the (complete) checkpoint.
  assert '"loss"' in results[0].stdout and '"loss"' not in results[1].stdout
  assert len(list((workdir / "tensorboard").glob("events.out.tfevents.*"))) == 1
  one, two = _metrics(tmp_path / "one"), _metrics(workdir)
  assert [m["step"] for m in two] == [1, 2, 3]  # One writer: 3 lines, not 6.
  for a, b in zip(one, two):
    for k in a:
      if k not in ("examples_per_s", "train_minutes"):  # Wall-clock figures.
        np.testing.assert_allclose(b[k], a[k], rtol=1e-5, atol=1e-6, err_msg=f"step {a['step']} {k}")
  p1, p2 = _params(tmp_path / "one"), _params(workdir)
  diffs = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.abs(a - b).max()), _without_key_bias(p1),
                                       _without_key_bias(p2)))
  print(f"max |param diff| 2 processes vs 1: {max(diffs):.1e} over {len(diffs)} tensors")
  assert max(diffs) <= 1e-5
  start = hf_import.load_params(tiny_models["bert"])[1]  # The student's initial query tower.
  moved = jax.tree.map(lambda a, b: float(np.abs(a - b).max()), p2["query_tower"], start)
  assert max(jax.tree.leaves(moved)) > 1e-4  # It trained.


def test_two_processes_evaluate_like_one_process_splitting_the_work(tmp_path, tiny_models, isolated_cache):
  cfg = _config(tiny_models, steps=STEPS)
  recipes.train(cfg, tmp_path / "one")
  one = recipes.evaluate(cfg, tmp_path / "one")
  one_file = report.result_file(tmp_path / "one", "test")  # results_<dataset>_test.json, by its config.json.
  one_rows = json.loads(one_file.read_text())
  shutil.copytree(tmp_path / "one" / "checkpoints", tmp_path / "two" / "checkpoints")
  shutil.rmtree(isolated_cache / "embeddings")  # The two processes encode the tables again, split.
  port = _free_port()
  results = _run_processes([_main_command(tiny_models, tmp_path / "two", "--mode=eval", *_distributed_flags(port, i))
                            for i in (0, 1)], _env(isolated_cache))
  rows = [_encoded_rows(r.stderr) for r in results]
  assert "teacher documents" in rows[0] and rows[0]["teacher documents"][1] == rows[1]["teacher documents"][0]
  two_rows = json.loads((tmp_path / "two" / one_file.name).read_text())
  assert set(two_rows) == set(one_rows) and "student" in one
  for model, row in one_rows.items():
    for metric in ("mrr@10", "recall@10", "recall@100", "ndcg@10"):
      np.testing.assert_allclose(two_rows[model][metric], row[metric], atol=1e-6, err_msg=f"{model} {metric}")


def test_sigterm_to_one_process_stops_both_at_the_same_saved_step(tmp_path, tiny_models, isolated_cache):
  """A preemption notice may reach one host only: both processes agree at the next log step, save the
  same step together and exit 143, instead of one saving alone while the other waits in a collective."""
  import signal
  port, workdir = _free_port(), tmp_path / "two"
  procs = [subprocess.Popen(_main_command(tiny_models, workdir, "--config.train.steps=1000000", "--config.eval.at_end=True",
                                          *_distributed_flags(port, i)),
                            cwd=ROOT, env=_env(isolated_cache), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True) for i in (0, 1)]
  try:
    wait_for_logged_steps(workdir / "metrics.jsonl", procs)
    procs[1].send_signal(signal.SIGTERM)  # Process 1 only; process 0 writes the logs.
    outs = [p.communicate(timeout=120)[0] for p in procs]
  finally:
    for p in procs:
      p.kill()
  assert [p.returncode for p in procs] == [128 + signal.SIGTERM] * 2, [o[-3000:] for o in outs]
  saved = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  assert len(saved) == 1 and saved[0] >= 2, saved
  for out in outs:
    assert f"saved step {saved[0]}" in out
  assert not list(workdir.glob("results_*"))


def _dist(**kw) -> ml_collections.ConfigDict:
  dc = config_lib.base_config().distributed
  dc.update(kw)
  return dc


@pytest.mark.parametrize("kw,message", [
    (dict(coordinator_address="10.0.0.1:1234"), r"config.distributed.coordinator_address is set but .*enabled is False"),
    (dict(enabled=True, coordinator_address="10.0.0.1:1234", num_processes=2),
     r"missing config.distributed.process_id"),
    (dict(enabled=True, coordinator_address="10.0.0.1", num_processes=2, process_id=0), r"expected HOST:PORT"),
    (dict(enabled=True, coordinator_address="h:1", num_processes=2, process_id=2), r"config.distributed.process_id=2 not in"),
    (dict(enabled=True, cpu_collectives="nccl"), r"config.distributed.cpu_collectives='nccl'"),
])
def test_inconsistent_distributed_config_names_the_key(kw, message):
  cfg = config_lib.base_config()
  cfg.distributed.update(kw)
  with pytest.raises(ValueError, match=message):
    config_lib.validate(cfg)


def test_unreachable_coordinator_raises_a_clear_error_within_the_timeout():
  start = time.monotonic()
  with pytest.raises(distributed.DistributedSetupError, match=r"no coordinator answers at 127.0.0.1:\d+ after 1s"):
    distributed.initialize(_dist(enabled=True, coordinator_address=f"127.0.0.1:{_free_port()}", num_processes=2,
                                 process_id=1, timeout_s=1))
  assert time.monotonic() - start < 10


def test_batch_layout_check_catches_a_mesh_whose_hosts_are_out_of_order():
  mesh = mesh_lib.make_mesh({"data": -1, "model": 1})
  sharding = mesh_lib.batch_sharding(mesh)
  distributed.check_batch_layout(sharding, 16)  # One process: it holds every row.
  # Pretend to be process 1 of 2: its pipeline would load rows [8, 16), but this process's devices
  # hold all 16 rows; and reversed device order puts rows in the wrong place.
  with pytest.raises(ValueError, match=r"process 1 of 2: .* pipeline loads rows \[8, 16\)"):
    distributed.check_batch_layout(sharding, 16, process_index=1, process_count=2)
  with pytest.raises(ValueError, match="not divisible by 2 processes"):
    distributed.check_batch_layout(sharding, 15, process_index=0, process_count=2)
