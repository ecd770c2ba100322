#!/usr/bin/env python3
"""Train on one host with several GPUs: one JAX process sees every local GPU and shards the batch.

    python launch/gpu.py --gpus 0,1,2,3 --bf16 --config configs/ablation.py:row=qemb --workdir runs/qemb_gpu \\
        -- --config.train.batch_size=4096
    python launch/gpu.py --install --dry-run ...     # print the commands only

No jax.distributed is needed on a single host (the mesh spans the local GPUs, ``mesh.data=-1``).
``--install`` first installs edistill and CUDA JAX into the current Python environment.
"""
from __future__ import annotations

import argparse
import sys

from _common import ROOT, add_common_flags, execute, main_flags


def commands(args) -> list[tuple[dict[str, str], list[str]]]:
  out = []
  if args.install:
    out.append(({}, [args.python, "-m", "pip", "install", "-e", str(ROOT), f"jax[{args.cuda}]=={args.jax_version}"]))
  env = {"XLA_PYTHON_CLIENT_MEM_FRACTION": str(args.mem_fraction)}
  if args.gpus:
    env["CUDA_VISIBLE_DEVICES"] = args.gpus
  run = [args.python, *main_flags(args, args.workdir, "--config.mesh.data=-1", "--config.mesh.model=1")]
  out.append((env, run))
  return out


def parse(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", required=True, help="checkpoints, metrics and results (local path)")
  p.add_argument("--gpus", default="", help="comma-separated GPU ids (CUDA_VISIBLE_DEVICES); default all")
  p.add_argument("--python", default=sys.executable, help="Python of the environment to use")
  p.add_argument("--install", action="store_true", help="pip install edistill and CUDA JAX first")
  p.add_argument("--cuda", default="cuda13", help="JAX CUDA extra for --install (cuda12 or cuda13)")
  p.add_argument("--jax-version", default="0.10.2", help="must match edistill's pinned jax")
  p.add_argument("--mem-fraction", type=float, default=0.9, help="XLA_PYTHON_CLIENT_MEM_FRACTION")
  add_common_flags(p)
  args = p.parse_args(argv)
  if args.gpus and not all(g.strip().isdigit() for g in args.gpus.split(",")):
    p.error(f"--gpus={args.gpus!r}: expected comma-separated GPU ids such as 0,1,2,3.")
  return args


if __name__ == "__main__":
  a = parse()
  execute(commands(a), a.dry_run)
