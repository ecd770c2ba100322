"""Training metrics: TensorBoard event files and ``metrics.jsonl`` in the workdir, resume-aware."""
from __future__ import annotations

import json
from pathlib import Path

from etils import epath

from edistill import cache


def lines_up_to(lines: list[str], step: int) -> list[str]:
  """The ``metrics.jsonl`` lines of steps <= ``step`` (what a run resumed at ``step`` keeps): the
  steps after it are re-run and logged again, and a line cut short by a kill is dropped."""
  kept = []
  for line in lines:
    try:
      logged = json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError, TypeError):
      continue
    if logged <= step:
      kept.append(line if line.endswith("\n") else line + "\n")
  return kept


class MetricsWriter:
  """TensorBoard event files + ``metrics.jsonl`` in the workdir (process 0 only).

  A run resumed at ``start_step`` first drops what was logged after that step (it is logged again),
  in both files, so each step appears once. An object-store workdir (gs://) cannot append: there
  the jsonl file is rewritten at each write."""

  def __init__(self, workdir: Path, enabled: bool = True, start_step: int = 0):
    self.enabled = enabled
    if enabled:
      from tensorboardX import SummaryWriter
      # purge_step: TensorBoard hides events at steps >= it from earlier event files.
      self.tb = SummaryWriter(str(workdir / "tensorboard"), purge_step=start_step + 1 if start_step else None)
      self.path, self.remote = epath.Path(workdir) / "metrics.jsonl", "://" in str(workdir)
      old = self.path.read_text().splitlines(keepends=True) if self.path.exists() else []
      self.lines = lines_up_to(old, start_step)
      if self.lines != old:
        cache.write_text_atomic(self.path, "".join(self.lines))
      if not self.remote:
        self.jsonl = open(self.path, "a", encoding="utf-8")

  def write(self, step: int, metrics: dict[str, float]) -> None:
    if not self.enabled:
      return
    for k, v in metrics.items():
      self.tb.add_scalar(k, v, step)
    line = json.dumps({"step": step, **metrics}) + "\n"
    if self.remote:
      self.lines.append(line)
      self.path.write_text("".join(self.lines))
    else:
      self.jsonl.write(line)
      self.jsonl.flush()

  def close(self) -> None:
    if self.enabled:
      self.tb.close()
      if not self.remote:
        self.jsonl.close()
