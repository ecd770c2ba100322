"""Encoder throughput: edistill's jitted Flax encoder vs the PyTorch reference, same CPU, one process.

    .venv/bin/python benchmarks/encode_speed.py [--model minilm-l6] [--batch 32] [--max-length 128]

Two workloads, each timed interleaved (edistill call, PyTorch call, ...) so machine noise hits both:
  full    every row is max_length real tokens: equal FLOPs, raw kernel efficiency.
  corpus  2,048 real texts (Python stdlib docstrings, deterministic, 8-330 tokens), batches of
          ``batch`` in length-sorted order as sentence-transformers' encode() does. PyTorch pads
          each batch to its longest row (sentence-transformers' dynamic padding) and, as a second
          reference, to max_length (a fixed-shape pipeline). edistill is timed twice: padded to
          the batch's longest row too (the same shapes as the dynamic reference; jit compiles once
          per distinct length, ~0.8 s each, excluded from the timing and reported), and padded to
          8-token buckets (a few static shapes, more padding).
Outputs are compared (max abs difference of mean-pooled embeddings) before anything is timed.
Requires the `bench` extra (torch): `make bench`.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import jax
import numpy as np
import torch
import transformers

from edistill import xla_options
from edistill.models import zoo

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_malloc_flag, apply_malloc, interleaved, stdlib_docstrings  # noqa: E402

BUCKET = 8


def stdlib_texts(n: int) -> list[str]:
  """Stdlib docstring paragraphs of at least 4 words (the corpus workload)."""
  return [t for t in stdlib_docstrings() if len(t.split()) >= 4][:n]


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--model", default="minilm-l6")
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--max-length", type=int, default=128)
  parser.add_argument("--texts", type=int, default=2048)
  parser.add_argument("--reps", type=int, default=10)
  parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
  parser.add_argument("--json", type=Path, default=None, help="also write the results here")
  add_malloc_flag(parser)
  args = parser.parse_args()
  apply_malloc(args.malloc)  # Before either framework starts its threads.

  threads = args.threads or torch.get_num_threads()
  torch.set_num_threads(threads)
  pre = zoo.load(args.model, normalize=False)
  ref = transformers.AutoModel.from_pretrained(pre.path, attn_implementation="sdpa").eval()
  params = jax.device_put(pre.params)
  apply = xla_options.inference_jit(lambda p, i, m: pre.module.apply({"params": p}, i, m))

  def ours(batch):
    return apply(params, batch["input_ids"], batch["attention_mask"]).block_until_ready()

  @torch.inference_mode()
  def theirs(batch):
    mask = torch.from_numpy(batch["attention_mask"]).long()
    states = ref(input_ids=torch.from_numpy(batch["input_ids"]).long(), attention_mask=mask).last_hidden_state
    m = mask.unsqueeze(-1).float()
    return ((states * m).sum(1) / m.sum(1).clamp(min=1e-9)).numpy()

  results = {"model": args.model, "batch": args.batch, "max_length": args.max_length, "malloc": args.malloc,
             "torch_threads": threads, "torch": torch.__version__, "jax": jax.__version__,
             "cpu": platform.processor() or platform.machine()}

  # --- full: every position is a real token.
  rng = np.random.default_rng(0)
  ids = rng.integers(1000, pre.config.vocab_size - 1, (args.batch, args.max_length)).astype(np.int32)
  full = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
  diff = float(np.abs(np.asarray(ours(full)) - theirs(full)).max())
  theirs(full)
  t = interleaved({"edistill": lambda: ours(full), "torch": lambda: theirs(full)}, args.reps)
  results["full"] = {"edistill_sent_per_s": args.batch / t["edistill"], "torch_sent_per_s": args.batch / t["torch"],
                     "ratio": t["torch"] / t["edistill"], "max_abs_diff": diff}

  # --- corpus: real texts, length-sorted batches.
  texts = stdlib_texts(args.texts)
  lengths = [len(x) for x in pre.tokenizer(texts, truncation=True, max_length=args.max_length)["input_ids"]]
  order = np.argsort(lengths, kind="stable")
  chunks = [[texts[i] for i in order[s:s + args.batch]] for s in range(0, len(texts), args.batch)]
  chunks = [c for c in chunks if len(c) == args.batch]
  bucketed = [pre.tokenize(c, args.max_length, bucket=BUCKET) for c in chunks]
  longest = [pre.tokenize(c, args.max_length, bucket=1) for c in chunks]
  fixed = [pre.tokenize(c, args.max_length) for c in chunks]
  diff = max(float(np.abs(np.asarray(ours(b)) - theirs(b)).max()) for b in longest[::8])
  start = time.perf_counter()
  for b in bucketed + longest:  # Compile every shape before timing.
    ours(b)
  compile_s = time.perf_counter() - start
  for b in longest[:2]:
    theirs(b)

  def run(fn, batches):
    return lambda: [fn(b) for b in batches]

  reps = max(3, args.reps // 3)
  t = interleaved({"edistill": run(ours, longest), "edistill_bucketed": run(ours, bucketed),
                   "torch_longest": run(theirs, longest), "torch_fixed": run(theirs, fixed)}, reps)
  n = len(chunks) * args.batch
  results["corpus"] = {
      "texts": n, "mean_tokens": float(np.mean(lengths)),
      "shapes": len({b["input_ids"].shape for b in longest}), "bucketed_shapes": len({b["input_ids"].shape for b in bucketed}),
      "compile_s_all_shapes": compile_s,
      "edistill_sent_per_s": n / t["edistill"], "edistill_bucketed_sent_per_s": n / t["edistill_bucketed"],
      "torch_dynamic_sent_per_s": n / t["torch_longest"], "torch_fixed_sent_per_s": n / t["torch_fixed"],
      "ratio_vs_dynamic": t["torch_longest"] / t["edistill"],
      "ratio_bucketed_vs_dynamic": t["torch_longest"] / t["edistill_bucketed"],
      "ratio_vs_fixed": t["torch_fixed"] / t["edistill"], "max_abs_diff": diff}

  print(json.dumps(results, indent=2))
  if args.json:
    args.json.write_text(json.dumps(results, indent=2))
  return results


if __name__ == "__main__":
  sys.exit(0 if main() else 1)
