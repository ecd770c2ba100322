"""The paper's ablation on WordNet -> GCIDE: every row of configs/ablation.py for each student.

    .venv/bin/python benchmarks/ablation.py --out runs/ablation [--students l6,l2] [--corpus 2000] [--steps 300]

Runs ``python -m edistill.main --config configs/ablation.py:row=R,student=S`` per (row, student)
(each run resumes if its workdir already holds a checkpoint; results are reused if present), then
writes ``ablation.md`` (the table: test MRR@10 etc., % of the teacher) and ``ablation.png`` (bars per
row, and the training-loss curves) into ``--out``. Needs matplotlib (the `bench` extra).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "configs"))  # First: its ablation.py, not this file, is ``ablation``.
from ablation import ROWS  # noqa: E402
from common import METRICS, run_workdir, teacher_share  # noqa: E402


def run_row(row: str, student: str, out: Path, overrides: list[str]) -> dict:
  return run_workdir(f"configs/ablation.py:row={row},student={student}", out / f"{row}_{student}", overrides)


def table(rows: dict[tuple[str, str], dict]) -> str:
  lines = ["| student | row | " + " | ".join(METRICS) + " | % teacher MRR@10 (95 % interval) | run (min) |",
           "|---" * (len(METRICS) + 4) + "|"]
  for (row, student), r in rows.items():
    s = r["student"]
    lines.append(f"| {student} | {row} | " + " | ".join(f"{s[m]:.4f}" for m in METRICS)
                 + f" | {teacher_share(r)} | {r['wall_min']:.1f} |")
  for (row, student), r in rows.items():
    if row == "labels" and "student_zero_shot" in r:
      lines.append(f"| {student} zero-shot | - | " + " | ".join(f"{r['student_zero_shot'][m]:.4f}" for m in METRICS)
                   + f" | {teacher_share(r, 'student_zero_shot')} | |")
  first = next(iter(rows.values()))
  for name in ("teacher", "bm25"):
    if name in first:
      lines.append(f"| {name} | - | " + " | ".join(f"{first[name][m]:.4f}" for m in METRICS) + " | | |")
  return "\n".join(lines) + "\n"


def plot(rows: dict[tuple[str, str], dict], out: Path) -> Path:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  students = sorted({s for _, s in rows})
  fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
  width = 0.8 / len(students)
  for i, student in enumerate(students):
    vals = [rows[(r, student)]["student"]["mrr@10"] if (r, student) in rows else 0 for r in ROWS]
    ax.bar([x + i * width for x in range(len(ROWS))], vals, width, label=f"student {student}")
    for row in ROWS:
      metrics = out / f"{row}_{student}" / "metrics.jsonl"
      if metrics.is_file():
        points = [json.loads(line) for line in metrics.read_text().splitlines()]
        points = [p for p in points if "loss" in p]
        ax2.plot([p["step"] for p in points], [p["loss"] for p in points], label=f"{row} ({student})")
  teacher = next(iter(rows.values()))["teacher"]["mrr@10"]
  ax.axhline(teacher, color="k", linestyle="--", label="teacher (MPNet-base)")
  ax.set_xticks([x + width * (len(students) - 1) / 2 for x in range(len(ROWS))], ROWS)
  ax.set_ylabel("test MRR@10")
  ax.set_title("EmbedDistill ablation, WordNet -> GCIDE")
  ax.legend(fontsize=8)
  ax2.set_xlabel("step")
  ax2.set_ylabel("training loss")
  ax2.set_title("training curves")
  ax2.legend(fontsize=7, ncol=2)
  fig.tight_layout()
  path = out / "ablation.png"
  fig.savefig(path, dpi=120)
  return path


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", type=Path, default=ROOT / "runs" / "ablation")
  parser.add_argument("--students", default="l6,l2")
  parser.add_argument("--rows", default=",".join(ROWS))
  parser.add_argument("--override", action="append", default=[], help="extra --config.x=y flags for every run")
  args = parser.parse_args()
  rows = {}
  for student in args.students.split(","):
    for row in args.rows.split(","):
      rows[(row, student)] = run_row(row, student, args.out, args.override)
  text = table(rows)
  (args.out / "ablation.md").write_text(text)
  print(text)
  print("plot:", plot(rows, args.out))


if __name__ == "__main__":
  main()
