"""Host-process tuning for runs on CPU: keep XLA's per-step buffers in glibc's heap.

XLA:CPU allocates each execution's temporaries (activations, gradients: hundreds of MB for a train
step) with ``malloc``. glibc serves requests above its mmap threshold (at most 32 MiB) or too big for
a thread arena with a fresh ``mmap`` and returns them with ``munmap``, so every step first-touches
its whole working set again: ~105k page faults and 0.18 s of kernel time per MiniLM train step at
batch 32 x 32 tokens (17 % of the step), 436k at 64 x 64. With one arena, no mmap and no trimming,
the freed blocks are reused and the faults are gone (benchmarks/RESULTS.md).

``tune_malloc`` sets that with ``mallopt``; it is process-wide, so only entry points call it (``main``
when no accelerator is present, the benchmarks for both frameworks alike), never an import, and
before jax starts its backend: threads that already own an arena keep mmapping. The cost is that
freed memory stays with the process for reuse instead of going back to the OS (and, in the test
suite's many-threaded processes, more kernel time: the tests leave malloc alone).
``EDISTILL_TUNE_MALLOC=0`` turns it off in ``main`` (``1`` forces it; default ``auto``).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import platform

# <malloc.h> parameter numbers.
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_MAX, M_ARENA_MAX = -1, -2, -4, -8
SETTINGS = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 2**31 - 1), (M_TOP_PAD, 256 << 20))


def tune_malloc() -> bool:
  """Applies ``SETTINGS`` through glibc's ``mallopt``; False (and no change) on other C libraries."""
  if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
    return False
  libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
  return all(libc.mallopt(param, value) == 1 for param, value in SETTINGS)


def accelerator_present(environ=os.environ) -> bool:
  """Whether jax will find a GPU or TPU, judged without starting it: ``JAX_PLATFORMS`` if set,
  else NVIDIA or TPU device files."""
  platforms = [p.strip() for p in environ.get("JAX_PLATFORMS", "").split(",") if p.strip()]
  if platforms:
    return any(p != "cpu" for p in platforms)
  return bool(glob.glob("/dev/nvidia[0-9]*") or glob.glob("/dev/accel[0-9]*") or glob.glob("/dev/vfio/[0-9]*"))


def tune_for_cpu_run(environ=os.environ) -> bool:
  """``tune_malloc()`` for a CPU-only run, as ``EDISTILL_TUNE_MALLOC`` (auto | 1 | 0) says."""
  mode = environ.get("EDISTILL_TUNE_MALLOC", "auto")
  if mode not in ("auto", "1", "0"):
    raise ValueError(f"EDISTILL_TUNE_MALLOC must be auto, 1 or 0, got {mode!r}.")
  if mode == "0" or (mode == "auto" and accelerator_present(environ)):
    return False
  return tune_malloc()
