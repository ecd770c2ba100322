"""Train-step throughput and MFU on an accelerator (or CPU), with a MiniLM-L6-shaped student.

    PYTHONPATH=. python benchmarks/train_mfu.py [--batch 512] [--query-length 32] [--dtype bfloat16]

The `qemb` row's step (benchmarks/steps.py: asymmetric student, trained query tower + 384->768
projection, frozen teacher document embeddings precomputed; label + score distillation +
query-embedding losses; AdamW), random weights, so only jax/flax/optax are needed: this runs on a
bare GPU box. MFU is achieved model FLOP/s over the chip's peak dense FLOP/s for the compute dtype
(``--peak-tflops``, default H100/H200 SXM: 989 bf16, 494 tf32/fp32-tensor-core). Model FLOPs are
counted analytically (steps.model_flops, PaLM-style: 6 x non-embedding params x tokens + 12 x
layers x L x H x tokens for attention, + the projection); XLA's own cost analysis is printed too,
but on GPU it leaves out the cuBLAS matmuls (custom calls), so it undercounts.
benchmarks/train_gpu.py times this step (and a teacher-size one) against PyTorch on the same GPU.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import jax

sys.path.insert(0, str(Path(__file__).resolve().parent))
import steps  # noqa: E402


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--batch", type=int, default=512)
  p.add_argument("--query-length", type=int, default=32)
  p.add_argument("--layers", type=int, default=6)
  p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
  p.add_argument("--peak-tflops", type=float, default=None)
  args = p.parse_args()

  w = steps.Workload("qemb", steps.MINILM.with_layers(args.layers), args.batch, args.query_length, dtype=args.dtype)
  figures, _ = steps.run_jax(w)
  peak = args.peak_tflops or (steps.PEAK_BF16_TFLOPS if args.dtype == "bfloat16" else steps.PEAK_BF16_TFLOPS / 2)
  device = jax.devices()[0]
  out = {"device": device.device_kind, "platform": device.platform, **dataclasses.asdict(w), **figures,
         **steps.rates(w, figures["step_s"], peak), "peak_tflops": peak}
  out["config"] = out["config"]["arch"] + f" {args.layers}x{w.config.hidden_size}"
  print(json.dumps(out, indent=2, default=str))


if __name__ == "__main__":
  main()
