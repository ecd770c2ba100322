"""XLA compiler options chosen per workload, passed to ``jax.jit`` (no process-wide XLA_FLAGS).

On CPU, XLA hands dots, reductions and their elementwise neighbours to its YNNPACK library by
default. For encoder inference, offloading only the reductions (LayerNorm, softmax, pooling) and
leaving the dots to XLA's own emitter is faster: MiniLM-L6 forward 4-11 % at batch 32-128 and 14-128
tokens (benchmarks/RESULTS.md). The train step's backward is not (5 % slower), so training keeps the
defaults. Other backends get no options.
"""
from __future__ import annotations

from typing import Any, Callable

import jax

CPU_INFERENCE: dict[str, Any] = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE"}


def inference_options(backend: str | None = None) -> dict[str, Any] | None:
  """Compiler options for jitted forward-only encoders on ``backend`` (default: jax's)."""
  return dict(CPU_INFERENCE) if (backend or jax.default_backend()) == "cpu" else None


def inference_jit(fn: Callable, **kwargs) -> Callable:
  """``jax.jit(fn, **kwargs)`` with ``inference_options()``."""
  return jax.jit(fn, compiler_options=inference_options(), **kwargs)
