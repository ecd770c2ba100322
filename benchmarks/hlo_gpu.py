"""The optimized HLO of train_gpu.py's steps as XLA compiles them for an H200, on a machine without a
GPU (deviceless ahead-of-time compilation through the CUDA plugin's topology): where a step's
transposes come from and what its memory-bound kernels move, checked between GPU sessions.

    make hlo-gpu                                        # installs .venv-aot, runs the default steps
    JAX_PLATFORMS=cpu JAX_SKIP_CUDA_CONSTRAINTS_CHECK=1 PYTHONPATH=. .venv-aot/bin/python \\
      benchmarks/hlo_gpu.py --steps jax_cudnn:ce,jax:minilm --out runs/hlo_gpu/hlo.jsonl

Steps are train_gpu.py's measurement names (``jax:<workload>``, ``jax_cudnn:<workload>``), and
``encode:<kernels>`` for one batch of its corpus encoding (``encode_jax``'s shape). For each,
``hlo_<name>.txt`` (the optimized module) goes beside --out and one JSON line with the transposes and
copies by elements moved (``train_gpu.hlo_moves``) and the non-matmul kernels by bytes read and
written (``train_gpu.hlo_traffic``). Nothing runs: no timing, no autotuning (XLA picks its default
matmul configurations), so the matmuls' kernels may differ from a GPU's compile; the layouts and
fusions are the compiler's own. Needs ``jax-cuda12-plugin[with-cuda]`` of jax's version (the ``aot``
extra), not a driver.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # The host's CPU runs jax; the CUDA plugin only compiles.
os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")  # It would look for a driver.
sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402

# XLA's description of the target (xla/tools/hlo_opt/gpu_specs' form): an H200 SXM, compute
# capability 9.0, 132 SMs, 141 GB at 4.8 TB/s; cuDNN 9.10 (what cuDNN attention's rewrites check).
H200 = """
gpu_device_info {
  threads_per_block_limit: 1024 threads_per_warp: 32 shared_memory_per_block: 49152
  shared_memory_per_core: 233472 threads_per_core_limit: 2048 core_count: 132 fpus_per_core: 128
  block_dim_limit_x: 2147483647 block_dim_limit_y: 65535 block_dim_limit_z: 65535
  memory_bandwidth: 4800000000000 l2_cache_size: 52428800 clock_rate_ghz: 1.98
  device_memory_size: 150754820096 shared_memory_per_block_optin: 232448
  cuda_compute_capability { major: 9 } registers_per_core_limit: 65536 registers_per_block_limit: 65536
}
platform_name: "CUDA"
dnn_version_info { major: 9 minor: 10 }
runtime_version { major: 12 minor: 8 }
device_description_str: "NVIDIA H200"
"""
DEFAULT_STEPS = "jax_cudnn:ce,jax:ce,jax:minilm,jax_cudnn:minilm,jax_cudnn:ce_mpnet,encode:plain,encode:cudnn"


def h200_mesh():
  """A (data 1, model 1) mesh of one H200 that is not there."""
  from jax.experimental import topologies
  topology = topologies.get_topology_desc(platform="cuda", target_config=H200, topology="1x1x1")
  return topologies.make_mesh(topology, (1, 1), ("data", "model"))


def compile_text(w, mesh) -> str:
  """The optimized HLO of edistill's jitted step for workload ``w`` compiled for ``mesh``'s device,
  from shapes only (no parameters or batch are made on any device)."""
  import steps
  from edistill import mesh as mesh_lib
  from edistill.train import state as state_lib

  w = dataclasses.replace(w, kernels=w.kernels or "plain")  # A GPU's default; jax's backend here is the CPU.
  tx = steps.optimizer()
  params = jax.eval_shape(lambda: steps.init_params(w))
  state = jax.eval_shape(lambda p: state_lib.create(p, tx, 0), params)
  state_sh = mesh_lib.tree_shardings(state, mesh)
  batch_sh = mesh_lib.batch_sharding(mesh)
  step = steps.jit_step(w, tx, state_sh, mesh_lib.replicated(mesh), batch_sh)
  abstract = lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh)
  batch = jax.tree.map(lambda x: abstract(x, batch_sh), steps.random_batch(w))
  return step.lower(jax.tree.map(abstract, state, state_sh), None, batch).compile().as_text()


def compile_encode_text(kernels: str, mesh, tiny: bool = False) -> str:
  """The optimized HLO of one batch of train_gpu.py's ``encode_jax`` (``train_gpu.encode_model``, 512 x
  128 tokens) on the kernels named ``kernels``, from shapes only."""
  import jax.numpy as jnp
  import steps
  import train_gpu

  cfg, module = train_gpu.encode_model(tiny, kernels)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  abstract = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated)
  params = jax.tree.map(abstract, jax.eval_shape(lambda: steps.init_encoder(cfg)))
  ids = abstract(jax.ShapeDtypeStruct((16 if tiny else train_gpu.ENCODE_BATCH, train_gpu.ENCODE_LENGTH), jnp.int32))
  fn = jax.jit(lambda p, i, m: module.apply({"params": p}, i, m))
  return fn.lower(params, ids, ids).compile().as_text()


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--out", required=True, help="JSON-lines file; the HLO texts go beside it")
  p.add_argument("--steps", default=DEFAULT_STEPS, help="comma-separated train_gpu.py step names")
  p.add_argument("--tiny", action="store_true", help="train_gpu.py's toy shapes")
  args = p.parse_args(argv)
  import train_gpu

  out = Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  ctx = train_gpu.Context(argparse.Namespace(tiny=args.tiny, out=str(out), best_kernels={}))
  mesh = h200_mesh()
  for name in args.steps.split(","):
    start = time.perf_counter()
    variant, what = name.split(":")
    text = (compile_encode_text(what, mesh, args.tiny) if variant == "encode"
            else compile_text(ctx.workload(name), mesh))
    (out.parent / f"hlo_{name.replace(':', '_')}.txt").write_text(text)
    traffic = train_gpu.hlo_traffic(text)
    rec = {"name": name, "target": "H200 (deviceless)", "jax": jax.__version__,
           "compile_s": time.perf_counter() - start, "moves": train_gpu.hlo_moves(text), "traffic": traffic}
    with open(out, "a") as f:
      f.write(json.dumps(rec) + "\n")
    moved = sum(m[2] for m in rec["moves"] if m[0].startswith("transpose"))
    print(f"{name}: {traffic['kernels']} non-matmul kernels move {traffic['bytes'] / 1e9:.1f} GB; "
          f"transposes {moved / 1e9:.2f} G elements ({rec['compile_s']:.0f} s)", flush=True)
    for kind, source, count, total in traffic["top"][:8]:
      print(f"  {total / 1e9:7.2f} GB {count:4d}x {kind:30s} {source[-80:]}")


if __name__ == "__main__":
  main()
