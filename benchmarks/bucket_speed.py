"""Training throughput of length-bucketed batches against fixed padding, same process (issue 16, item 5).

    .venv/bin/python benchmarks/bucket_speed.py --config configs/ablation.py:row=unlab,student=l2,... [--steps 120]

Builds the config's real training setup (``recipes.build``: its pipeline, student, teacher tables and
optimizer; run ``--mode precompute`` of the same config first so the tables come from the cache), then
times the jitted train step of each variant on one device, in rounds (every variant runs
``--steps`` / ``--rounds`` steps per round, in turn), each step from ``pipeline.batch`` (host-side
batch assembly included) to the loss on the host:

  fixed       every batch padded to max_length (the reference; what the ablation rows use)
  trim        pad_multiple=8: each batch padded to its own longest row, rounded up to 8
  bucket      bucket_window=64 + pad_multiple=8: runs of 64 batches sorted by query length first
  bucket_b64  the same at batch 64 (twice the in-batch negatives)
  bucket_emb  bucket, with the word-embedding table frozen (train.frozen)
  frozen3     fixed padding, embeddings and layers 0-2 frozen (no backward pass below layer 3)
  bucket_frozen3  bucket + frozen3

Every variant's shapes are compiled before timing (a warm-up pass over its first ``--warmup``
batches, and any step of a shape first seen while timing is dropped). Reports examples/s per
variant and its ratio to ``fixed``, and the mean padded query width. Nothing runs beside it.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT  # noqa: E402,F401

LOWER3 = (r"query_tower/embeddings/", r"query_tower/layer_[0-2]/")
VARIANTS = {  # name -> (batch size, bucket_window, pad_multiple, frozen)
    "fixed": (32, 0, 0, ()),
    "trim": (32, 0, 8, ()),
    "bucket": (32, 64, 8, ()),
    "bucket_b64": (64, 64, 8, ()),
    "bucket_emb": (32, 64, 8, (r"query_tower/embeddings/word/",)),
    "frozen3": (32, 0, 0, LOWER3),
    "bucket_frozen3": (32, 64, 8, LOWER3),
}


def make_runner(setup, cfg, batch: int, window: int, multiple: int, frozen):
  """(step(i) -> (seconds, query width), state holder) for one variant on one device."""
  import jax

  from edistill import mesh as mesh_lib
  from edistill.data import pipeline
  from edistill.train import loop, state as state_lib
  from edistill.train.step import jit_train_step

  p = setup.pipe
  pipe = pipeline.Pipeline(p.examples, p.queries, p.docs, batch, cfg.seed, positives=p.positives,
                           bucket_window=window, pad_multiple=multiple)
  tc = cfg.train
  tx = state_lib.make_optimizer(tc.learning_rate, tc.steps, tc.warmup_steps, tc.weight_decay, tc.grad_clip,
                                tc.schedule, tuple(frozen))
  mesh = mesh_lib.make_mesh({"data": -1, "model": 1}, jax.devices()[:1])
  state_sh = mesh_lib.tree_shardings(jax.eval_shape(lambda q: state_lib.create(q, tx, 0), setup.init_params), mesh)
  holder = {"state": jax.jit(lambda q: state_lib.create(q, tx, 0), out_shardings=state_sh)(setup.init_params)}
  teacher = jax.device_put(loop.device_teacher_params(setup), mesh_lib.replicated(mesh))
  fn = jit_train_step(setup.student, setup.teacher, setup.loss, tx, state_sh, mesh_lib.replicated(mesh),
                      mesh_lib.batch_sharding(mesh), frozen=tuple(frozen))

  def step(i: int) -> tuple[float, int, tuple]:
    start = time.perf_counter()
    b = loop.host_batch(setup, pipe.batch(i))  # The teacher's rows of the batch, as training gathers them.
    holder["state"], metrics = fn(holder["state"], teacher, b)
    float(metrics["loss"])
    key = (b["query_input_ids"].shape, b["doc_input_ids"].shape)
    return time.perf_counter() - start, b["query_input_ids"].shape[1], key

  return step, batch


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", required=True)
  parser.add_argument("--steps", type=int, default=120, help="timed steps per variant")
  parser.add_argument("--rounds", type=int, default=4)
  parser.add_argument("--warmup", type=int, default=40)
  parser.add_argument("--variants", default=",".join(VARIANTS))
  parser.add_argument("--json", type=Path)
  args = parser.parse_args()
  import os
  from edistill import config_lib, host
  from edistill import recipes
  host.tune_malloc()
  cfg = config_lib.load_config(args.config)
  config_lib.validate(cfg)
  t0 = time.perf_counter()
  setup = recipes.build(cfg)
  print(f"setup {time.perf_counter() - t0:.0f} s: {len(setup.pipe.examples):,} examples", flush=True)
  names = args.variants.split(",")
  runners, seen, next_step = {}, {}, {}
  for name in names:
    runners[name] = make_runner(setup, cfg, *VARIANTS[name])
    seen[name], next_step[name] = set(), 0
    # Warm-up: compile what the first batches need; a window of 64 sorted batches spans every width.
    for _ in range(args.warmup):
      _, _, key = runners[name][0](next_step[name])
      seen[name].add(key)
      next_step[name] += 1
  times = {n: [] for n in names}
  examples = {n: 0 for n in names}
  widths = {n: [] for n in names}
  per_round = args.steps // args.rounds
  for _ in range(args.rounds):
    for name in names:
      step, batch = runners[name]
      for _ in range(per_round):
        sec, width, key = step(next_step[name])
        next_step[name] += 1
        widths[name].append(width)
        if key in seen[name]:
          times[name].append(sec)
          examples[name] += batch
        seen[name].add(key)
  rate = {n: examples[n] / sum(times[n]) for n in names}
  ref = rate.get("fixed", next(iter(rate.values())))
  print(f"load average {os.getloadavg()[0]:.2f}")
  print("| variant | batch | examples/s | ratio to fixed | mean query width | timed steps |")
  print("|---|---|---|---|---|---|")
  out = {}
  for n in names:
    out[n] = {"examples_per_s": rate[n], "ratio": rate[n] / ref, "mean_query_width": float(np.mean(widths[n])),
              "timed_steps": len(times[n]), "batch": runners[n][1]}
    print(f"| {n} | {runners[n][1]} | {rate[n]:.1f} | {rate[n] / ref:.2f} | {np.mean(widths[n]):.1f} | {len(times[n])} |")
  if args.json:
    args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
  main()
