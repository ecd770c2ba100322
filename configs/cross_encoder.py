"""Train a cross-encoder teacher on WordNet -> GCIDE, then evaluate it as a re-ranker of a first stage.

    python -m edistill.main --config configs/cross_encoder.py:head=cls --workdir runs/ce_cls
    python -m edistill.main --config configs/cross_encoder.py:head=dual --workdir runs/ce_dual
    python -m edistill.main --config configs/cross_encoder.py:head=dual,runlocal --workdir /tmp/ce   # seconds

heads: cls  = [CLS] -> linear score;  dual = dual pooling (mean of the query's and of the document's
final token states, score = their cosine; PAPER.md). The CE starts from ``init`` (minilm-l6 =
all-MiniLM-L6-v2, mpnet-base = all-mpnet-base-v2, the dual-encoder teacher itself) cut to its first
``layers`` layers (0 = all) and is trained with the listwise softmax CE over each query's positive
and ``negatives`` (hard: ``hard`` negatives drawn from the top ``depth`` of ``mine``, the MPNet
dual-encoder teacher's by default, likely false negatives left out (data/mining.py), or BM25's;
in_batch: the other queries' positives). ``dev_every`` > 0 re-ranks the dev split that often during
training (the learning curve, ``eval/re-ranked/mrr@10`` in metrics.jsonl). After training it
re-ranks the top ``rerank_k`` of ``first_stage`` (teacher: the dual encoder's exact search; bm25) on
``eval.split`` (results_<split>.md). ``corpus``, ``n_test`` and ``n_dev`` size the benchmark
(``corpus=10000,n_test=1000,n_dev=500``: the split that can tell 2-point effects).
"""
from edistill import config_lib
from edistill.models.cross_encoder import HEADS

INITS = ("minilm-l6", "mpnet-base")


def get_config(arg=None):
  args = config_lib.parse_arg(arg, head="cls", negatives="hard", init="minilm-l6", layers=2, corpus=2000, n_test=0,
                              n_dev=0, steps=200, lr=1e-4, batch=16, hard=3, mine="teacher", depth=30,
                              first_stage="teacher", rerank_k=20, dev_every=0, runlocal=False)
  if args.head not in HEADS:
    raise ValueError(f"head={args.head!r}; expected one of {HEADS}.")
  if args.init not in INITS:
    raise ValueError(f"init={args.init!r}; expected one of {INITS}.")
  cfg = config_lib.base_config()
  cfg.data.corpus_size, cfg.data.n_test, cfg.data.n_dev = args.corpus, args.n_test, args.n_dev
  cfg.data.max_doc_length = 64
  cfg.data.num_hard_negatives = args.hard if args.negatives == "hard" else 0
  cfg.data.pad_multiple = 8  # Each batch's pairs cut to its longest (96 -> ~80 columns on GCIDE: 1.4x per step).
  cfg.student.update(name=args.init, num_layers=args.layers, kind="cross")
  cfg.cross_encoder.update(head=args.head, negatives=args.negatives, temperature=0.05, mine=args.mine,
                           mine_depth=args.depth, first_stage=args.first_stage, rerank_k=args.rerank_k)
  # tau 0.05 for both heads: at tau 1 the [CLS] head of a mean-pooling sentence encoder (near-constant
  # [CLS] states, a 0.02-std head) sat at the uniform loss ln(1 + negatives) for the first 50+ steps.
  cfg.loss.update(label=1.0, score=0.0, query_emb=0.0)  # The CE's own loss: listwise softmax CE (ce.train_loss).
  cfg.train.update(batch_size=args.batch, steps=args.steps, learning_rate=args.lr, warmup_steps=max(1, args.steps // 10),
                   log_every=10, checkpoint_every=100)
  cfg.eval.update(scann=False, k=100, every_steps=args.dev_every, during_training_split="dev")
  if args.runlocal:
    config_lib.runlocal(cfg)
    cfg.student.num_layers = 1
    cfg.data.num_hard_negatives = args.hard if args.negatives == "hard" else 0
    cfg.cross_encoder.update(mine_depth=10, rerank_k=5, batch_size=16)
    cfg.eval.k = 10
  return cfg
