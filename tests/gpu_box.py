"""What the lent GPU box lacks, for tests that run code as it runs there (a child ``python -c``)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from train_gpu import FORBIDDEN as BLOCKED  # noqa: E402  The one list, which the GPU runs also check.

# Makes the packages above unimportable in the process that runs it.
PREAMBLE = f"""
import importlib.abc, sys
class Absent(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] in {BLOCKED!r}:
      raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, Absent())
"""
