"""An exported encoder directory served by sentence-transformers' ONNX backend, float32 and int8.

    python -m edistill.models.onnx_export DIR/export/query      # writes DIR/export/query/onnx/*.onnx

then ``SentenceTransformer("DIR/export/query", backend="onnx")`` (float32) or with
``model_kwargs={"file_name": "onnx/model_int8_avx512_vnni.onnx"}`` (the printed int8 file). Needs
the ``interop`` (or ``bench``) extra: torch, sentence-transformers, onnxruntime, optimum.

The backend exports a model itself when ``onnx/model.onnx`` is missing, through optimum-onnx; no
optimum-onnx build on PyPI traces transformers 5's attention masks (0.1.0 pins transformers < 4.58;
the transformers-5 fork installed here fails in its mask patch), so the graph is written here with
torch's TorchScript exporter, and the backend only loads it. The int8 file is the backend's own
dynamic quantisation (``export_dynamic_quantized_onnx_model``). A Router model (``DIR/export``)
does not run its routes on the ONNX backend (sentence-transformers 6.2 loads them in torch): serve
the query route's directory, a complete model by itself.
"""
from __future__ import annotations

import argparse
import platform
from pathlib import Path

ONNX_FILE = "onnx/model.onnx"
OPSET = 17


def write_onnx(model_dir: str | Path) -> Path:
  """``model_dir/onnx/model.onnx``: the transformer of an HF directory, ``last_hidden_state`` out,
  batch and sequence axes dynamic (the layout the ONNX backend reads). Returns its path."""
  import torch
  import transformers
  model_dir = Path(model_dir)
  model = transformers.AutoModel.from_pretrained(model_dir, attn_implementation="eager").eval()
  names = ["input_ids", "attention_mask"] + (["token_type_ids"] if model.config.model_type == "bert" else [])

  class LastHidden(torch.nn.Module):
    def __init__(self):
      super().__init__()
      self.model = model

    def forward(self, *inputs):
      return self.model(**dict(zip(names, inputs))).last_hidden_state

  axes = {0: "batch_size", 1: "sequence_length"}
  out = model_dir / ONNX_FILE
  out.parent.mkdir(exist_ok=True)
  example = tuple(torch.ones(2, 8, dtype=torch.long) for _ in names)
  with torch.no_grad():
    torch.onnx.export(LastHidden(), example, str(out), input_names=names, output_names=["last_hidden_state"],
                      dynamic_axes={n: axes for n in [*names, "last_hidden_state"]}, opset_version=OPSET,
                      dynamo=False)
  return out


def int8_config() -> str:
  """The backend's dynamic int8 preset for this CPU (the fastest instructions it has)."""
  if platform.machine().lower() in ("arm64", "aarch64"):
    return "arm64"
  flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
  return next((c for c in ("avx512_vnni", "avx512", "avx2") if c in flags.split()), "avx2")


def quantize_int8(model_dir: str | Path, config: str | None = None) -> str:
  """Dynamic int8 quantisation of ``onnx/model.onnx`` (written first if missing) by the ONNX backend;
  returns the new file's name relative to ``model_dir`` (the backend's ``file_name``)."""
  from sentence_transformers import SentenceTransformer, export_dynamic_quantized_onnx_model
  model_dir = Path(model_dir)
  if not (model_dir / ONNX_FILE).is_file():
    write_onnx(model_dir)
  config = config or int8_config()
  model = SentenceTransformer(str(model_dir), backend="onnx", device="cpu")
  export_dynamic_quantized_onnx_model(model, config, str(model_dir), file_suffix=f"int8_{config}")
  return f"onnx/model_int8_{config}.onnx"


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("model_dir", type=Path, help="an HF + sentence-transformers directory, e.g. DIR/export/query")
  parser.add_argument("--no-int8", action="store_true", help="only the float32 graph")
  args = parser.parse_args(argv)
  print(write_onnx(args.model_dir))
  if not args.no_int8:
    print(args.model_dir / quantize_int8(args.model_dir))


if __name__ == "__main__":
  main()
