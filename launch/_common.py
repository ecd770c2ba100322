"""What the launchers share: print-or-run of a command list (``--dry-run`` prints exactly what would run)."""
from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def add_common_flags(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--dry-run", action="store_true", help="print the commands without running anything")
  parser.add_argument("--config", default="configs/demo.py", help="edistill config (configs/X.py[:arg])")
  parser.add_argument("--bf16", action="store_true", help="bfloat16 compute (float32 params and optimizer)")
  parser.add_argument("--remat", action="store_true", help="recompute each layer in the backward pass")
  parser.add_argument("--grad-cache-chunk", type=int, default=0, help="GradCache chunk (queries); 0 = off")
  parser.add_argument("overrides", nargs="*", help="extra edistill flags after --, e.g. -- --config.train.steps=1000")


def main_flags(args, workdir: str, *launcher_flags: str) -> list[str]:
  """``python -m edistill.main`` arguments: the common flags, the launcher's, then the user's overrides."""
  flags = ["-m", "edistill.main", "--config", args.config, "--workdir", workdir, *launcher_flags]
  if args.bf16:  # The student computes in bfloat16; its params and optimizer state stay float32.
    flags.append("--config.student.dtype=bfloat16")
  if args.remat:
    flags.append("--config.train.remat=layer")
  if args.grad_cache_chunk:
    flags.append(f"--config.train.grad_cache_chunk={args.grad_cache_chunk}")
  return flags + list(args.overrides)


def execute(commands: list[tuple[dict[str, str], list[str]]], dry_run: bool) -> None:
  """Runs ``(env, argv)`` commands in order (stopping at the first failure), or prints them."""
  for env, argv in commands:
    line = " ".join([*(f"{k}={shlex.quote(v)}" for k, v in env.items()), shlex.join(argv)])
    print(line, flush=True)
    if dry_run:
      continue
    if shutil.which(argv[0]) is None:
      sys.exit(f"{argv[0]} not found on PATH (needed to run: {line}); use --dry-run to only print the commands.")
    rc = subprocess.call(argv, env={**os.environ, **env})
    if rc:
      sys.exit(f"command failed with exit status {rc}: {line}")
