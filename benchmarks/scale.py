"""Train step at corpus scale: an MS MARCO-shaped teacher table against a small one (issue 18).

    .venv/bin/python benchmarks/scale.py --dir /work/scale_tables --rows 20000,8841823 [--steps 60]
    .venv/bin/python benchmarks/scale.py --loss-config configs/ablation.py:row=qemb,student=l2   # dtype effect

Writes synthetic teacher tables once under ``--dir`` (``docs_<N>.npy`` [N, 768] and
``queries_<N>.npy`` [min(N, 502939), 768], MS MARCO's passage and training-query counts, in
``--dtype``; rows are unit vectors, a 65,536-row random block repeated, since only sizes matter
here), then runs one child process per table size, the sizes interleaved over ``--rounds``. Each child
opens the tables memory-mapped (``data.tables.RowTable``), builds a ``pipeline.Pipeline`` of 200k
examples (a random query and 8 random documents each: positive + 7 hard negatives) with no document
tokens (an asymmetric student), and runs the real jitted train step (``train.step.jit_train_step``, a
2-layer MiniLM-shaped asymmetric student with random weights, label + score + query-embedding
terms, batch 32 x 32 query tokens) fed as ``train/loop.py`` feeds it: ``loop.host_batch`` gathers
the batch's table rows on the host, nothing of the tables is put on a device. Per size it reports:

  step_ms          median wall time of a step, host gather + transfer + step (after compilation)
  device_bytes     the compiled step's arguments + outputs + temporaries (XLA memory analysis), and
                   ``live_bytes``: every live device array after the steps
  rss_*            host memory: peak RSS, the resident anonymous part, and the resident pages of the
                   mapped tables (what the host has read of them)
  startup_s        process start to the first step's result (imports, open, pipeline, compile)

``--loss-config`` instead builds that config's real setup (cached teacher tables: run its
``--mode precompute`` first) and compares the loss of its first 20 batches with the rows sent in
float32, bfloat16 and float16.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

T0 = time.perf_counter()
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DIM, QUERIES, EXAMPLES, BLOCK = 768, 502_939, 200_000, 65_536


def write_table(path: Path, rows: int, dtype: str, seed: int) -> None:
  """[rows, 768] unit vectors in ``dtype``: one random block, repeated (atomic: a killed run leaves none)."""
  if path.is_file():
    return
  rng = np.random.default_rng(seed)
  block = rng.standard_normal((min(BLOCK, rows), DIM), dtype=np.float32)
  block = (block / np.linalg.norm(block, axis=1, keepdims=True)).astype(dtype)
  tmp = path.with_name(path.stem + ".tmp.npy")
  out = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(rows, DIM))
  for start in range(0, rows, len(block)):
    out[start:start + len(block)] = block[:rows - start]
  out.flush()
  del out
  os.replace(tmp, path)


def rss(table_dir: str) -> dict[str, float]:
  """MiB: peak RSS, the current anonymous resident set (/proc/self/status), and the resident pages of
  the mapped table files (/proc/self/smaps entries under ``table_dir``)."""
  anon = float("nan")
  for line in Path("/proc/self/status").read_text().splitlines():
    if line.startswith("RssAnon:"):
      anon = int(line.split()[1]) / 1024
  table_kib, inside = 0, False
  for line in Path("/proc/self/smaps").read_text().splitlines():
    if "-" in line.split(" ", 1)[0] and not line.endswith(":"):  # A mapping's header line.
      inside = str(Path(table_dir).resolve()) in line
    elif inside and line.startswith("Rss:"):
      table_kib += int(line.split()[1])
  return {"rss_peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "rss_anon_mib": anon,
          "rss_table_mib": table_kib / 1024}


def child(args) -> dict:
  import jax

  from edistill import mesh as mesh_lib, teachers
  from edistill.data import pipeline, tables
  from edistill.models.dual_encoder import DualEncoder, init_projection
  from edistill.models.encoder import Encoder, TransformerConfig
  from edistill.objective import LossConfig
  from edistill.train import loop, state as state_lib
  from edistill.train.step import jit_train_step

  n = args.child
  docs = tables.RowTable([tables.open_rows(Path(args.dir) / f"docs_{n}.npy")])  # As the embedding cache opens them.
  queries = tables.RowTable([tables.open_rows(Path(args.dir) / f"queries_{n}.npy")])
  rng = np.random.default_rng(0)
  nq = len(queries)
  lengths = rng.integers(4, 33, nq).astype(np.int32)
  q_tokens = pipeline.Tokens(rng.integers(1000, 30000, (nq, 32)).astype(np.uint16), lengths, 0)
  examples = pipeline.Examples(rng.integers(0, nq, EXAMPLES).astype(np.int32),
                               rng.integers(0, len(docs), (EXAMPLES, 8)).astype(np.int32))
  pipe = pipeline.Pipeline(examples, q_tokens, None, args.batch, seed=0)
  cfg = TransformerConfig("bert", vocab_size=30522, hidden_size=384, num_layers=2, num_heads=12,
                          intermediate_size=1536, max_position_embeddings=512, layer_norm_eps=1e-12)
  enc = Encoder(cfg, normalize=True)
  student = DualEncoder(enc, None, "asymmetric")
  ids = np.ones((2, 8), np.int32)
  params = {"query_tower": enc.init(jax.random.key(0), ids, ids)["params"],
            "query_projection": init_projection(jax.random.key(1), 384, DIM)}
  teacher = teachers.Teacher(enc, "precomputed", args.table_dtype)
  setup = loop.Setup(pipe, student, teacher, {"queries": queries, "docs": docs}, params, None, None,
                     LossConfig(label=1.0, score=1.0, query_emb=1.0), None)
  tx = state_lib.make_optimizer(5e-4, 1000, 100, 0.01, 1.0)
  mesh = mesh_lib.make_mesh({"data": -1, "model": 1}, jax.devices()[:1])
  state_sh = mesh_lib.tree_shardings(jax.eval_shape(lambda p: state_lib.create(p, tx, 0), params), mesh)
  state = jax.jit(lambda p: state_lib.create(p, tx, 0), out_shardings=state_sh)(params)
  batch_sh = mesh_lib.batch_sharding(mesh)
  fn = jit_train_step(student, teacher, setup.loss, tx, state_sh, mesh_lib.replicated(mesh), batch_sh)
  teacher_params = loop.device_teacher_params(setup)
  feed = lambda step: jax.make_array_from_process_local_data(batch_sh, loop.host_batch(setup, pipe.batch(step)))
  first = feed(0)
  memory = fn.lower(state, teacher_params, first).compile().memory_analysis()
  state, metrics = fn(state, teacher_params, first)
  float(metrics["loss"])
  startup = time.perf_counter() - T0
  times = []
  for step in range(1, args.steps + 1):
    start = time.perf_counter()
    state, metrics = fn(state, teacher_params, feed(step))
    float(metrics["loss"])
    times.append(time.perf_counter() - start)
  live = sum(x.nbytes for x in jax.live_arrays())
  return {"rows": n, "query_rows": nq, "table_gib": (docs.shape[0] + nq) * DIM * docs.dtype.itemsize / 2**30,
          "step_ms": 1000 * float(np.median(times[args.steps // 5:])), "startup_s": startup,
          "device_bytes": int(memory.argument_size_in_bytes + memory.output_size_in_bytes
                              + memory.temp_size_in_bytes),
          "argument_bytes": int(memory.argument_size_in_bytes), "live_bytes": int(live),
          "loss": float(metrics["loss"]), **rss(args.dir)}


def loss_check(config: str) -> str:
  """The loss of a real config's first 20 batches with the teacher rows sent in each dtype."""
  import dataclasses

  import jax

  from edistill import config_lib, recipes
  from edistill.objective import compute_loss
  from edistill.train import loop
  cfg = config_lib.load_config(config)
  setup = recipes.build(cfg)
  out = {}
  for dtype in ("float32", "bfloat16", "float16"):
    s = dataclasses.replace(setup, teacher=dataclasses.replace(setup.teacher, table_dtype=dtype))
    fn = jax.jit(lambda p, b: compute_loss(p, None, b, jax.random.key(0), student=s.student, teacher=s.teacher,
                                           cfg=s.loss, deterministic=True)[0])
    out[dtype] = np.array([float(fn(s.init_params, loop.host_batch(s, setup.pipe.batch(i)))) for i in range(20)])
  lines = [f"loss over the first 20 batches of {config} (initial parameters), by the dtype teacher rows travel in:",
           "| dtype | mean loss | max relative difference to float32 |", "|---|---|---|"]
  for dtype, losses in out.items():
    lines.append(f"| {dtype} | {losses.mean():.6f} | {np.max(np.abs(losses / out['float32'] - 1)):.2e} |")
  return "\n".join(lines)


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--dir", default="/tmp/edistill_scale")
  p.add_argument("--rows", default="20000,8841823", help="document table sizes, the first the reference")
  p.add_argument("--dtype", default="float16", help="storage dtype of the synthetic tables")
  p.add_argument("--table-dtype", default="float16", help="teacher.table_dtype: what the rows travel in")
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--steps", type=int, default=60)
  p.add_argument("--rounds", type=int, default=2)
  p.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
  p.add_argument("--loss-config", default="")
  args = p.parse_args()
  if args.loss_config:
    print(loss_check(args.loss_config))
    return
  if args.child:
    print(json.dumps(child(args)))
    return
  sizes = [int(x) for x in args.rows.split(",")]
  Path(args.dir).mkdir(parents=True, exist_ok=True)
  for n in sizes:
    start = time.perf_counter()
    write_table(Path(args.dir) / f"docs_{n}.npy", n, args.dtype, 0)
    write_table(Path(args.dir) / f"queries_{n}.npy", min(n, QUERIES), args.dtype, 1)
    print(f"tables of {n} rows ready ({time.perf_counter() - start:.0f} s)", flush=True)
  runs = {n: [] for n in sizes}
  for _ in range(args.rounds):
    for n in sizes:
      cmd = [sys.executable, __file__, "--child", str(n), "--dir", args.dir, "--table-dtype", args.table_dtype,
             "--batch", str(args.batch), "--steps", str(args.steps)]
      done = subprocess.run(cmd, check=True, capture_output=True, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
      runs[n].append(json.loads(done.stdout.strip().splitlines()[-1]))
      print(json.dumps(runs[n][-1]), flush=True)
  ref = sizes[0]
  best = {n: min(r, key=lambda x: x["step_ms"]) for n, r in runs.items()}
  lines = ["| document rows | query rows | tables on disk (GiB) | step (ms) | ratio | device bytes per step | "
           "live device bytes | host peak RSS (MiB) | resident table pages (MiB) | startup (s) |",
           "|---" * 10 + "|"]
  for n in sizes:
    r = best[n]
    lines.append(f"| {n:,} | {r['query_rows']:,} | {r['table_gib']:.2f} | {r['step_ms']:.1f} | "
                 f"{r['step_ms'] / best[ref]['step_ms']:.3f} | {r['device_bytes']:,} | {r['live_bytes']:,} | "
                 f"{r['rss_peak_mib']:.0f} | {r['rss_table_mib']:.1f} | {r['startup_s']:.1f} |")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
