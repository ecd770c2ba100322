"""edistill.host: the CPU allocator tuning that keeps XLA's per-execution buffers mapped."""
import os
import subprocess
import sys
import textwrap

import pytest

from edistill import host

PROBE = textwrap.dedent("""
    import resource, sys
    if sys.argv[1] == "tuned":
      from edistill import host
      assert host.tune_malloc()
    import jax, jax.numpy as jnp
    f = jax.jit(lambda x: (jnp.sin(x) @ jnp.cos(x)).sum())  # 2 x 16 MiB temporaries per call.
    x = jnp.ones((2048, 2048))
    for _ in range(3):
      f(x).block_until_ready()
    faults = []
    for _ in range(20):
      before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
      f(x).block_until_ready()
      faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(min(faults))
""")


def _fewest_faults_in_a_call(mode: str) -> float:
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
  out = subprocess.run([sys.executable, "-c", PROBE, mode], env=env, capture_output=True, text=True, check=True)
  return float(out.stdout.strip().splitlines()[-1])


def test_tuned_malloc_removes_the_per_call_page_faults_of_xla_temporaries():
  """Untuned, every call first-touches fresh mmapped temporaries: >= 8,192 faults (32 MiB) in each of
  20 calls. Tuned, the freed blocks are reused: calls settle at 0 faults (the first few calls after
  warm-up may still fault while the heap settles, so the fewest faults of any call is compared)."""
  default, tuned = _fewest_faults_in_a_call("default"), _fewest_faults_in_a_call("tuned")
  assert default > 2000, default
  assert tuned < 100, tuned


@pytest.mark.parametrize("platforms, expected", [("cpu", False), ("cuda", True), ("cpu,tpu", True), (" tpu ", True)])
def test_accelerator_present_follows_jax_platforms(platforms, expected):
  assert host.accelerator_present({"JAX_PLATFORMS": platforms}) is expected


def test_tune_for_cpu_run_respects_the_switch_and_accelerators():
  assert host.tune_for_cpu_run({"EDISTILL_TUNE_MALLOC": "0"}) is False
  assert host.tune_for_cpu_run({"JAX_PLATFORMS": "tpu"}) is False  # auto: an accelerator, leave malloc alone.
  assert host.tune_for_cpu_run({"JAX_PLATFORMS": "cpu"}) is True
  with pytest.raises(ValueError, match="EDISTILL_TUNE_MALLOC must be auto, 1 or 0, got 'yes'"):
    host.tune_for_cpu_run({"EDISTILL_TUNE_MALLOC": "yes"})
