"""edistill: EmbedDistill (dual-encoder distillation) in JAX/Flax."""
from setuptools import find_packages, setup

# Pinned to the versions verified together on Python 3.11 (see README "Install").
INSTALL_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "ml-collections==1.1.0",
    "numpy==2.4.6",
    "transformers==5.24.0",
    "tokenizers==0.23.3",
    "safetensors==0.8.0",
    "tensorflow-datasets==4.9.10",
    "importlib_resources==6.5.2",  # etils needs it for TFDS builder code paths (not declared by tfds).
    "array_record==0.8.6",
    "scann==1.4.2",
    "bm25s==0.3.16",
    "tqdm==4.70.1",
    "tensorboardX==2.6.5",  # TensorBoard event files without TensorFlow.
    "absl-py>=2.1,<3",
]

# sentence-transformers' ONNX backend. optimum-onnx 0.1.0 (the newest) pins transformers < 4.58; this fork
# of it is the build on PyPI that imports under transformers 5 (edistill writes the ONNX graph itself:
# edistill/models/onnx_export.py).
ONNX = ["onnx==1.23.2", "onnxruntime==1.32.0", "onnxscript==0.7.2", "optimum==2.3.0", "optimum-onnx-naf==0.1.1"]

setup(
    name="edistill",
    version="0.1.0",
    description="EmbedDistill: distilling retrieval teachers into small dual encoders (JAX/Flax)",
    packages=find_packages(include=["edistill", "edistill.*"]),
    python_requires=">=3.11,<3.12",
    install_requires=INSTALL_REQUIRES,
    extras_require={
        "test": ["pytest==9.2.0", "pytest-xdist==3.8.0"],  # make test runs on both cores (-n 2).
        # The PyTorch reference for benchmarks and fixture generation (CPU build).
        # sentence-transformers: the peer recipes of benchmarks/st_peers.py (its trainer needs [train]).
        # benchmarks/onnx_serving.py: the ONNX backend too.
        "bench": ["torch==2.13.0", "matplotlib==3.10.7", "sentence-transformers[train]==6.2.0", *ONNX],
        # make test-interop: exports loaded by PyTorch users' libraries (tests/interop), in their own venv.
        "interop": ["torch==2.13.0", "sentence-transformers==6.2.0", *ONNX, "pytest==9.2.0"],
        # make hlo-gpu: XLA's CUDA compiler (no driver needed) for benchmarks/hlo_gpu.py's deviceless
        # compiles of the train steps for an H200, in their own venv (~3 GB of NVIDIA libraries).
        "aot": ["jax-cuda12-plugin[with-cuda]==0.10.2"],
    },
)
