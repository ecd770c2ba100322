"""Helpers shared by the benchmark scripts (run them from the repo root)."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np

# The train-step benchmarks' settings, shared by edistill's steps and their PyTorch twins: the qemb
# row of configs/ablation.py (AdamW, constant lr, decay on matrices, clipping; all temperatures 0.05).
TEACHER_DIM = 768
LR, WEIGHT_DECAY, GRAD_CLIP, TEMPERATURE = 5e-5, 0.01, 1.0, 0.05


def stdlib_docstrings() -> list[str]:
  """First paragraphs of the running interpreter's stdlib docstrings, whitespace-normalised, in a
  deterministic order: real English text with a wide length spread, available offline."""
  texts = []
  for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
    try:
      tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError):
      continue
    for node in ast.walk(tree):
      if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and (doc := ast.get_docstring(node)):
        texts.append(" ".join(doc.split("\n\n")[0].split()))
  return texts


def median_time(fn, reps: int, warmup: bool = True) -> float:
  """Median seconds of ``reps`` calls of ``fn`` (after one untimed call when ``warmup``)."""
  if warmup:
    fn()
  times = []
  for _ in range(reps):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def interleaved(fns: dict, reps: int, inputs=None) -> dict[str, float]:
  """Median seconds per call of each fn, calls interleaved round-robin (machine noise hits all alike).
  ``inputs``: round i calls ``fn(inputs[i])`` (``reps`` rounds, ``reps <= len(inputs)``), else ``fn()``."""
  times = {k: [] for k in fns}
  for i in range(reps):
    for k, fn in fns.items():
      start = time.perf_counter()
      fn() if inputs is None else fn(inputs[i])
      times[k].append(time.perf_counter() - start)
  return {k: float(np.median(v)) for k, v in times.items()}


def add_malloc_flag(parser) -> None:
  """``--malloc tuned|default``: the allocator both frameworks run under in this process."""
  parser.add_argument("--malloc", choices=("tuned", "default"), default="tuned",
                      help="tuned: edistill.host.tune_malloc() for the whole process (what edistill.main does "
                           "on CPU; both frameworks run under it); default: glibc as it comes")


def apply_malloc(setting: str) -> None:
  """Applies ``--malloc``; call before either framework starts its threads (edistill/host.py)."""
  if setting == "tuned":
    from edistill import host
    assert host.tune_malloc(), "glibc mallopt failed"


ROOT = Path(__file__).resolve().parents[1]
METRICS = ("mrr@10", "recall@10", "recall@100", "ndcg@10")  # The columns the quality tables report.


def run_workdir(config: str, workdir: Path, overrides: list[str] = ()) -> dict:
  """``python -m edistill.main --config CONFIG --workdir WORKDIR [OVERRIDES]`` unless WORKDIR already holds
  its test results (``report.result_file``); returns those results plus ``wall_min`` (the run's
  minutes, recorded in ``wall_s.txt``; NaN when the run was made without it)."""
  from edistill.eval import report

  def results() -> Path | None:
    try:
      path = report.result_file(workdir, "test")
    except FileNotFoundError:
      return None
    return path if path.is_file() else None

  if results() is None:
    cmd = [sys.executable, "-m", "edistill.main", "--config", config, "--workdir", str(workdir), *overrides]
    print("+", " ".join(cmd), flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT)
    (workdir / "wall_s.txt").write_text(f"{time.perf_counter() - start:.0f}\n")
  wall = workdir / "wall_s.txt"
  return {**json.loads(results().read_text()), "wall_min": float(wall.read_text()) / 60 if wall.is_file() else float("nan")}


def teacher_share(results: dict, model: str = "student") -> str:
  """``model``'s MRR@10 as % of the teacher's, with its 95 % bootstrap interval over the test queries
  when the run's results carry one (evaluations from before the interval existed do not)."""
  r = results[model]
  text = f"{100 * r['mrr@10'] / results['teacher']['mrr@10']:.1f}"
  return text + (f" ({r['teacher_pct_lo']:.1f}-{r['teacher_pct_hi']:.1f})" if "teacher_pct_lo" in r else "")
