"""Time to quality: a student's share of the teacher's dev MRR@10 against its minutes of training (issue 16).

    .venv/bin/python benchmarks/time_to_quality.py runs/s7/wn_l2 [more workdirs ...] --out runs/s7/ttq

Each workdir is a run trained with ``--config.eval.every_steps=N`` (dev evaluations during training,
``eval.during_training_split=dev``) whose final evaluation was on dev too (``--config.eval.split=dev``:
``results_dev.json`` holds the teacher's dev MRR@10). ``metrics.jsonl`` gives, at each evaluated step,
the student's dev MRR@10 and ``train_minutes`` (wall time of the training steps alone: evaluations
excluded; teacher tables precomputed before). Writes ``time_to_quality.md`` (one table per run and
the first minute at or above 97 % of the teacher) and ``time_to_quality.png`` into ``--out``.
Needs matplotlib (the `bench` extra) for the plot.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

TARGET = 97.0  # % of the teacher's MRR@10 (issue 16, item 5).


def curve(workdir: Path) -> tuple[float, list[tuple[int, float, float]]]:
  """(teacher dev MRR@10, [(step, train minutes, student dev MRR@10)]) of one run, by step."""
  results = json.loads((workdir / "results_dev.json").read_text())
  teacher = results["teacher"]["mrr@10"]
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


def table(name: str, teacher: float, points) -> str:
  hit = first_at(teacher, points)
  lines = [f"**{name}** (teacher dev MRR@10 {teacher:.4f}; {TARGET:.0f} % reached "
           + (f"at step {hit[0]:,}, {hit[1]:.1f} training minutes" if hit else "not yet") + ")", "",
           "| step | training minutes | dev MRR@10 | % teacher |", "|---|---|---|---|"]
  lines += [f"| {s:,} | {t:.1f} | {m:.4f} | {100 * m / teacher:.1f} |" for s, t, m in points]
  return "\n".join(lines) + "\n"


def plot(curves: dict[str, tuple[float, list]], path: Path) -> Path:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(7, 4))
  for name, (teacher, points) in curves.items():
    ax.plot([t for _, t, _ in points], [100 * m / teacher for _, _, m in points], marker="o", label=name)
  ax.axhline(TARGET, color="tab:red", linestyle=":", label=f"{TARGET:.0f} % of the teacher")
  ax.set_xlabel("training minutes (2 CPU cores)")
  ax.set_ylabel("% of the teacher's dev MRR@10")
  ax.legend(fontsize=8, loc="lower right")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  return path


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("workdirs", nargs="+", type=Path)
  parser.add_argument("--out", type=Path, required=True)
  parser.add_argument("--no-plot", action="store_true")
  args = parser.parse_args()
  args.out.mkdir(parents=True, exist_ok=True)
  curves = {w.name: curve(w) for w in args.workdirs}
  text = "\n".join(table(name, *c) for name, c in curves.items())
  (args.out / "time_to_quality.md").write_text(text)
  print(text)
  if not args.no_plot:
    print("plot:", plot(curves, args.out / "time_to_quality.png"))


if __name__ == "__main__":
  main()
