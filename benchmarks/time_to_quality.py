"""Time to quality: a model's share of a reference's dev MRR@10 against its minutes of training (issues 16, 19).

    .venv/bin/python benchmarks/time_to_quality.py runs/s7/wn_l2 [more workdirs ...] --out runs/s7/ttq
    .venv/bin/python benchmarks/time_to_quality.py runs/ce_dual --reference first_stage --target 100 --out runs/ce_curve

Each workdir is a run trained with ``--config.eval.every_steps=N`` (dev evaluations during training,
``eval.during_training_split=dev``) whose final evaluation was on dev too (``--config.eval.split=dev``:
its dev results file (``results_<dataset>_dev.json``) holds the reference's dev MRR@10: ``teacher`` for a distilled student;
``first_stage``, the dual encoder whose top k it re-ranks, for a cross-encoder, written by its
first dev evaluation). ``metrics.jsonl`` gives, at each evaluated step, the trained model's dev
MRR@10 and ``train_minutes`` (wall time of the training steps alone: evaluations excluded; teacher
tables precomputed before). Writes ``time_to_quality.md`` (one table per run, the first minute at or
above ``--target`` % of the reference and, where none is yet, the step and minutes a log-linear fit
of the last half of the curve projects it to) and ``time_to_quality.png`` into ``--out``. Needs
matplotlib (the `bench` extra) for the plot.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from edistill.eval import report

TARGET = 97.0  # % of the teacher's MRR@10 (issue 16, item 5).


def curve(workdir: Path, reference: str = "teacher") -> tuple[float, list[tuple[int, float, float]]]:
  """(the reference row's dev MRR@10, [(step, train minutes, trained model's dev MRR@10)]) of one run, by step."""
  path = report.result_file(workdir, "dev")
  results = json.loads(path.read_text())
  if reference not in results:
    raise ValueError(f"{path} has no {reference!r} row (rows: {sorted(results)}).")
  teacher = results[reference]["mrr@10"]
  minutes, mrr = {}, {}
  for line in (workdir / "metrics.jsonl").read_text().splitlines():
    m = json.loads(line)
    if "train_minutes" in m:
      minutes[m["step"]] = m["train_minutes"]
    if "eval/mrr@10" in m:
      mrr[m["step"]] = m["eval/mrr@10"]
  points = [(s, minutes[s], mrr[s]) for s in sorted(mrr) if s in minutes]
  if not points:
    raise ValueError(f"{workdir}/metrics.jsonl has no step with both eval/mrr@10 and train_minutes; train with "
                     "--config.eval.every_steps a multiple of --config.train.log_every.")
  return teacher, points


def first_at(teacher: float, points, target: float = TARGET) -> tuple[int, float] | None:
  """(step, minutes) of the first evaluation at or above ``target`` % of the teacher, or None."""
  return next(((s, t) for s, t, m in points if 100 * m / teacher >= target), None)


def projected(teacher: float, points, target: float = TARGET) -> tuple[float, float] | None:
  """(step, minutes) where ``mrr = a + b ln(step)``, least squares over the last half of the points
  (at least 3), reaches ``target`` % of the teacher, at the last point's minutes per step; None with
  fewer than 3 points or a curve that does not rise."""
  tail = points[-max(3, len(points) // 2):]
  if len(tail) < 3:
    return None
  b, a = np.polyfit([math.log(s) for s, _, _ in tail], [m for _, _, m in tail], 1)
  if b <= 0:
    return None
  step = math.exp((target / 100 * teacher - a) / b)
  return step, step * points[-1][1] / points[-1][0]


def table(name: str, teacher: float, points, target: float = TARGET, reference: str = "teacher") -> str:
  hit = first_at(teacher, points, target)
  if hit:
    when = f"at step {hit[0]:,}, {hit[1]:.1f} training minutes"
  else:
    guess = projected(teacher, points, target)
    when = "not yet" + (f"; a log-linear fit of the last points projects step {guess[0]:,.0f}, "
                        f"{guess[1] / 60:.1f} training hours here" if guess else "")
  lines = [f"**{name}** ({reference} dev MRR@10 {teacher:.4f}; {target:g} % reached {when})", "",
           f"| step | training minutes | dev MRR@10 | % {reference} |", "|---|---|---|---|"]
  lines += [f"| {s:,} | {t:.1f} | {m:.4f} | {100 * m / teacher:.1f} |" for s, t, m in points]
  return "\n".join(lines) + "\n"


def plot(curves: dict[str, tuple[float, list]], path: Path, target: float = TARGET, reference: str = "teacher") -> Path:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(7, 4))
  for name, (teacher, points) in curves.items():
    ax.plot([t for _, t, _ in points], [100 * m / teacher for _, _, m in points], marker="o", label=name)
  ax.axhline(target, color="tab:red", linestyle=":", label=f"{target:g} % of the {reference}")
  ax.set_xlabel("training minutes (2 CPU cores)")
  ax.set_ylabel(f"% of the {reference}'s dev MRR@10")
  ax.legend(fontsize=8, loc="lower right")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  return path


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("workdirs", nargs="+", type=Path)
  parser.add_argument("--out", type=Path, required=True)
  parser.add_argument("--no-plot", action="store_true")
  parser.add_argument("--reference", default="teacher", help="dev results row: teacher, or first_stage for a CE")
  parser.add_argument("--target", type=float, default=TARGET, help="%% of the reference")
  args = parser.parse_args()
  args.out.mkdir(parents=True, exist_ok=True)
  curves = {w.name: curve(w, args.reference) for w in args.workdirs}
  text = "\n".join(table(name, *c, args.target, args.reference) for name, c in curves.items())
  (args.out / "time_to_quality.md").write_text(text)
  print(text)
  if not args.no_plot:
    print("plot:", plot(curves, args.out / "time_to_quality.png", args.target, args.reference))


if __name__ == "__main__":
  main()
