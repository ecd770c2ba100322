"""Train a cross-encoder teacher on WordNet -> GCIDE, then evaluate it as a re-ranker of BM25's top-k.

    python -m edistill.main --config configs/cross_encoder.py:head=cls --workdir runs/ce_cls
    python -m edistill.main --config configs/cross_encoder.py:head=dual --workdir runs/ce_dual
    python -m edistill.main --config configs/cross_encoder.py:head=dual,runlocal --workdir /tmp/ce   # seconds

heads: cls  = [CLS] -> linear score;  dual = dual pooling (mean of the query's and of the document's
final token states, score = their cosine; PAPER.md). The CE starts from all-MiniLM-L6-v2's first
``layers`` layers (0 = all six) and is trained with the listwise softmax CE over each query's
positive and ``negatives`` (hard: 3 BM25 negatives from its top 30; in_batch: the other queries'
positives). After training it re-ranks BM25's top ``rerank_k`` on the test split (results_test.md).
"""
from edistill import config_lib
from edistill.models.cross_encoder import HEADS


def get_config(arg=None):
  args = config_lib.parse_arg(arg, head="cls", negatives="hard", layers=2, corpus=2000, steps=200, runlocal=False)
  if args.head not in HEADS:
    raise ValueError(f"head={args.head!r}; expected one of {HEADS}.")
  cfg = config_lib.base_config()
  cfg.data.corpus_size = args.corpus
  cfg.data.max_doc_length = 64
  cfg.data.num_hard_negatives = 3 if args.negatives == "hard" else 0
  cfg.student.update(name="minilm-l6", num_layers=args.layers, kind="cross")
  cfg.cross_encoder.update(head=args.head, negatives=args.negatives, temperature=0.05,
                           rerank_k=20)
  # tau 0.05 for both heads: at tau 1 the [CLS] head of a mean-pooling sentence encoder (near-constant
  # [CLS] states, a 0.02-std head) sat at the uniform loss ln(1 + negatives) for the first 50+ steps.
  cfg.loss.update(label=1.0, score=0.0, query_emb=0.0)  # The CE's own loss: listwise softmax CE (ce.train_loss).
  cfg.train.update(batch_size=16, steps=args.steps, learning_rate=1e-4, warmup_steps=20, log_every=10,
                   checkpoint_every=100)
  cfg.eval.update(scann=False, k=100)
  if args.runlocal:
    config_lib.runlocal(cfg)
    cfg.student.num_layers = 1
    cfg.data.num_hard_negatives = 3 if args.negatives == "hard" else 0
    cfg.cross_encoder.update(mine_depth=10, rerank_k=5, batch_size=16)
    cfg.eval.k = 10
  return cfg
