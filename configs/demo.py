"""The embedded default: MPNet-base teacher and a MiniLM-L6 student on the packaged checkpoints.

    python -m edistill.main --config configs/demo.py --workdir runs/demo

For now it encodes a handful of sentences with both encoders and prints their similarity tables
(query x document cosine) side by side.
"""
from edistill import config_lib


def get_config(arg=None):
  del arg
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
