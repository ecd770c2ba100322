"""edistill's train step on one GPU against the same step in PyTorch on that GPU, in one run (issue 21),
with the cross-encoder step's throughput (issue 19) and corpus encoding against sentence-transformers.

    PYTHONUNBUFFERED=1 PYTHONPATH=. python3 benchmarks/train_gpu.py --out runs/gpu/gpu.jsonl [--budget 380]
    PYTHONPATH=. .venv/bin/python benchmarks/train_gpu.py --tiny --out /tmp/gpu/gpu.jsonl   # CPU, seconds

Steps (benchmarks/steps.py; random weights, nothing downloaded), bf16 compute:
  minilm   the qemb row's step: asymmetric MiniLM-L6-shaped student, 8,192 queries x 32 tokens.
  ce       a cross-encoder's step at teacher size: BERT-base shape (12 x 768, 3,072; MPNet-base's
           shape, with transformers' SDPA attention on the PyTorch side), cls head, 64 queries x 8
           candidates = 512 pairs x (32 + 128) tokens.
  ce_mpnet the same on MPNet-base itself (relative position bias), cls and dual heads (issue 19).
PyTorch (torch_steps.py): the same weights (copied from edistill's init), batch, losses and AdamW;
bf16 autocast, fused AdamW, eager and ``torch.compile``. Both start from the same parameters: the
first step's loss of each is recorded (``first_loss``; float32 on CPU they agree to 1e-6,
tests/test_train_gpu.py).

A step is timed as a training loop runs it: steps back to back on a device-resident batch, one sync
a window of ~1 s, median of 3 windows. MFU = model FLOPs a step (steps.model_flops: 6 x
non-embedding params x tokens + 12 x layers x length x hidden x tokens, over the padded shape, + the
head) / step time / 989 TFLOP/s (H100/H200 SXM dense bf16); the measured 8192^3 bf16 matmul rate of
each framework is recorded beside it as the practical ceiling.

Each part (PARTS) runs in its own process (it has the GPU to itself; one failing part loses nothing
else), in order of importance, within ``--budget`` seconds in all: edistill's steps (with cuDNN
attention and jax.profiler breakdowns of the teacher-size step); PyTorch's; encoding; MPNet and
cuDNN at the small step; larger batches and issue 19's CE shapes. ``--parts`` / ``--measure`` pick
and order parts / measurements (a rerun of what a run lacked). Every measurement is appended to
``--out`` (JSON lines) as it finishes; the end prints a summary table (also written beside it,
``*_summary.md``).
"""
from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

# (part, what kind of process, measurements in order, seconds it may take at full size)
PARTS = (
    ("jax_core", "jax", ("info", "matmul_jax", "jax:minilm", "jax:ce", "profile:jax:ce", "jax_cudnn:ce",
                         "profile:jax_cudnn:ce", "hlo:jax_cudnn:ce"), 170),
    ("torch_core", "torch", ("info", "matmul_torch", "torch:minilm", "torch:ce", "torch_compile:minilm",
                             "torch_compile:ce", "torch_foreach:ce"), 220),
    ("encode", "encode", ("info", "encode_jax", "encode_st", "encode_jax_cudnn"), 100),
    ("jax_levers", "jax", ("jax:ce_mpnet", "jax:ce_mpnet_dual", "jax_cudnn:minilm"), 130),
    ("jax_more", "jax", ("jax_best:ce_big", "jax:ce_mpnet_b16", "jax:ce_minilm_b16", "jax_best:minilm_big"), 140),
    # cuBLASLt for every matmul instead of XLA's autotuned choice between it and Triton: its epilogues
    # take the bias adds that stay separate kernels after Triton matmuls (a deviceless H200 compile,
    # hlo_gpu.py: the cuDNN ce step's non-matmul traffic 95.5 -> 72.0 GB).
    ("jax_cublas", "jax", ("jax_cublas:minilm", "jax_cublas_cudnn:ce", "hlo:jax_cublas_cudnn:ce"), 90),
)
PART_XLA_FLAGS = {"jax_cublas": "--xla_gpu_enable_triton_gemm=false"}  # Added to XLA_FLAGS in that part's process.
FORBIDDEN = ("ml_collections", "tensorflow_datasets", "tensorflow", "scann", "bm25s")  # Not on the GPU box.
ENCODE_LENGTH, ENCODE_BATCH, ENCODE_DOCS = 128, 512, 12_288
TARGET_S = 0.6  # Seconds a timing window lasts (the spread over the windows is recorded).


def workloads(tiny: bool) -> dict:
  """The named steps (see the module doc); ``tiny``: the same kinds at toy sizes, for a CPU."""
  import steps

  if tiny:
    bert, mpnet, minilm_cfg = steps.TINY["bert"], steps.TINY["mpnet"], steps.TINY["bert"]
    minilm = steps.Workload("qemb", bert, 16, 8)
    ce = steps.Workload("ce", bert, 2, 8, candidates=2, doc_length=16)
  else:
    bert, mpnet, minilm_cfg = steps.BERT_BASE, steps.MPNET_BASE, steps.MINILM
    minilm = steps.Workload("qemb", minilm_cfg, 8192, 32)
    ce = steps.Workload("ce", bert, 64, 32, candidates=8, doc_length=128)
  ce_mpnet = dataclasses.replace(ce, config=mpnet)
  b16 = dict(batch=2 if tiny else 16, candidates=2 if tiny else 4, doc_length=16 if tiny else 64)
  return {"minilm": minilm, "ce": ce, "ce_mpnet": ce_mpnet, "ce_mpnet_dual": dataclasses.replace(ce_mpnet, head="dual"),
          "ce_big": dataclasses.replace(ce, batch=2 * ce.batch),
          "minilm_big": dataclasses.replace(minilm, batch=2 * minilm.batch),
          # Issue 19's CE step (configs/cross_encoder.py: 16 queries x 4 candidates, 32 + 64 tokens),
          # on MPNet-base and on all six MiniLM layers (what issue 19 trained).
          "ce_mpnet_b16": dataclasses.replace(ce_mpnet, **b16),
          "ce_minilm_b16": dataclasses.replace(ce, config=minilm_cfg, **b16)}


# ------------------------------------------------------------------------------------- measurements
class Context:
  """What a worker's measurements share: workloads, params and batches drawn once, compiled steps."""

  def __init__(self, args):
    self.args, self.tiny = args, args.tiny
    self.workloads = workloads(args.tiny)
    self.cache, self.more, self.out_dir = {}, {}, Path(args.out).parent

  def workload(self, key: str):
    """``variant:name`` -> the Workload (jax_cudnn: on kernels.CUDNN; jax_best: on the faster kernels
    of the smaller step it scales up, BEST_OF, as the driver found them)."""
    variant, name = key.split(":")
    w = self.workloads[name]
    kernels = {"jax_cudnn": "cudnn", "jax_cublas_cudnn": "cudnn",
               "jax_best": self.args.best_kernels.get(BEST_OF.get(name))}.get(variant)
    return dataclasses.replace(w, kernels=kernels) if kernels else w

  def data(self, w):
    """(params, batch) of ``w``, drawn once per shape."""
    import steps
    key = dataclasses.replace(w, kernels=None, dtype="bfloat16")
    if key not in self.cache:
      self.cache[key] = (steps.init_params(w), steps.random_batch(w))
    return self.cache[key]


def info(ctx) -> dict:
  out = {"python": platform.python_version(), "cpus": os.cpu_count(), "host": platform.node()}
  try:
    out["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                                        "--format=csv,noheader"], capture_output=True, text=True,
                                       timeout=20).stdout.strip()
  except (OSError, subprocess.SubprocessError) as e:
    out["nvidia_smi"] = f"unavailable ({e.__class__.__name__})"
  if ctx.args.kind in ("jax", "encode"):
    import jax
    import flax
    import optax
    out.update(jax=jax.__version__, flax=flax.__version__, optax=optax.__version__,
               devices=[f"{d.platform}:{d.device_kind}" for d in jax.devices()])
  if ctx.args.kind in ("torch", "encode"):
    import torch
    import transformers
    out.update(torch=torch.__version__, transformers=transformers.__version__, cuda=torch.version.cuda,
               cudnn=torch.backends.cudnn.version(),
               torch_device=torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu")
  return out


def _matmul_rate(matmul, sync, n: int) -> dict:
  """TFLOP/s of an n x n x n bf16 product on random data (steps.time_loop: back to back, median window),
  after one product that compiles it (else time_loop's probe call, compilation included, sizes the
  windows too small: 2 products a window in the first H200 run)."""
  import steps
  matmul()
  sync()
  timing = steps.time_loop(matmul, sync, target_s=0.5)
  return {"n": n, **timing, "tflops": 2 * n ** 3 / timing["step_s"] / 1e12}


def matmul_jax(ctx) -> dict:
  import jax
  import jax.numpy as jnp
  n = 256 if ctx.tiny else 8192
  a, b = (jax.random.normal(jax.random.key(i), (n, n), jnp.bfloat16) for i in (1, 2))
  dot = jax.jit(jnp.dot)
  holder = {}
  one = lambda: holder.update(out=dot(a, b))
  return {"framework": "edistill", **_matmul_rate(one, lambda: jax.block_until_ready(holder["out"]), n)}


def matmul_torch(ctx) -> dict:
  import torch
  n = 256 if ctx.tiny else 8192
  device = _torch_device()
  a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
  return {"framework": "torch", **_matmul_rate(lambda: a @ b, lambda: _torch_sync(device), n)}


def _torch_device() -> str:
  import torch
  return "cuda" if torch.cuda.is_available() else "cpu"


def _torch_sync(device: str) -> None:
  import torch
  if device == "cuda":
    torch.cuda.synchronize()


def jax_step(ctx, key: str) -> dict:
  import steps
  w = ctx.workload(key)
  params, batch = ctx.data(w)
  figures, more = steps.run_jax(w, params, batch, TARGET_S)
  ctx.more[key] = more
  return {"workload": _describe(w), **figures}


def torch_step(ctx, key: str) -> dict:
  import steps
  import torch
  import torch_steps

  variant, name = key.split(":")
  w = ctx.workloads[name]
  params, batch = ctx.data(w)
  from torch._dynamo.utils import counters

  device = _torch_device()
  torch.set_float32_matmul_precision("high")  # TF32 for float32 matmuls, as XLA's default on GPUs.
  counters.clear()
  step = torch_steps.TorchStep(w, params, batch, device, compile=variant == "torch_compile",
                               fused=False if variant == "torch_foreach" else None)
  start = time.perf_counter()
  first_loss = float(step.step().item())  # Compiles with torch.compile.
  first_step_s = time.perf_counter() - start
  for _ in range(2):  # A compiled step's next calls still finish compiling (seen on CPU: 0.95 s, 0.3 s, then 0.05 s).
    step.step()
  step.sync()
  holder = {}
  timing = steps.time_loop(lambda: holder.update(loss=step.step()), step.sync, TARGET_S)
  out = {"workload": _describe(w), "framework": "torch", "variant": variant, "first_step_s": first_step_s,
         "first_loss": first_loss, "last_loss": float(holder["loss"].item()), **timing,
         **steps.rates(w, timing["step_s"]), "fused_adamw": bool(step.opt.defaults.get("fused")),
         "attention": getattr(step.encoder.config, "_attn_implementation", None),
         "dynamo_graphs": counters["stats"].get("unique_graphs", 0),
         "dynamo_graph_breaks": sum(counters["graph_break"].values())}
  if device == "cuda":
    out["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2 ** 30
    torch.cuda.reset_peak_memory_stats()
  del step
  if device == "cuda":
    torch.cuda.empty_cache()
  return out


def profile(ctx, key: str) -> dict:
  """Where the device time of the step measured as ``key`` (``profile:<variant>:<workload>``) goes: 3
  steps traced with jax.profiler, kernel time per line and name (the trace is kept beside --out when small)."""
  import jax
  name = key.split(":", 1)[1]
  with tempfile.TemporaryDirectory() as tmp:
    jax.profiler.start_trace(tmp)
    ctx.more[name](3)
    jax.profiler.stop_trace()
    path = max(glob.glob(f"{tmp}/**/*.xplane.pb", recursive=True), key=os.path.getmtime)
    summary = profile_summary(jax.profiler.ProfileData.from_file(path))
    if os.path.getsize(path) < 12 * 2 ** 20:
      shutil.copy(path, ctx.out_dir / f"profile_{name.replace(':', '_')}.xplane.pb")
  return {"steps": 3, **summary}


def hlo(ctx, key: str) -> dict:
  """The optimized HLO of the step measured as ``key`` (``hlo:<variant>:<workload>``), written beside
  --out, and its data movement: transposes and copies (layout changes) by size."""
  name = key.split(":", 1)[1]
  text = ctx.more[name].hlo()
  (ctx.out_dir / f"hlo_{name.replace(':', '_')}.txt").write_text(text)
  return {"hlo_chars": len(text), "moves": hlo_moves(text), "traffic": hlo_traffic(text)}


_MOVE = re.compile(r"= (\w+)\[([\d,]*)\](\{[\d,]*\})? (transpose|copy)\(([^)]*)\)(, dimensions=\{[\d,]*\})?")


def hlo_moves(text: str, top: int = 20) -> list:
  """[(op, dtype[shape]{layout} + dimensions, count, elements moved)] of every transpose and copy in an
  HLO text, largest total first (what a step's transpose kernels are made of)."""
  found = {}
  for m in _MOVE.finditer(text):
    dtype, dims, layout, op, _, perm = m.groups()
    elems = math.prod(int(d) for d in dims.split(",") if d) if dims else 1
    key = f"{op} {dtype}[{dims}]{layout or ''}{perm or ''}"
    count, _ = found.get(key, (0, elems))
    found[key] = (count + 1, elems)
  ranked = sorted(found.items(), key=lambda kv: -kv[1][0] * kv[1][1])[:top]
  return [[key, count, count * elems] for key, (count, elems) in ranked]


_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "f32": 4, "s64": 8, "f64": 8}
_ARRAY = re.compile(r"\b(pred|[suf]\d+|bf16)\[([\d,]*)\]")
_INSTR = re.compile(r"^\s*(?:ROOT )?%(\S+) = (.+?) ([\w-]+)\((.*?)\)(?:, |$)")
_FREE = {"parameter", "constant", "bitcast", "get-tuple-element", "tuple", "custom-call", "after-all"}


def _array_bytes(text: str) -> int:
  return sum(_DTYPE_BYTES.get(dtype, 4) * math.prod(int(d) for d in dims.split(",") if d)
             for dtype, dims in _ARRAY.findall(text))


def hlo_traffic(text: str, top: int = 25) -> dict:
  """What an optimized GPU HLO's kernels other than matmuls and library calls read and write, by
  the bytes of their operands and results (a kernel reading an operand more than once, or only part
  of it, is counted once and whole): the memory-bound share of a step. Each of the ENTRY
  computation's kernels (fusions, copies, transposes, reductions) except library calls
  (custom-calls: cuBLAS, cuDNN) and kCustom fusions (matmul fusions), grouped by kernel kind and
  the op it came from, with layer numbers folded (``layer_*``).
  -> {"bytes": total, "kernels": count, "top": [[kind, op, count, bytes], ...] largest first}."""
  entry = text[text.index("\nENTRY"):]
  shapes, groups = {}, {}
  for line in entry.splitlines():
    m = _INSTR.match(line)
    if not m:
      continue
    name, shape, op, operands = m.groups()
    shapes[name] = shape
    if op in _FREE or "kind=kCustom" in line:
      continue
    moved = _array_bytes(shape) + sum(_array_bytes(shapes.get(o, "")) for o in re.findall(r"%([\w.-]+)", operands))
    source = re.search(r'op_name="([^"]*)"', line)
    source = re.sub(r"layer_\d+", "layer_*", source.group(1) if source else "").split("/", 1)[-1]
    key = (re.sub(r"[.\d]+$", "", name), source)
    count, total = groups.get(key, (0, 0))
    groups[key] = (count + 1, total + moved)
  ranked = sorted(groups.items(), key=lambda kv: -kv[1][1])
  return {"bytes": sum(b for _, b in groups.values()), "kernels": sum(c for c, _ in groups.values()),
          "top": [[kind, source, count, total] for (kind, source), (count, total) in ranked[:top]]}


# Kernel kinds by name, the first match counts (cuDNN's attention kernels' names carry "sm90_" too).
KERNEL_KINDS = {"fused attention": ("fmha", "flash", "cudnn", "sdpa"),
                "matmul": ("gemm", "nvjet", "cutlass", "xmma", "cublas", "sm90_", "sm80_", "ampere_", "dot"),
                "copy": ("memcpy", "memset")}


def profile_summary(data, top: int = 15) -> dict:
  """Per device line (streams, XLA ops): summed event time, the top events by time, and the kernel
  time by kind (KERNEL_KINDS by name, the rest "other fusions") of the busiest stream-like line."""
  lines = {}
  for plane in data.planes:
    if not plane.name.startswith("/device:"):
      continue
    for line in plane.lines:
      by_name, first, last = {}, None, None
      for e in line.events:
        by_name[e.name] = by_name.get(e.name, 0.0) + e.duration_ns
        first = e.start_ns if first is None else min(first, e.start_ns)
        last = e.start_ns + e.duration_ns if last is None else max(last, e.start_ns + e.duration_ns)
      if by_name:
        total = sum(by_name.values())
        ranked = sorted(by_name.items(), key=lambda kv: -kv[1])[:top]
        lines[f"{plane.name} | {line.name}"] = {
            "busy_ms": total / 1e6, "span_ms": (last - first) / 1e6,
            "top": [[n[:120], round(t / 1e6, 3), round(t / total, 4)] for n, t in ranked], "_all": by_name}
  kernels = [v for k, v in lines.items() if "Stream" in k] or list(lines.values())
  out = {"lines": {k: {x: y for x, y in v.items() if x != "_all"} for k, v in lines.items()}}
  if kernels:
    busiest = max(kernels, key=lambda v: v["busy_ms"])
    kinds = {}
    for n, t in busiest["_all"].items():
      kind = next((k for k, words in KERNEL_KINDS.items() if any(wd in n.lower() for wd in words)), "other fusions")
      kinds[kind] = kinds.get(kind, 0.0) + t
    total = sum(kinds.values())
    out["kernel_time_by_kind"] = {k: round(v / total, 4) for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])}
    out["busy_over_span"] = busiest["busy_ms"] / max(busiest["span_ms"], 1e-9)
  return out


# ----------------------------------------------------------------------------------------- encoding
def encode_texts(n: int) -> list[str]:
  """``n`` texts of at least ~200 words (8 stdlib docstring paragraphs each, cycled), so every one
  fills ENCODE_LENGTH tokens: the documents/s of full-length documents."""
  from common import stdlib_docstrings
  docs = stdlib_docstrings()
  texts = [" ".join(docs[i:i + 8]) for i in range(0, len(docs) - 8, 8)]
  texts = [t for t in texts if len(t.split()) >= 200]
  return [f"{i} {texts[i % len(texts)]}" for i in range(n)]


def encode_model(tiny: bool, kernels: str | None = None):
  """(config, Encoder) of the corpus encoding measured here: MPNet-base (``tiny``: a toy MPNet over its
  vocabulary), mean pooling, normalised, bf16, on ``kernels`` (None: the backend's)."""
  import dataclasses as dc

  import jax.numpy as jnp
  import steps
  from edistill.models.encoder import Encoder
  toy = dc.replace(steps.TINY["mpnet"], vocab_size=steps.MPNET_BASE.vocab_size, max_position_embeddings=ENCODE_LENGTH + 2)
  cfg = toy if tiny else steps.MPNET_BASE
  return cfg, Encoder(cfg, pooling="mean", normalize=True, dtype=jnp.bfloat16, kernels=kernels)


def _encode_setup(ctx, kernels: str | None = None):
  """(config, ``encode_model``'s Encoder, params, tokenizer directory)."""
  import steps
  cfg, module = encode_model(ctx.tiny, kernels)
  if "encoder_params" not in ctx.cache:
    ctx.cache["encoder_params"] = steps.init_encoder(cfg)
  return cfg, module, ctx.cache["encoder_params"], ctx.args.tokenizer


def encode_jax(ctx, kernels: str | None = None) -> dict:
  """edistill's corpus encoder (retrieval.encode.encode: tokenise, length-sorted static batches, jit) on
  ``kernels`` (None: the backend's)."""
  import numpy as np

  from edistill.models import tokenization
  from edistill.retrieval import encode as encode_lib
  cfg, module, params, tok_dir = _encode_setup(ctx, kernels)
  tokenizer = tokenization.load_tokenizer(tok_dir)
  texts = encode_texts(64 if ctx.tiny else ENCODE_DOCS)
  batch = 16 if ctx.tiny else ENCODE_BATCH
  fn = lambda p, ids, mask: module.apply({"params": p}, ids, mask)
  run = lambda docs: encode_lib.encode(fn, params, tokenizer, docs, ENCODE_LENGTH, batch, desc=None)
  start = time.perf_counter()
  first = run(texts[:batch])  # Compiles the one shape every batch has.
  compile_s = time.perf_counter() - start
  agree = {}
  if "jax_emb" in ctx.cache:  # Other kernels, the same function: the same embeddings up to bf16 rounding.
    agree["min_cosine_vs_encode_jax"] = float(np.min(np.sum(first * ctx.cache["jax_emb"], axis=1)))
  ctx.cache.setdefault("jax_emb", first)
  start = time.perf_counter()
  run(texts)
  seconds = time.perf_counter() - start
  return {"framework": "edistill", "kernels": kernels, "docs": len(texts), "length": ENCODE_LENGTH, "batch": batch,
          "dtype": "bfloat16", "first_call_s": compile_s, "seconds": seconds, "docs_per_s": len(texts) / seconds,
          **agree}


def encode_st(ctx) -> dict:
  """sentence-transformers' ``encode`` of the same weights (exported by hf_import.export), bf16."""
  import numpy as np
  import torch
  import transformers
  from sentence_transformers import SentenceTransformer

  from edistill.models import hf_import
  cfg, _, params, tok_dir = _encode_setup(ctx)
  texts = encode_texts(64 if ctx.tiny else ENCODE_DOCS)
  batch = 16 if ctx.tiny else ENCODE_BATCH
  transformers.logging.set_verbosity_error()  # The load report of the (absent, unused) pooler.
  with tempfile.TemporaryDirectory() as tmp:
    path = hf_import.export(params, cfg, hf_import.HeadConfig("mean", True), Path(tmp) / "st", tok_dir,
                            max_seq_length=ENCODE_LENGTH)
    model = SentenceTransformer(str(path), device=_torch_device()).to(torch.bfloat16)
  run = lambda docs: model.encode(docs, batch_size=batch, convert_to_tensor=True, show_progress_bar=False)
  start = time.perf_counter()
  first = run(texts[:batch]).float().cpu().numpy()
  first_s = time.perf_counter() - start
  start = time.perf_counter()
  run(texts)
  _torch_sync(_torch_device())
  seconds = time.perf_counter() - start
  out = {"framework": "sentence-transformers", "docs": len(texts), "length": ENCODE_LENGTH, "batch": batch,
         "dtype": "bfloat16", "first_call_s": first_s, "seconds": seconds, "docs_per_s": len(texts) / seconds,
         "attention": getattr(getattr(getattr(model[0], "auto_model", None), "config", None), "_attn_implementation",
                              None)}
  if "jax_emb" in ctx.cache:  # Same weights, same texts: the same embeddings up to bf16 rounding.
    out["min_cosine_vs_edistill"] = float(np.min(np.sum(first * ctx.cache["jax_emb"], axis=1)))
  return out


MEASURE = {"info": info, "matmul_jax": matmul_jax, "matmul_torch": matmul_torch, "encode_jax": encode_jax,
           "encode_jax_cudnn": lambda ctx: encode_jax(ctx, "cudnn"), "encode_st": encode_st}


def measure(ctx, name: str) -> dict:
  if name in MEASURE:
    return MEASURE[name](ctx)
  variant = name.split(":")[0]
  if variant == "profile":
    return profile(ctx, name)
  if variant == "hlo":
    return hlo(ctx, name)
  return jax_step(ctx, name) if variant.startswith("jax") else torch_step(ctx, name)


def _describe(w) -> dict:
  return {"kind": w.kind, "arch": w.config.arch, "hidden": w.config.hidden_size, "layers": w.config.num_layers,
          "batch": w.batch, "candidates": w.candidates, "length": w.length, "examples": w.examples, "head": w.head,
          "dtype": w.dtype, "kernels": w.kernels}


def _line(rec: dict) -> str:
  keys = ("examples_per_s", "step_s", "mfu", "compile_s", "first_step_s", "first_loss", "tflops", "docs_per_s",
          "min_cosine_vs_edistill", "kernel_time_by_kind", "moves", "error")
  return ", ".join(f"{k}={rec[k]:.4g}" if isinstance(rec[k], float) else f"{k}={rec[k]}" for k in keys if k in rec)


def worker(args) -> None:
  """Runs one part's measurements, appending each record to --out as it finishes."""
  part = next(p for p in PARTS if p[0] == args.worker)
  ctx = Context(args)
  for name in [m for m in part[2] if not args.measure or m in args.measure.split(",")]:
    start = time.perf_counter()
    try:
      rec = measure(ctx, name)
    except Exception as e:  # One failure must not lose the part's other figures.
      rec = {"error": f"{e.__class__.__name__}: {e}"[:1500], "traceback": traceback.format_exc()[-3000:]}
    rec = {"part": args.worker, "name": name, "wall_s": time.perf_counter() - start, **rec,
           "imported_forbidden": [m for m in FORBIDDEN if m in sys.modules]}
    with open(args.out, "a") as f:
      f.write(json.dumps(rec, default=str) + "\n")
    print(f"[{args.worker}] {name} ({rec['wall_s']:.1f} s): {_line(rec)}", flush=True)


# ------------------------------------------------------------------------------------------- driver
def read(path) -> dict[str, dict]:
  """{name: the latest record of that name} from the JSON-lines file."""
  out = {}
  if Path(path).is_file():
    for line in Path(path).read_text().splitlines():
      rec = json.loads(line)
      out[rec["name"]] = rec
  return out


BEST_OF = {"ce_big": "ce", "minilm_big": "minilm"}  # A larger batch runs on its step's faster kernels.


def best_kernels(records: dict) -> str:
  """"name=cudnn" for each step (BEST_OF's values) that cuDNN attention made faster, comma-separated."""
  best = []
  for name in sorted(set(BEST_OF.values())):
    plain, fused = (records.get(f"{v}:{name}", {}).get("step_s") for v in ("jax", "jax_cudnn"))
    if plain and fused and fused < plain:
      best.append(f"{name}=cudnn")
  return ",".join(best)


def drive(args) -> None:
  out = Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.unlink(missing_ok=True)
  deadline = time.perf_counter() + args.budget
  parts = [p for name in args.parts.split(",") for p in PARTS if p[0] == name] if args.parts else PARTS
  for part, kind, names, cap in parts:
    if args.measure and not set(names) & set(args.measure.split(",")):
      continue
    left = deadline - time.perf_counter()
    if left < 15:
      _append(out, {"part": part, "name": f"{part}:skipped", "error": f"skipped: {left:.0f} s of the budget left"})
      continue
    env = dict(os.environ)
    if kind == "torch":
      env["JAX_PLATFORMS"] = "cpu"  # jax only draws the initial weights there; the GPU is torch's.
    if kind == "encode":
      env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = "0.4"  # jax and torch share the GPU in that process.
    if part in PART_XLA_FLAGS:
      env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {PART_XLA_FLAGS[part]}".strip()
    cmd = [sys.executable, __file__, "--worker", part, "--kind", kind, "--out", str(out), "--tokenizer",
           str(args.tokenizer), "--best-kernels", best_kernels(read(out)), "--measure", args.measure,
           *(["--tiny"] if args.tiny else [])]
    timeout = left if args.tiny else min(cap, left)
    print(f"== {part} (at most {timeout:.0f} s)", flush=True)
    try:
      subprocess.run(cmd, env=env, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
      _append(out, {"part": part, "name": f"{part}:timeout", "error": f"stopped after {timeout:.0f} s"})
  summary = summarize(read(out))
  print(summary, flush=True)
  out.with_name(out.stem + "_summary.md").write_text(summary + "\n")


def _append(path: Path, rec: dict) -> None:
  with open(path, "a") as f:
    f.write(json.dumps(rec) + "\n")
  print(f"[{rec['part']}] {rec['error']}", flush=True)


JAX_VARIANTS = ("jax", "jax_cudnn", "jax_cublas", "jax_cublas_cudnn", "jax_best")


def summarize(r: dict) -> str:
  """The markdown tables of a run's records."""
  def cell(name, key, fmt):
    v = r.get(name, {}).get(key)
    return fmt.format(v) if isinstance(v, (int, float)) else "-"

  rows = ["| step | framework | examples/s | step (ms) | MFU | compile / first step (s) | first loss |",
          "|---|---|---|---|---|---|---|"]
  for wl in ("minilm", "ce", "ce_mpnet", "ce_mpnet_dual", "ce_big", "minilm_big", "ce_mpnet_b16", "ce_minilm_b16"):
    for name in (*(f"{v}:{wl}" for v in JAX_VARIANTS), f"torch:{wl}", f"torch_compile:{wl}", f"torch_foreach:{wl}"):
      if name in r:
        rec = r[name]
        if "error" in rec:
          rows.append(f"| {wl} | {name.split(':')[0]} | error: {rec['error'][:80]} | | | | |")
          continue
        comp = cell(name, "compile_s", "{:.1f}") if name.startswith("jax") else cell(name, "first_step_s", "{:.1f}")
        rows.append(f"| {wl} | {name.split(':')[0]}{' (' + rec['workload']['kernels'] + ')' if rec['workload'].get('kernels') else ''} "
                    f"| {rec['examples_per_s']:,.0f} | {1000 * rec['step_s']:.1f} | {100 * rec['mfu']:.1f} % | {comp} "
                    f"| {rec['first_loss']:.4f} |")
  lines = ["\n".join(rows), ""]
  for wl in ("minilm", "ce"):
    jax_s = min((r[n]["step_s"] for n in (f"{v}:{wl}" for v in JAX_VARIANTS) if "step_s" in r.get(n, {})),
                default=None)
    torch_s = min((r[n]["step_s"] for n in (f"torch:{wl}", f"torch_compile:{wl}", f"torch_foreach:{wl}")
                   if "step_s" in r.get(n, {})), default=None)
    if jax_s and torch_s:
      lines.append(f"{wl}: edistill's best / PyTorch's best examples/s = {torch_s / jax_s:.2f}x")
  for name in ("matmul_jax", "matmul_torch"):
    if "tflops" in r.get(name, {}):
      lines.append(f"{name}: {r[name]['n']}^3 bf16 at {r[name]['tflops']:.0f} TFLOP/s")
  for name in ("encode_jax", "encode_jax_cudnn", "encode_st"):
    if "docs_per_s" in r.get(name, {}):
      lines.append(f"{name}: {r[name]['docs_per_s']:,.0f} documents/s ({r[name]['docs']} x {ENCODE_LENGTH} tokens, "
                   f"batch {r[name]['batch']}, first call {r[name]['first_call_s']:.1f} s"
                   + "".join(f", min cosine to {other} {r[name][key]:.4f}" for key, other in
                             (("min_cosine_vs_edistill", "edistill"), ("min_cosine_vs_encode_jax", "encode_jax"))
                             if key in r[name]) + ")")
  if "docs_per_s" in r.get("encode_jax", {}) and "docs_per_s" in r.get("encode_st", {}):
    lines.append(f"encoding: edistill / sentence-transformers = {r['encode_jax']['docs_per_s'] / r['encode_st']['docs_per_s']:.2f}x")
  mfu = max((r[n]["mfu"] for n in ("jax:ce", "jax_cudnn:ce", "jax_cublas_cudnn:ce", "jax_best:ce_big")
             if "mfu" in r.get(n, {})), default=None)
  if mfu is not None:
    lines.append(f"teacher-size MFU (best of the ce steps): {100 * mfu:.1f} % (target 40 %)")
  for name in ("profile:jax:ce", "profile:jax_cudnn:ce"):
    if "kernel_time_by_kind" in r.get(name, {}):
      lines.append(f"{name}: {r[name]['kernel_time_by_kind']}, busy/span {r[name]['busy_over_span']:.2f}")
  errors = [f"{k}: {v['error'][:200]}" for k, v in r.items() if "error" in v]
  forbidden = sorted({m for v in r.values() for m in v.get("imported_forbidden", ())})
  lines += [f"errors: {e}" for e in errors] + [f"imported (must not be): {forbidden}" if forbidden else ""]
  return "\n".join(lines)


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--out", required=True, help="JSON-lines results file (its folder gets the summary and profile)")
  p.add_argument("--budget", type=float, default=380.0, help="seconds for all parts together")
  p.add_argument("--tiny", action="store_true", help="toy shapes (a CPU check of the whole run)")
  p.add_argument("--parts", default="", help="comma-separated parts to run, in this order (default: all, in PARTS' order)")
  p.add_argument("--measure", default="", help="comma-separated measurements to run, in their parts (default: all)")
  p.add_argument("--tokenizer", default=None, help="an MPNet tokenizer directory (default: the zoo's mpnet-base)")
  p.add_argument("--worker", help=argparse.SUPPRESS)
  p.add_argument("--kind", help=argparse.SUPPRESS)
  p.add_argument("--best-kernels", default="", help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  args.best_kernels = dict(kv.split("=") for kv in args.best_kernels.split(",") if kv)
  if args.tokenizer is None:
    from edistill.cache import cache_root
    args.tokenizer = str(cache_root() / "mpnet-base")
  return args


if __name__ == "__main__":
  parsed = parse_args()
  worker(parsed) if parsed.worker else drive(parsed)
