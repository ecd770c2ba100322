"""How far the 2-layer asymmetric student gets with more unlabeled queries and steps (issue 6).

    .venv/bin/python benchmarks/unlab_scale.py --out runs/unlab_scale [--student l2]

Each point is the ablation's ``unlab`` row (configs/ablation.py) at a larger scale, run with
``python -m edistill.main --config configs/ablation.py:row=unlab,student=S,unlabeled=N,steps=T,pool=P``
(a workdir that already holds its test results is reused). Writes ``unlab_scale.md`` (the table)
and ``unlab_scale.png`` (test MRR@10 per point with its 95 % interval where the run has one, the
teacher and 97 % of it) into ``--out``.
Needs matplotlib (the `bench` extra).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import METRICS, ROOT, run_workdir, teacher_share  # noqa: E402

# (unlabeled queries drawn, steps, pool); more than the pool holds takes all of it (35,780 queries in the
# 2k slice's own pool, 103,581 with wordnet_all).
POINTS = ((8000, 600, "slice"), (30000, 2000, "slice"), (40000, 4000, "slice"), (200000, 8000, "wordnet_all"),
          (200000, 16000, "wordnet_all"), (200000, 32000, "wordnet_all"))


def spec(student: str, unlabeled: int, steps: int, pool: str) -> str:
  return f"configs/ablation.py:row=unlab,student={student},unlabeled={unlabeled},steps={steps},pool={pool}"


def run_point(out: Path, student: str, unlabeled: int, steps: int, pool: str) -> dict:
  workdir = out / f"unlab_{student}_u{unlabeled}_s{steps}_{pool}"
  rows = run_workdir(spec(student, unlabeled, steps, pool), workdir)
  data = json.loads((workdir / "config.json").read_text())["data"]
  from edistill.data import tfds_builders  # The pool as that run saw it: how many were drawn in fact.
  used = min(unlabeled, len(tfds_builders.unlabeled_queries(data["source"], data["path"], data["corpus_size"],
                                                             pool=pool)))
  return {**rows, "point": (used, steps, pool)}


def table(points: list[dict]) -> str:
  lines = ["| unlabeled queries | pool | steps | " + " | ".join(METRICS) + " | % teacher MRR@10 (95 % interval) | run (min) |",
           "|---" * (len(METRICS) + 5) + "|"]
  for p in points:
    (n, steps, pool), s = p["point"], p["student"]
    lines.append(f"| {n:,} | {pool} | {steps:,} | " + " | ".join(f"{s[m]:.4f}" for m in METRICS)
                 + f" | {teacher_share(p)} | {p['wall_min']:.1f} |")
  return "\n".join(lines) + "\n"


def plot(points: list[dict], out: Path) -> Path:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(9, 4))
  labels = [f"{n / 1000:.1f}k unlabeled\n({pool})\n{steps} steps" for n, steps, pool in (p["point"] for p in points)]
  teacher = points[0]["teacher"]["mrr@10"]
  mrr = [p["student"]["mrr@10"] for p in points]
  ax.bar(range(len(points)), mrr, color="tab:blue")
  # The 95 % bootstrap interval of the share of the teacher, in MRR@10 units (runs evaluated with it).
  ci = [(i, m, p["student"]) for i, (m, p) in enumerate(zip(mrr, points)) if "teacher_pct_lo" in p["student"]]
  if ci:
    ax.errorbar([i for i, _, _ in ci], [m for _, m, _ in ci], fmt="none", ecolor="gray", capsize=4,
                yerr=[[m - s["teacher_pct_lo"] * teacher / 100 for _, m, s in ci],
                      [s["teacher_pct_hi"] * teacher / 100 - m for _, m, s in ci]], label="95 % interval")
  ax.axhline(teacher, color="k", linestyle="--", label=f"teacher {teacher:.3f}")
  ax.axhline(0.97 * teacher, color="tab:red", linestyle=":", label="97 % of the teacher")
  ax.set_xticks(range(len(points)), labels, fontsize=8)
  ax.set_ylabel("test MRR@10")
  ax.set_title("2-layer asymmetric student, unlab row at larger scale")
  ax.legend(fontsize=8, loc="lower right")
  fig.tight_layout()
  path = out / "unlab_scale.png"
  fig.savefig(path, dpi=120)
  return path


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", type=Path, default=ROOT / "runs" / "unlab_scale")
  parser.add_argument("--student", default="l2")
  args = parser.parse_args()
  args.out.mkdir(parents=True, exist_ok=True)
  points = [run_point(args.out, args.student, *p) for p in POINTS]
  text = table(points)
  (args.out / "unlab_scale.md").write_text(text)
  print(text)
  print("plot:", plot(points, args.out))


if __name__ == "__main__":
  main()
