"""The paper's ablation (PAPER.md table), one row per ``row``, MPNet-base teacher, MiniLM students.

    python -m edistill.main --config configs/ablation.py:row=qemb,student=l2 --workdir runs/qemb_l2
    python -m edistill.main --config configs/ablation.py:row=qemb,runlocal --workdir /tmp/x   # seconds on CPU

rows (each adds one component to the previous):
  labels  symmetric (tied) student, one-hot label loss only
  score   + in-batch score distillation from the teacher
  asym    + asymmetric student: the teacher's frozen document tower (precomputed embeddings)
  qemb    + query embedding matching (L2, through a learned projection; weight 5)
  qgen    + model-free query generation (generated queries make up half of the pairs)
  unlab   + 8,000 real unlabeled training queries (train-split WordNet glosses whose GCIDE entries
          are outside the 2k-document corpus), labeled by the teacher's top-1 document
students: l6 = all-MiniLM-L6-v2 (22.7M), l2 = its first 2 layers (~11M with embeddings).
scale knobs (defaults: the rows above): ``steps``; ``unlabeled`` = how many unlabeled queries the
``unlab`` row draws (more than the pool holds takes them all); ``pool=wordnet_all`` adds every other
WordNet gloss to the pool (~104k instead of ~36k; config.data.unlabeled_pool); ``extra=gcide_definitions``
adds the first definition sentence of every GCIDE entry outside the corpus, each distinct sentence
once (82k at 10k documents; config.data.unlabeled_extra); ``source`` (default wordnet_gcide; debian
for the second domain); ``n_test`` / ``n_dev`` the split sizes (0: corpus/20,
corpus/40; ``corpus=10000,n_test=1000,n_dev=500`` is the evaluation that can tell 2-point effects).

Data: WordNet -> GCIDE, a ``corpus``-document slice (default 2,000), documents cut to 64 tokens.
Training: batch 32, AdamW, no dropout (the teacher's targets are the regulariser), ``steps`` and
the peak learning rate per student (l2: 600 steps at 5e-4; l6: 300 steps at 2e-4), 10 % warmup,
a checkpoint every max(100, steps / 32) steps.
"""
from edistill import config_lib

ROWS = ("labels", "score", "asym", "qemb", "qgen", "unlab")
STUDENTS = {"l6": (0, 300, 2e-4), "l2": (2, 600, 5e-4)}  # num_layers (0 = all), steps, learning rate


def get_config(arg=None):
  args = config_lib.parse_arg(arg, row="qemb", student="l6", corpus=2000, steps=0, unlabeled=8000, pool="slice",
                              n_test=0, n_dev=0, source="wordnet_gcide", extra="", runlocal=False)
  if args.row not in ROWS:
    raise ValueError(f"row={args.row!r}; expected one of {ROWS}.")
  if args.student not in STUDENTS:
    raise ValueError(f"student={args.student!r}; expected one of {tuple(STUDENTS)}.")
  cfg = config_lib.base_config()
  layers, steps, lr = STUDENTS[args.student]
  steps = args.steps or steps
  cfg.data.source, cfg.data.corpus_size, cfg.data.max_doc_length = args.source, args.corpus, 64
  cfg.data.n_test, cfg.data.n_dev = args.n_test, args.n_dev
  cfg.student.num_layers, cfg.student.dropout = layers, 0.0
  cfg.train.update(batch_size=32, steps=steps, learning_rate=lr, warmup_steps=steps // 10, log_every=20,
                   checkpoint_every=max(100, steps // 32))  # A save costs ~1.5 s on 2 cores: ~32 a run.
  rank = ROWS.index(args.row)
  cfg.student.kind = "asymmetric" if rank >= ROWS.index("asym") else "tied"
  cfg.loss.score = 1.0 if rank >= ROWS.index("score") else 0.0
  cfg.loss.query_emb = 5.0 if rank >= ROWS.index("qemb") else 0.0
  if rank >= ROWS.index("qgen"):
    cfg.querygen.ratio = 0.5
  if rank >= ROWS.index("unlab"):
    cfg.data.unlabeled_queries, cfg.data.unlabeled_pool = args.unlabeled, args.pool
    cfg.data.unlabeled_extra = args.extra
  if args.runlocal:
    config_lib.runlocal(cfg)
    cfg.data.unlabeled_queries = min(cfg.data.unlabeled_queries, 40)
    cfg.data.unlabeled_pool = "slice"  # stdlib data: its own pool.
  return cfg
