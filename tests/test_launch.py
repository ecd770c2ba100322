"""The launchers' dry runs print exactly the commands they would run (no gcloud or GPU needed)."""
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _launch(script: str, *args: str, expect_rc: int = 0) -> str:
  """Runs ``launch/<script>`` with a PATH holding no gcloud; returns its stdout (stderr on failure)."""
  r = subprocess.run([sys.executable, str(ROOT / "launch" / script), *args], capture_output=True, text=True,
                     env={"PATH": "/nonexistent"}, timeout=60)
  assert r.returncode == expect_rc, r.stderr
  return r.stdout if expect_rc == 0 else r.stderr


@pytest.mark.parametrize("script", ["tpu_pod.py", "gpu.py"])
def test_help_lists_the_dry_run(script):
  out = _launch(script, "--help")
  assert "--dry-run" in out and "--workdir" in out and "--bf16" in out


def test_tpu_pod_dry_run_creates_installs_and_runs_on_every_worker():
  out = _launch("tpu_pod.py", "--name", "ed-v4-32", "--zone", "us-central2-b", "--accelerator-type", "v4-32",
                "--workdir", "gs://bucket/runs/qemb", "--config", "configs/ablation.py:row=qemb", "--bf16",
                "--grad-cache-chunk", "1024", "--dry-run", "--", "--config.train.batch_size=8192")
  lines = out.strip().splitlines()
  assert len(lines) == 5, out
  create, tar, scp, install, run = (shlex.split(line) for line in lines)
  assert create == ["gcloud", "compute", "tpus", "tpu-vm", "create", "ed-v4-32", "--zone=us-central2-b",
                    "--accelerator-type=v4-32", "--version=tpu-ubuntu2204-base"]
  assert tar[:3] == ["tar", "czf", "/tmp/edistill-src.tgz"] and str(ROOT) in tar and "--exclude=.venv" in tar
  assert scp[:7] == ["gcloud", "compute", "tpus", "tpu-vm", "scp", "/tmp/edistill-src.tgz", "ed-v4-32:~/edistill-src.tgz"]
  for cmd in (scp, install, run):
    assert "--worker=all" in cmd and "--zone=us-central2-b" in cmd
  assert install[4] == "ssh" and "uv venv --python 3.11" in install[-1] and "'jax[tpu]==0.10.2'" in install[-1]
  remote = shlex.split(run[-1].removeprefix("--command="))
  assert remote[:3] == ["cd", "~/edistill", "&&"]
  assert remote[3:] == [".venv/bin/python", "-m", "edistill.main", "--config", "configs/ablation.py:row=qemb",
                        "--workdir", "gs://bucket/runs/qemb", "--config.distributed.enabled=True",
                        "--config.student.dtype=bfloat16", "--config.train.grad_cache_chunk=1024",
                        "--config.train.batch_size=8192"]


def test_tpu_pod_phases_and_a_local_workdir_is_refused():
  out = _launch("tpu_pod.py", "--name", "ed", "--zone", "z", "--phases", "delete", "--dry-run")
  assert shlex.split(out) == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "ed", "--zone=z", "--quiet"]
  err = _launch("tpu_pod.py", "--name", "ed", "--zone", "z", "--phases", "run", "--workdir", "/tmp/run", "--dry-run",
                expect_rc=2)
  assert "needs a gs:// workdir" in err
  err = _launch("tpu_pod.py", "--name", "ed", "--zone", "z", "--phases", "create,train", "--dry-run", expect_rc=2)
  assert "unknown ['train']" in err


def test_tpu_pod_without_dry_run_and_without_gcloud_fails_clearly():
  err = _launch("tpu_pod.py", "--name", "ed", "--zone", "z", "--phases", "delete", expect_rc=1)
  assert "gcloud not found on PATH" in err


def test_gpu_dry_run_sets_the_devices_and_runs_main_over_all_of_them():
  out = _launch("gpu.py", "--gpus", "0,1,2,3", "--workdir", "runs/gpu", "--remat", "--install", "--dry-run",
                "--python", "/opt/py/bin/python", "--", "--config.train.steps=10")
  install, run = (shlex.split(line) for line in out.strip().splitlines())
  assert install == ["/opt/py/bin/python", "-m", "pip", "install", "-e", str(ROOT), "jax[cuda13]==0.10.2"]
  assert run == ["XLA_PYTHON_CLIENT_MEM_FRACTION=0.9", "CUDA_VISIBLE_DEVICES=0,1,2,3", "/opt/py/bin/python", "-m",
                 "edistill.main", "--config", "configs/demo.py", "--workdir", "runs/gpu", "--config.mesh.data=-1",
                 "--config.mesh.model=1", "--config.train.remat=layer", "--config.train.steps=10"]
  assert "expected comma-separated GPU ids" in _launch("gpu.py", "--gpus", "a,b", "--workdir", "w", "--dry-run",
                                                       expect_rc=2)
