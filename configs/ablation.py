"""The paper's ablation (PAPER.md table), one row per ``row``, MPNet-base teacher, MiniLM students.

    python -m edistill.main --config configs/ablation.py:row=qemb,student=l2 --workdir runs/qemb_l2
    python -m edistill.main --config configs/ablation.py:row=qemb,runlocal --workdir /tmp/x   # seconds on CPU

rows (each adds one component to the previous):
  labels  symmetric (tied) student, one-hot label loss only
  score   + in-batch score distillation from the teacher
  asym    + asymmetric student: the teacher's frozen document tower (precomputed embeddings)
  qemb    + query embedding matching (L2, through a learned projection)
  qgen    + model-free query generation (generated queries make up half of the pairs; query-
          embedding weight 5 as the paper uses for its smallest student)
students: l6 = all-MiniLM-L6-v2 (22.7M), l2 = its first 2 layers (~11M with embeddings).
"""
from edistill import config_lib

ROWS = ("labels", "score", "asym", "qemb", "qgen")


def get_config(arg=None):
  args = config_lib.parse_arg(arg, row="qemb", student="l6", runlocal=False)
  if args.row not in ROWS:
    raise ValueError(f"row={args.row!r}; expected one of {ROWS}.")
  cfg = config_lib.base_config()
  cfg.student.num_layers = {"l6": 0, "l2": 2}[args.student]
  rank = ROWS.index(args.row)
  cfg.student.kind = "asymmetric" if rank >= ROWS.index("asym") else "tied"
  cfg.loss.score = 1.0 if rank >= ROWS.index("score") else 0.0
  cfg.loss.query_emb = 1.0 if rank >= ROWS.index("qemb") else 0.0
  if args.row == "qgen":
    cfg.querygen.ratio = 0.5
    cfg.loss.query_emb = 5.0
  if args.runlocal:
    config_lib.runlocal(cfg)
  return cfg
