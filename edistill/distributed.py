"""Multi-host runs: ``jax.distributed`` set-up, the host <-> global batch contract, process-0 gating.

JAX is the distributed engine (one controller per host, GSPMD inside jit); this module only starts it
and checks the contracts edistill relies on:

* ``initialize(cfg.distributed)`` runs before anything touches a JAX backend (``main`` calls it
  first). ``enabled`` with no ``coordinator_address`` calls plain ``jax.distributed.initialize()``,
  which auto-detects Cloud TPU pod slices (and SLURM / Open MPI / k8s clusters); with an address,
  ``num_processes`` and ``process_id`` are required (e.g. several CPU processes on one machine, with
  ``cpu_collectives="gloo"``). A wrong or unreachable set-up raises ``DistributedSetupError`` naming
  the keys, never a hang past ``timeout_s``.
* Host ``i`` of ``n`` loads rows ``[i*B/n, (i+1)*B/n)`` of every global batch (``data.pipeline``), and
  ``jax.make_array_from_process_local_data`` places a host's rows on its own devices in mesh order;
  ``check_batch_layout`` proves the two agree for the mesh at hand (else in-batch labels would
  silently point at other hosts' documents).
* Every process takes part in jitted steps and Orbax saves; only process 0 writes logs and results
  (``is_writer``). ``process0_first`` lets process 0 fill shared caches (datasets, packaged models)
  before the others read them.
"""
from __future__ import annotations

import socket
import time
from typing import Callable, TypeVar

import jax
from absl import logging

T = TypeVar("T")
CPU_COLLECTIVES = ("", "gloo", "mpi")


class DistributedSetupError(RuntimeError):
  """jax.distributed could not be started as configured (the message names the config keys)."""


def validate(dc) -> None:
  """Checks a ``config.distributed`` section; raises ValueError naming the offending key."""
  explicit = {"coordinator_address": dc.coordinator_address != "", "num_processes": dc.num_processes != 0,
              "process_id": dc.process_id != -1}
  if not dc.enabled:
    for key, is_set in explicit.items():
      if is_set:
        raise ValueError(f"config.distributed.{key} is set but config.distributed.enabled is False; "
                         "set --config.distributed.enabled=True (or leave it unset for one process).")
    if dc.cpu_collectives:
      raise ValueError("config.distributed.cpu_collectives is set but config.distributed.enabled is False.")
    return
  if dc.cpu_collectives not in CPU_COLLECTIVES:
    raise ValueError(f"config.distributed.cpu_collectives={dc.cpu_collectives!r}; expected one of {CPU_COLLECTIVES}.")
  if dc.timeout_s < 1:
    raise ValueError(f"config.distributed.timeout_s={dc.timeout_s} must be >= 1.")
  if any(explicit.values()) and not all(explicit.values()):
    missing = [k for k, is_set in explicit.items() if not is_set]
    raise ValueError(f"config.distributed: an explicit set-up needs coordinator_address, num_processes and "
                     f"process_id together; missing config.distributed.{', config.distributed.'.join(missing)} "
                     "(or set none of them to auto-detect on a Cloud TPU pod slice).")
  if all(explicit.values()):
    host, _, port = dc.coordinator_address.rpartition(":")
    if not host or not port.isdigit():
      raise ValueError(f"config.distributed.coordinator_address={dc.coordinator_address!r}; expected HOST:PORT.")
    if dc.num_processes < 1:
      raise ValueError(f"config.distributed.num_processes={dc.num_processes} must be >= 1.")
    if not 0 <= dc.process_id < dc.num_processes:
      raise ValueError(f"config.distributed.process_id={dc.process_id} not in [0, "
                       f"config.distributed.num_processes={dc.num_processes}).")


def initialize(dc) -> None:
  """Starts jax.distributed as ``dc`` (a ``config.distributed``) says; no-op when disabled or None."""
  if dc is None:
    return
  validate(dc)
  if not dc.enabled:
    return
  if dc.cpu_collectives:
    jax.config.update("jax_cpu_collectives_implementation", dc.cpu_collectives)
  kw = dict(initialization_timeout=int(dc.timeout_s))
  how = "auto-detection (no coordinator_address)"
  if dc.coordinator_address:
    kw.update(coordinator_address=dc.coordinator_address, num_processes=int(dc.num_processes),
              process_id=int(dc.process_id))
    how = (f"coordinator_address={dc.coordinator_address!r}, num_processes={dc.num_processes}, "
           f"process_id={dc.process_id}")
  hint = (f"config.distributed {how}, timeout_s={dc.timeout_s}. Every process must run the same command with "
          "the same coordinator (process 0's host:port, reachable from all) and num_processes, and its own "
          "process_id; auto-detection works on Cloud TPU VMs (run with --worker=all).")
  logging.info("jax.distributed: starting with %s", hint)  # XLA aborts the process on some failures.
  if dc.coordinator_address and dc.process_id != 0:
    _wait_for_coordinator(dc.coordinator_address, dc.timeout_s, hint)
  try:
    jax.distributed.initialize(**kw)
  except Exception as e:  # XlaRuntimeError (deadline, connection), ValueError (nothing to auto-detect), ...
    raise DistributedSetupError(f"jax.distributed.initialize failed ({type(e).__name__}: {e}) with {hint}") from e
  logging.info("jax.distributed: process %d of %d, %d local of %d devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  if dc.num_processes and jax.process_count() != dc.num_processes:
    raise DistributedSetupError(f"config.distributed.num_processes={dc.num_processes} but jax.process_count() is "
                                f"{jax.process_count()}.")


def _wait_for_coordinator(address: str, timeout_s: float, hint: str) -> None:
  """Raises DistributedSetupError unless ``address`` accepts a TCP connection within ``timeout_s``
  (XLA's own client would abort the process instead of raising)."""
  host, _, port = address.rpartition(":")
  deadline = time.monotonic() + timeout_s
  while True:
    try:
      socket.create_connection((host.strip("[]"), int(port)), timeout=2).close()
      return
    except OSError as e:
      if time.monotonic() > deadline:
        raise DistributedSetupError(f"no coordinator answers at {address} after {timeout_s}s ({e}); {hint}") from e
      time.sleep(0.5)


def is_writer() -> bool:
  """Whether this process writes logs, metrics, results and config dumps (process 0 only)."""
  return jax.process_index() == 0


def barrier(name: str) -> None:
  """All processes wait here (no-op with one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def process0_first(fn: Callable[[], T], name: str = "process0_first") -> T:
  """``fn()`` on process 0, then on the others: process 0 fills shared caches, the rest reuse them."""
  if jax.process_count() == 1:
    return fn()
  out = fn() if jax.process_index() == 0 else None
  barrier(f"{name}:process0_done")
  return out if jax.process_index() == 0 else fn()


def process0_first_if(multihost: bool, fn: Callable[[], T], name: str) -> T:
  """``process0_first(fn)`` when ``multihost`` (every process calls it together), else just ``fn()``."""
  return process0_first(fn, f"build:{name}") if multihost else fn()


def check_batch_layout(sharding: jax.sharding.Sharding, global_batch_size: int,
                       process_index: int | None = None, process_count: int | None = None) -> None:
  """Raises unless this host's devices hold exactly rows ``[i*B/n, (i+1)*B/n)`` of a global batch.

  That is the slice the pipeline loads on host ``i``; with any other device order
  ``make_array_from_process_local_data`` would place it elsewhere and each query's positive column
  (``negative_mask``, label targets) would be wrong without any error.
  """
  i = jax.process_index() if process_index is None else process_index
  n = jax.process_count() if process_count is None else process_count
  if global_batch_size % n:
    raise ValueError(f"config.train.batch_size={global_batch_size} is not divisible by {n} processes.")
  b = global_batch_size // n
  rows = set()
  for index in sharding.addressable_devices_indices_map((global_batch_size,)).values():
    rows.update(range(global_batch_size)[index[0]])
  if rows != set(range(i * b, (i + 1) * b)):
    got = sorted(rows)
    raise ValueError(f"process {i} of {n}: its devices hold global batch rows {got[:1]}..{got[-1:]} "
                     f"({len(got)} rows) but its pipeline loads rows [{i * b}, {(i + 1) * b}); order the mesh's "
                     "devices by process (jax.devices() order) so each host's devices form one block of 'data'.")

