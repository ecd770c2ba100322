"""The config a workdir was trained with (its ``config.json``), so it can be evaluated or exported
again, and overridden like any other config:

    python -m edistill.main --config configs/workdir.py:runs/demo --workdir runs/demo --mode eval
    python -m edistill.main --config configs/workdir.py:runs/demo --workdir runs/demo --mode eval \
        --config.data.source=beir --config.data.path=/data/scifact      # the same student, other data

(``--mode eval`` with no ``--config`` at all reads ``--workdir``'s config.json the same way.)
"""
from pathlib import Path

from edistill import config_lib


def get_config(arg=None):
  if not arg:
    raise ValueError("configs/workdir.py needs the workdir: --config configs/workdir.py:DIR.")
  return config_lib.from_json(Path(arg) / "config.json")
