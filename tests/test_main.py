"""The entry point end to end on tiny checkpoints, and its config errors."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edistill import config_lib
from tests.conftest import write_wordpiece_vocab

ROOT = Path(__file__).resolve().parents[1]


def _run(tmp_path, *overrides):
  return subprocess.run([sys.executable, "-m", "edistill.main", "--config", str(ROOT / "configs/demo.py"),
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
  assert (tmp_path / "work" / "config.json").is_file()


def test_unknown_config_key_is_named(tmp_path):
  proc = _run(tmp_path, "--config.student.max_lenght=64")
  assert proc.returncode != 0 and "max_lenght" in proc.stderr


def test_validation_names_the_key():
  cfg = config_lib.ml_collections.ConfigDict({
      "mode": "similarity", "teacher": config_lib.encoder_config("t"), "student": config_lib.encoder_config("s")})
  config_lib.validate(cfg)
  cfg.student.pooling = "max"
  with pytest.raises(ValueError, match=r"config.student.pooling='max'"):
    config_lib.validate(cfg)
  cfg.student.pooling, cfg.mode = "mean", "fly"
  with pytest.raises(ValueError, match=r"config.mode='fly'"):
    config_lib.validate(cfg)
