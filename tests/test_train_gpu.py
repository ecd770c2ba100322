"""benchmarks/train_gpu.py's pieces on toy shapes: the model-FLOP formula by hand, edistill's steps and
their PyTorch twins computing the same losses from the same weights, and an import chain that runs
where ml_collections, TFDS, ScaNN and bm25s are absent (the GPU box)."""
import ast
import dataclasses
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))
import steps  # noqa: E402

from edistill.models.encoder import Encoder  # noqa: E402
from tests import gpu_box  # noqa: E402


@pytest.mark.parametrize("arch", ["bert", "mpnet"])
def test_non_embedding_params_count_the_layers_params(arch):
  cfg = steps.TINY[arch]
  ids = np.full((1, 8), 64, np.int32)
  params = Encoder(cfg).init(jax.random.key(0), ids, np.ones_like(ids))["params"]
  layers = sum(x.size for k, v in params.items() if k.startswith("layer_") for x in jax.tree.leaves(v))
  assert steps.non_embedding_params(cfg) == layers


def test_model_flops_by_hand():
  # Tiny BERT: hidden 32, intermediate 64, 2 layers. A layer: q/k/v/out 4 * 32 * 32 + 4 * 32 biases,
  # MLP 2 * 32 * 64 + 64 + 32, two LayerNorms 4 * 32: 8,544; both layers 17,088.
  assert steps.non_embedding_params(steps.TINY["bert"]) == 17_088
  qemb = steps.Workload("qemb", steps.TINY["bert"], batch=4, query_length=8)  # 32 tokens.
  # 6 * 17,088 * 32 + 12 * 2 layers * 8 * 32 * 32 (attention) + 6 * 32 * 768 * 4 (the projection).
  assert steps.model_flops(qemb) == 3_280_896 + 196_608 + 589_824
  ce = steps.Workload("ce", steps.TINY["bert"], batch=2, query_length=8, candidates=3, doc_length=16)  # 6 x 24.
  # 6 * 17,088 * 144 + 12 * 2 * 24 * 32 * 144 + 6 * 32 * 1 * 6 (the cls score layer).
  assert steps.model_flops(ce) == 14_764_032 + 2_654_208 + 1_152
  assert steps.model_flops(dataclasses.replace(ce, head="dual")) == 14_764_032 + 2_654_208


WORKLOADS = {
    "qemb": steps.Workload("qemb", steps.TINY["bert"], 16, 8, dtype="float32"),
    "ce_bert_cls": steps.Workload("ce", steps.TINY["bert"], 3, 8, candidates=2, doc_length=16, dtype="float32"),
    "ce_mpnet_dual": steps.Workload("ce", steps.TINY["mpnet"], 3, 8, candidates=2, doc_length=16, head="dual",
                                    dtype="float32"),
}


@pytest.mark.parametrize("name", sorted(WORKLOADS))
def test_the_pytorch_step_computes_edistills_step(name):
  """Same weights and batch: the same loss before the first update (float32, CPU), and after it (the
  same AdamW, decay mask and clipping)."""
  torch = pytest.importorskip("torch")
  torch_steps = pytest.importorskip("torch_steps")
  w = WORKLOADS[name]
  params, batch = steps.init_params(w), steps.random_batch(w)
  state, step, batch_sh = steps.jax_step(w, params)
  batch_dev = jax.device_put(batch, batch_sh)
  state, first = step(state, None, batch_dev)
  _, second = step(state, None, batch_dev)
  theirs = torch_steps.TorchStep(w, params, batch, "cpu")
  torch_first = theirs.step().item()
  with torch.no_grad():
    torch_second = theirs.loss().item()
  assert float(first["loss"]) == pytest.approx(torch_first, rel=1e-5)
  assert float(second["loss"]) == pytest.approx(torch_second, rel=1e-4)
  assert abs(float(second["loss"]) - float(first["loss"])) > 1e-3  # The update moved the loss.


def test_the_run_records_both_frameworks_and_summarises(tmp_path):
  """train_gpu's measurements of one step in each framework (bf16, tiny), and the summary's ratio."""
  pytest.importorskip("torch")
  import train_gpu

  args = train_gpu.parse_args(["--tiny", "--out", str(tmp_path / "gpu.jsonl"), "--tokenizer", str(tmp_path)])
  ctx = train_gpu.Context(args)
  records = {name: {"name": name, **train_gpu.measure(ctx, name)} for name in ("jax:ce", "torch:ce")}
  jax_rec, torch_rec = records["jax:ce"], records["torch:ce"]
  assert jax_rec["first_loss"] == pytest.approx(torch_rec["first_loss"], rel=2e-2)  # bf16.
  assert jax_rec["examples_per_s"] > 0 and 0 < torch_rec["mfu"] < 1
  assert "ce: edistill's best / PyTorch's best examples/s = " in train_gpu.summarize(records)


def _imports(path: Path) -> set[str]:
  """Every module a file imports, at its top or inside functions."""
  names = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      names |= {a.name for a in node.names}
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
  return names


def test_the_gpu_scripts_import_nothing_the_gpu_box_lacks():
  """Each module train_gpu, steps and torch_steps import (lazily too) imports with those packages
  made unimportable, as they are on the GPU box."""
  modules = sorted(set().union(*(_imports(BENCH / f) for f in ("train_gpu.py", "steps.py", "torch_steps.py"))))
  blocked = gpu_box.BLOCKED
  code = gpu_box.PREAMBLE + f"""
import importlib
sys.path.insert(0, {str(BENCH)!r})
for name in {modules!r}:
  try:
    importlib.import_module(name)
  except ModuleNotFoundError as e:  # Also ``from module import function`` and torch where it is absent: fine.
    if (e.name or "").split(".")[0] in {blocked!r}:
      raise
"""
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        cwd=Path(__file__).resolve().parents[1])
  assert proc.returncode == 0, proc.stderr[-3000:]


def test_hlo_moves_ranks_transposes_and_copies_by_elements_moved():
  import train_gpu
  text = """
  %transpose.1 = bf16[4,8,2]{2,1,0} transpose(bf16[8,4,2]{2,1,0} %x), dimensions={1,0,2}
  %transpose.2 = bf16[4,8,2]{2,1,0} transpose(bf16[8,4,2]{2,1,0} %y), dimensions={1,0,2}
  %copy.3 = f32[16,4]{0,1} copy(f32[16,4]{1,0} %z)
  %add.4 = f32[16]{0} add(f32[16]{0} %a, f32[16]{0} %b)
  """
  assert train_gpu.hlo_moves(text) == [["transpose bf16[4,8,2]{2,1,0}, dimensions={1,0,2}", 2, 128],
                                       ["copy f32[16,4]{0,1}", 1, 64]]


def test_hlo_traffic_counts_what_non_matmul_kernels_read_and_write():
  """Bytes of results + operands of the ENTRY computation's kernels, matmul fusions (kCustom) and
  library calls left out, grouped by kernel kind and source op with layer numbers folded."""
  import train_gpu
  text = """
%fused_add (p: bf16[8,4]) -> bf16[8,4] {
  %p = bf16[8,4]{1,0} parameter(0)
  ROOT %add.9 = bf16[8,4]{1,0} add(%p, %p)
}

ENTRY %main (a: bf16[8,4], b: f32[4,4]) -> f32[8] {
  %a = bf16[8,4]{1,0} parameter(0)
  %b = f32[4,4]{1,0} parameter(1)
  %gemm_fusion_dot.1 = bf16[8,4]{1,0} fusion(%a, %b), kind=kCustom, calls=%gemm, metadata={op_name="jit(f)/layer_0/dot"}
  %loop_add_fusion.2 = bf16[8,4]{1,0} fusion(%gemm_fusion_dot.1), kind=kLoop, calls=%fused_add, metadata={op_name="jit(f)/layer_0/add"}
  %loop_add_fusion.3 = bf16[8,4]{1,0} fusion(%loop_add_fusion.2), kind=kLoop, calls=%fused_add, metadata={op_name="jit(f)/layer_1/add"}
  %custom-call.4 = (f32[8,4]{1,0}, u8[64]{0}) custom-call(%loop_add_fusion.3), custom_call_target="__cublas$gemm"
  %get-tuple-element.5 = f32[8,4]{1,0} get-tuple-element(%custom-call.4), index=0
  %bitcast.6 = f32[4,8]{1,0} bitcast(%get-tuple-element.5)
  %transpose.7 = f32[8,4]{1,0} transpose(%bitcast.6), dimensions={1,0}, metadata={op_name="jit(f)/transpose"}
  ROOT %reduce.8 = f32[8]{0} reduce(%transpose.7, %b), dimensions={1}, to_apply=%sum
}
"""
  got = train_gpu.hlo_traffic(text)
  # Two adds of bf16[8,4]: 64 B in + 64 B out each; the transpose 128 + 128; the reduce 128 + 64 + 32.
  assert got["top"] == [["loop_add_fusion", "layer_*/add", 2, 256], ["transpose", "transpose", 1, 256],
                        ["reduce", "", 1, 224]]
  assert got["bytes"] == 736 and got["kernels"] == 4


def test_the_cublas_part_runs_with_xlas_triton_matmuls_off(tmp_path, monkeypatch):
  """The jax_cublas part's process gets the flag added to XLA_FLAGS (kept), the other parts do not,
  and the summary lists its steps beside the others."""
  import train_gpu
  envs = {}
  monkeypatch.setattr(train_gpu.subprocess, "run", lambda cmd, env, **kw: envs.__setitem__(cmd[3], env))
  monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/tmp/x")
  train_gpu.drive(train_gpu.parse_args(["--tiny", "--out", str(tmp_path / "gpu.jsonl"), "--tokenizer", str(tmp_path),
                                        "--parts", "jax_core,jax_cublas"]))
  assert envs["jax_cublas"]["XLA_FLAGS"] == "--xla_dump_to=/tmp/x --xla_gpu_enable_triton_gemm=false"
  assert envs["jax_core"]["XLA_FLAGS"] == "--xla_dump_to=/tmp/x"
  rec = {"workload": {"kernels": "cudnn"}, "examples_per_s": 10.0, "step_s": 0.5, "mfu": 0.45, "compile_s": 1.0,
         "first_loss": 2.0}
  summary = train_gpu.summarize({"jax_cublas_cudnn:ce": rec, "torch_compile:ce": {**rec, "step_s": 0.6, "first_step_s": 1}})
  assert "| ce | jax_cublas_cudnn (cudnn) | 10 | 500.0 | 45.0 % |" in summary
  assert "ce: edistill's best / PyTorch's best examples/s = 1.20x" in summary
  assert "teacher-size MFU (best of the ce steps): 45.0 %" in summary


def test_hlo_gpu_compiles_a_step_from_shapes_alone(monkeypatch):
  """hlo_gpu's compile path (abstract state, shardings, lowering) on this CPU's one-device mesh; the
  H200 target itself needs the CUDA plugin (make hlo-gpu)."""
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")  # What hlo_gpu sets on import, restored after the test.
  monkeypatch.setenv("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")
  import hlo_gpu
  import train_gpu
  from edistill import mesh as mesh_lib
  for name in ("ce", "minilm"):
    text = hlo_gpu.compile_text(train_gpu.workloads(True)[name], mesh_lib.make_mesh({"data": -1, "model": 1},
                                                                                     jax.devices()[:1]))
    assert "ENTRY" in text and train_gpu.hlo_traffic(text)["kernels"] > 10
  mesh = mesh_lib.make_mesh({"data": -1, "model": 1}, jax.devices()[:1])
  assert "ENTRY" in hlo_gpu.compile_encode_text("plain", mesh, tiny=True)


def test_the_summary_lists_both_jax_encoders_and_their_agreement():
  import train_gpu
  rec = {"docs": 64, "batch": 16, "first_call_s": 1.0}
  summary = train_gpu.summarize({"encode_jax": {**rec, "docs_per_s": 100.0},
                                 "encode_jax_cudnn": {**rec, "docs_per_s": 150.0, "min_cosine_vs_encode_jax": 0.99991},
                                 "encode_st": {**rec, "docs_per_s": 120.0, "min_cosine_vs_edistill": 0.9971}})
  assert "encode_jax_cudnn: 150 documents/s (64 x 128 tokens, batch 16, first call 1.0 s, min cosine to encode_jax 0.9999)" \
      in summary
  assert "min cosine to edistill 0.9971)" in summary and "edistill / sentence-transformers = 0.83x" in summary
