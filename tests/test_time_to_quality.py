"""benchmarks/time_to_quality.py: first step at a target share of a reference, and the log-linear projection."""
import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _workdir(path: Path) -> Path:
  """A CE run's files: dev MRR@10 = 0.2 + 0.05 ln(step) every 100 steps, 0.01 training minutes a step."""
  path.mkdir()
  (path / "results_dev.json").write_text(json.dumps({"first_stage": {"mrr@10": 0.6}, "reranked": {"mrr@10": 0.5}}))
  lines = []
  for step in (100, 200, 300, 400):
    lines.append({"step": step, "loss": 1.0, "train_minutes": step / 100})
    lines.append({"step": step, "eval/mrr@10": 0.2 + 0.05 * math.log(step)})
  (path / "metrics.jsonl").write_text("\n".join(map(json.dumps, lines)) + "\n")
  return path


def _run(args):
  done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "time_to_quality.py"), *map(str, args), "--no-plot"],
                        capture_output=True, text=True, timeout=120)
  assert done.returncode == 0, done.stderr[-3000:]
  return done.stdout


def test_projection_to_the_reference_and_first_step_at_target(tmp_path):
  run = _workdir(tmp_path / "ce_dual")
  # 0.6 = 0.2 + 0.05 ln(s): s = e^8 = 2,981 steps, at 0.01 min a step 29.8 min = 0.5 h.
  text = _run([run, "--out", tmp_path / "a", "--reference", "first_stage", "--target", "100"])
  assert "first_stage dev MRR@10 0.6000; 100 % reached not yet" in text
  assert "projects step 2,981, 0.5 training hours" in text
  assert "| 400 | 4.0 | 0.4996 | 83.3 |" in text
  # 50 % of 0.6 is below the first point (0.4303 at step 100).
  assert "50 % reached at step 100, 1.0 training minutes" in _run(
      [run, "--out", tmp_path / "b", "--reference", "first_stage", "--target", "50"])
  done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "time_to_quality.py"), str(run), "--out",
                         str(tmp_path / "c"), "--no-plot"], capture_output=True, text=True, timeout=120)
  assert done.returncode != 0 and "no 'teacher' row" in done.stderr
