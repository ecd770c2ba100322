"""Train-step throughput and MFU on an accelerator (or CPU), with a MiniLM-L6-shaped student.

    PYTHONPATH=. python benchmarks/train_mfu.py [--batch 512] [--query-length 32] [--dtype bfloat16]

The `qemb` row's step (asymmetric student: trained query tower + 384->768 projection, frozen teacher
document embeddings precomputed; label + score distillation + query-embedding losses; AdamW).
Weights are random (throughput does not depend on them), so only jax/flax/optax are needed: this
runs on a bare GPU box. FLOPs per step come from XLA's cost analysis of the compiled step; MFU is
achieved FLOP/s over the chip's peak dense FLOP/s for the compute dtype (``--peak-tflops``, default
H100 SXM: 989 bf16, 494 tf32/fp32-tensor-core). Model FLOPs are counted analytically (PaLM-style:
6 x non-embedding params x tokens + 12 x layers x L x H x tokens for attention); XLA's own cost
analysis is printed too, but on GPU it leaves out the cuBLAS matmuls (custom calls), so it undercounts.
"""
from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from edistill.models.dual_encoder import DualEncoder, init_projection
from edistill.models.encoder import Encoder, TransformerConfig
from edistill.teachers import Teacher
from edistill.train import state as state_lib
from edistill.objective import LossConfig
from edistill.train.step import train_step

MINILM = TransformerConfig("bert", vocab_size=30522, hidden_size=384, num_layers=6, num_heads=12,
                           intermediate_size=1536, max_position_embeddings=512, layer_norm_eps=1e-12)


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--batch", type=int, default=512)
  p.add_argument("--query-length", type=int, default=32)
  p.add_argument("--layers", type=int, default=6)
  p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
  p.add_argument("--steps", type=int, default=30)
  p.add_argument("--peak-tflops", type=float, default=None)
  p.add_argument("--corpus", type=int, default=100_000)
  args = p.parse_args()

  cfg = MINILM.with_layers(args.layers)
  dtype = jnp.dtype(args.dtype)
  enc = Encoder(cfg, normalize=True, dtype=dtype)
  student = DualEncoder(enc, None, "asymmetric")
  rng = np.random.default_rng(0)
  ids = jnp.asarray(rng.integers(1000, 30000, (args.batch, args.query_length)), jnp.int32)
  params = {"query_tower": enc.init(jax.random.key(0), ids[:2], jnp.ones_like(ids[:2]))["params"],
            "query_projection": init_projection(jax.random.key(1), 384, 768)}
  teacher = Teacher(Encoder(MINILM), "precomputed")  # Encoder unused in precomputed mode.
  unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
  tables = {"queries": unit(rng.normal(size=(args.batch * 4, 768))).astype(np.float32),
            "docs": unit(rng.normal(size=(args.corpus, 768))).astype(np.float32)}
  lengths = rng.integers(args.query_length // 4, args.query_length + 1, args.batch)
  batch = {"query_input_ids": ids,
           "query_attention_mask": jnp.asarray(np.arange(args.query_length) < lengths[:, None], jnp.int32),
           "doc_input_ids": jnp.zeros((args.batch, 1, 8), jnp.int32),  # Unused: documents are the teacher's.
           "doc_attention_mask": jnp.ones((args.batch, 1, 8), jnp.int32),
           "query_index": jnp.arange(args.batch, dtype=jnp.int32),
           "doc_index": jnp.asarray(rng.permutation(args.corpus)[:args.batch, None], jnp.int32),
           "negative_mask": jnp.zeros((args.batch, args.batch), bool)}
  batch.update(teacher.host_inputs(tables, jax.device_get(batch)))  # The rows training ships in the batch.
  tables = teacher.device_params(tables)  # None: no table on the device.
  tx = state_lib.make_optimizer(5e-5, 1000, 0, 0.01, 1.0)
  state = state_lib.create(params, tx, 0)
  loss = LossConfig(label=1.0, score=1.0, query_emb=1.0)
  step = jax.jit(lambda s, t, b: train_step(s, t, b, student=student, teacher=teacher, cfg=loss, tx=tx),
                 donate_argnums=(0,))
  compiled = step.lower(state, tables, batch).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get("flops", 0.0))
  for _ in range(3):
    state, m = compiled(state, tables, batch)
  jax.block_until_ready(m)
  times = []
  for _ in range(args.steps):
    start = time.perf_counter()
    state, m = compiled(state, tables, batch)
    jax.block_until_ready(m)
    times.append(time.perf_counter() - start)
  sec = float(np.median(times))
  tower = params["query_tower"]
  non_embedding = sum(x.size for k, v in tower.items() if k != "embeddings" for x in jax.tree.leaves(v))
  tokens = args.batch * args.query_length
  model_flops = (6 * non_embedding * tokens + 12 * cfg.num_layers * args.query_length * cfg.hidden_size * tokens
                 + 6 * 384 * 768 * args.batch)  # + the projection.
  device = jax.devices()[0]
  peak = args.peak_tflops or (989.0 if dtype == jnp.bfloat16 else 494.0)
  out = {"device": device.device_kind, "platform": device.platform, "dtype": args.dtype, "batch": args.batch,
         "query_length": args.query_length, "layers": args.layers, "step_ms": 1000 * sec,
         "examples_per_s": args.batch / sec, "model_tflop_per_step": model_flops / 1e12,
         "xla_cost_analysis_tflop": flops / 1e12, "achieved_tflops": model_flops / sec / 1e12,
         "peak_tflops": peak, "mfu": model_flops / sec / 1e12 / peak, "loss": float(m["loss"])}
  print(json.dumps(out, indent=2))


if __name__ == "__main__":
  main()
