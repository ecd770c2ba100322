"""Distil a trained cross-encoder (configs/cross_encoder.py) into a small dual-encoder student.

    python -m edistill.main --config configs/cross_encoder.py:head=dual --workdir runs/ce_dual     # the teacher
    python -m edistill.main --config configs/ce_distill.py:head=dual --workdir runs/ce_dual_l2      # the student
    python -m edistill.main --config configs/ce_distill.py:head=cls,ce=runs/ce_cls/checkpoints --workdir runs/ce_cls_l2

The student (``kind``: tied = one MiniLM tower for queries and documents; asymmetric = a MiniLM query
tower + projection scoring against the MPNet dual encoder's document embeddings,
``cross_encoder.dual_encoder``; all-MiniLM-L6-v2's first ``student_layers`` layers) learns from
  label      the in-batch one-hot loss over the B x B*C score matrix,
  score      score distillation of its scores over each query's candidates (positive + ``hard``
             negatives from the top ``depth`` of ``mine``, as the CE was trained) to the CE's
             scores of the same pairs (precomputed once and cached; teacher temperature = the CE's
             training temperature),
  query_emb  (dual head only) L2 matching of the student's query embeddings to the CE's dual-pooled
             query vectors of the same pair (an asymmetric student through a head of its own),
  doc_emb    (dual head, tied only) the same for its document embeddings.
``ce`` is the CE run's checkpoint directory, or ``outputs`` an .npz of its outputs over these
candidates scored elsewhere (``recipes/cross_encoder.write_outputs``; ``benchmarks/ce_gpu.py`` writes
one per head from a GPU run); ``init``/``layers``/``head`` must be those it was trained
with. The results table's ``teacher`` row is the dual encoder (the CE's re-ranking figures are in the
CE run's results).
"""
from edistill import config_lib
from edistill.models.cross_encoder import HEADS

KINDS = ("tied", "asymmetric")


def get_config(arg=None):
  args = config_lib.parse_arg(arg, head="cls", ce="", outputs="", init="minilm-l6", layers=2, student_layers=2,
                              corpus=2000, n_test=0, n_dev=0, steps=200, lr=1e-4, hard=3, mine="teacher", depth=30,
                              kind="tied", runlocal=False)
  if args.head not in HEADS:
    raise ValueError(f"head={args.head!r}; expected one of {HEADS}.")
  if args.kind not in KINDS:
    raise ValueError(f"kind={args.kind!r}; expected one of {KINDS}.")
  cfg = config_lib.base_config()
  cfg.data.corpus_size, cfg.data.n_test, cfg.data.n_dev = args.corpus, args.n_test, args.n_dev
  cfg.data.max_doc_length = 64
  cfg.data.num_hard_negatives = args.hard
  cfg.teacher.update(name=args.init, num_layers=args.layers, kind="cross")
  checkpoint = "" if args.outputs else args.ce or f"runs/ce_{args.head}/checkpoints"
  cfg.cross_encoder.update(head=args.head, checkpoint=checkpoint, outputs=args.outputs, mine=args.mine,
                           mine_depth=args.depth)
  cfg.student.update(name="minilm-l6", num_layers=args.student_layers, kind=args.kind)
  dual = args.head == "dual"
  cfg.loss.update(label=1.0, score=1.0, query_emb=1.0 if dual else 0.0,
                  doc_emb=1.0 if dual and args.kind == "tied" else 0.0, student_temperature=0.05,
                  teacher_temperature=0.05)
  cfg.train.update(batch_size=32, steps=args.steps, learning_rate=args.lr, warmup_steps=max(1, args.steps // 10),
                   log_every=10, checkpoint_every=100)
  cfg.eval.update(models=("teacher", "student_zero_shot", "student", "bm25"), scann=False)
  if args.runlocal:
    config_lib.runlocal(cfg)
    cfg.data.num_hard_negatives = args.hard
    cfg.teacher.num_layers = 1
    cfg.cross_encoder.mine_depth = 10
  return cfg
