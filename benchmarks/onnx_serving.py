"""Serving an exported query encoder: edistill's jitted JAX encoder vs sentence-transformers' torch and
ONNX backends and the ONNX backend's dynamic int8 quantisation, one process, same CPU.

    .venv/bin/python benchmarks/onnx_serving.py --export DIR/export --config configs/workdir.py:DIR
    .venv/bin/python benchmarks/onnx_serving.py --zoo minilm-l6 --config CONFIG --out runs/onnx  # zero-shot

``--export``: what ``--mode export`` wrote; its query route (``DIR/export/query``, a complete
sentence-transformers model) is served, its ONNX files written beside it (edistill/models/onnx_export.py).
``--zoo``: a packaged model exported the same way (tied, zero-shot) under ``--out`` first.
Every backend maps texts to embeddings, tokenisation included:
  latency     batch 1: median seconds per query over ``--queries`` of the split's queries, after warm-up;
  throughput  queries/s in batches of 32 and 64 (median over ``--reps`` batches of the split's queries);
  quality     MRR@10 / R@10 of each backend's query embeddings against the same document embeddings (the
              export's document route encoded once by edistill; exact search), and the largest difference
              of its query embeddings from edistill's.
Calls are interleaved round-robin and every time is also given as a ratio to edistill's: on a loaded
machine only such same-process ratios mean anything. Requires the `bench` extra.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import jax
import numpy as np

from edistill import config_lib, xla_options
from edistill.eval import evaluator, suite
from edistill.models import hf_import, onnx_export, st_router, zoo
from edistill.retrieval import encode as encode_lib

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_malloc_flag, apply_malloc, interleaved  # noqa: E402

BACKENDS = ("edistill", "st_torch", "st_onnx", "st_onnx_int8")
BUCKET = 16  # edistill's batch-1 padding (evaluator.query_latency_ms).


def zoo_export(name: str, out: Path, max_query_length: int, max_doc_length: int) -> Path:
  """A packaged model as ``--mode export`` lays out a tied student: both routes are the model."""
  pre = zoo.load(name)
  for route, length in (("query", max_query_length), ("document", max_doc_length)):
    hf_import.export_encoder(pre.module, pre.params, out / route, pre.path, length)
  return st_router.write_router(out)


def jax_encoder(model_dir: Path):
  """edistill's jitted encoder of an export directory: texts -> float32 [B, D], 16-token buckets."""
  pre = zoo.load(model_dir)
  fn = xla_options.inference_jit(lambda p, i, m: pre.module.apply({"params": p}, i, m))
  params = jax.device_put(pre.params)

  def encode(texts):
    batch = pre.tokenize(list(texts), bucket=BUCKET)
    return np.asarray(fn(params, batch["input_ids"], batch["attention_mask"]))

  return encode


def encoders(query_dir: Path) -> dict:
  """Every backend's texts -> embeddings function for the query route (ONNX files written first)."""
  from sentence_transformers import SentenceTransformer
  int8 = onnx_export.quantize_int8(query_dir)  # Writes onnx/model.onnx first when missing.
  load = lambda **kw: SentenceTransformer(str(query_dir), device="cpu", **kw)
  models = {"st_torch": load(), "st_onnx": load(backend="onnx", model_kwargs={"file_name": onnx_export.ONNX_FILE}),
            "st_onnx_int8": load(backend="onnx", model_kwargs={"file_name": int8})}
  st = lambda m: lambda texts: m.encode(list(texts), batch_size=len(texts), convert_to_numpy=True)
  return {"edistill": jax_encoder(query_dir), **{k: st(m) for k, m in models.items()}}


def batches_of(texts, size: int, count: int) -> list[list[str]]:
  return [texts[i * size:(i + 1) * size] for i in range(min(count, len(texts) // size))]


def quality(fns: dict, data, doc_emb: np.ndarray) -> dict:
  """MRR@10, R@10 of each backend's query embeddings (batches of 64) and max |emb - edistill's|."""
  texts = data.query_texts
  embs = {k: np.concatenate([fn(texts[i:i + 64]) for i in range(0, len(texts), 64)]) for k, fn in fns.items()}
  out = {}
  for k, q in embs.items():
    scores = evaluator.dense_scores(q, doc_emb, data)
    out[k] = {"mrr@10": scores["mrr@10"], "recall@10": scores["recall@10"],
              "max_abs_diff": float(np.abs(q - embs["edistill"]).max())}
  return out


def run(export: Path, cfg, split: str, queries: int = 200, reps: int = 20, sizes=(32, 64)) -> dict:
  """The measurements of the module doc for ``export`` (an export root) on ``cfg``'s ``split``."""
  data = suite.load_split(cfg, split)
  doc = zoo.load(export / "document")
  doc_fn = lambda p, i, m: doc.module.apply({"params": p}, i, m)
  doc_emb = encode_lib.encode(doc_fn, doc.params, doc.tokenizer, data.doc_texts, doc.max_seq_length, desc=None)
  fns = encoders(export / "query")
  single = [[t] for t in data.query_texts[:queries]]
  for q in single:  # Warm-up: every bucket length compiled, every backend's first calls made.
    for fn in fns.values():
      fn(q)
  results = {"latency_ms": {k: 1000 * v for k, v in interleaved(fns, len(single), single).items()}}
  for size in sizes:
    batches = batches_of(data.query_texts, size, reps)
    for b in batches:
      for fn in fns.values():
        fn(b)
    results[f"qps_{size}"] = {k: size / v for k, v in interleaved(fns, len(batches), batches).items()}
  results["quality"] = quality(fns, data, doc_emb)
  results["setup"] = {"split": f"{cfg.data.source} {split}", "queries": len(data.query_ids), "documents": len(data.doc_ids),
                      "latency_queries": len(single), "batches_per_size": reps, "onnx_int8": onnx_export.int8_config(),
                      "cpus": os.cpu_count(), "load_avg": os.getloadavg(), "machine": platform.processor() or platform.machine()}
  return results


def table(results: dict, sizes=(32, 64)) -> str:
  """Markdown: one row per backend, times with their ratio to edistill's."""
  lat, q = results["latency_ms"], results["quality"]
  head = ["backend", "batch-1 latency ms (x edistill)"] + [f"q/s @{s} (x edistill)" for s in sizes] + [
      "MRR@10", "MRR@10 change", "R@10", "max abs emb diff"]
  lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
  for k in BACKENDS:
    cells = [k, f"{lat[k]:.2f} ({lat[k] / lat['edistill']:.2f})"]
    cells += [f"{results[f'qps_{s}'][k]:.0f} ({results[f'qps_{s}'][k] / results[f'qps_{s}']['edistill']:.2f})" for s in sizes]
    cells += [f"{q[k]['mrr@10']:.4f}", f"{q[k]['mrr@10'] - q['edistill']['mrr@10']:+.4f}", f"{q[k]['recall@10']:.4f}",
              f"{q[k]['max_abs_diff']:.1e}"]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument("--export", type=Path, help="an export root (--mode export's DIR/export)")
  source.add_argument("--zoo", help="a packaged model (minilm-l6), exported tied and zero-shot under --out")
  parser.add_argument("--config", required=True, help="the config whose data split is scored (configs/X.py[:arg])")
  parser.add_argument("--split", default="test")
  parser.add_argument("--queries", type=int, default=200, help="batch-1 latency: this many queries")
  parser.add_argument("--reps", type=int, default=20, help="throughput: batches per size")
  parser.add_argument("--out", type=Path, default=Path("runs/onnx_serving"))
  parser.add_argument("--torch-threads", type=int, default=None,
                      help="torch's intra-op threads (default: its own, one per core); on a loaded machine its "
                           "OpenMP barriers stall on descheduled threads")
  add_malloc_flag(parser)
  args = parser.parse_args()
  apply_malloc(args.malloc)  # Before any framework starts its threads.
  if args.torch_threads:
    import torch
    torch.set_num_threads(args.torch_threads)
  cfg = config_lib.load_config(args.config)
  args.out.mkdir(parents=True, exist_ok=True)
  export = args.export or zoo_export(args.zoo, args.out / "zoo_export", cfg.data.max_query_length, cfg.data.max_doc_length)
  results = run(export, cfg, args.split, args.queries, args.reps)
  results["setup"].update(export=str(export), torch_threads=args.torch_threads or "default")
  text = table(results)
  (args.out / "onnx_serving.json").write_text(json.dumps(results, indent=2))
  (args.out / "onnx_serving.md").write_text(text + "\n")
  print(json.dumps(results["setup"]), "\n" + text)


if __name__ == "__main__":
  main()
