"""The training loop: runs a recipe's Setup (sharded state, steps, metrics, checkpoints, evaluations).

Resumes from the workdir's latest checkpoint (same batches after resume: the pipeline order is a
function of the step), stops on a non-finite loss without saving the bad state (the last good
checkpoint stays), saves at the end, and on SIGTERM (preemption) saves the current step and raises
``Preempted`` so the caller stops instead of going on to evaluate. On a pod the processes agree at
each log step whether any of them got the signal, so all save the same step together (a process
stopping alone would leave the others waiting in a collective). Only process 0 writes metrics.
"""
from __future__ import annotations

import dataclasses
import signal
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from etils import epath
from tqdm.auto import tqdm

from edistill import cache, checkpoint, distributed, mesh as mesh_lib, teachers
from edistill.data import pipeline
from edistill.models.dual_encoder import DualEncoder
from edistill.objective import LossConfig
from edistill.train import metrics_writer, state as state_lib


def stop_requested(local: bool, nproc: int) -> bool:
  """Whether any of ``nproc`` processes got SIGTERM (``local``: this one did); every process must call
  it at the same step. A host all-gather (it waits for the devices), hence only at log steps on a pod."""
  if nproc == 1:
    return local
  return bool(np.any(multihost_utils.process_allgather(np.int32(local))))


class NonFiniteLossError(FloatingPointError):
  """The loss became NaN/Inf; the message names the step range since the last good check."""


class Preempted(Exception):
  """Training stopped on a signal after saving ``step``; rerunning the same command resumes there."""

  def __init__(self, signum: int, step: int, directory):
    super().__init__(f"signal {signum}: saved step {step} in {directory}; rerun the same command to resume.")
    self.signum, self.step = signum, step


@dataclasses.dataclass
class Setup:
  """Everything the loop needs, built by a recipe from a config (also used by tests and benchmarks).

  jit_step(state_shardings, teacher_shardings, batch_sharding) -> the jitted step
  ``(state, teacher_params, batch) -> (state, metrics)`` (e.g. ``train.step.jit_train_step``).
  """

  pipe: pipeline.Pipeline
  student: DualEncoder
  teacher: teachers.Teacher | None
  teacher_params: Any  # The teacher's host-side params (weights, or tables: ``teachers.Teacher``).
  init_params: Any
  tokenizer: Any
  tx: Any
  loss: LossConfig
  jit_step: Any
  data: Any = None  # The RetrievalSet the pipeline was built from (unlabeled queries included), for benchmarks.


def _check_init_from(cfg, ckpt_dir) -> None:
  """A missing ``train.init_from`` fails before anything is built or created (a resume ignores it)."""
  if cfg.train.init_from and not (ckpt_dir.exists() and any(ckpt_dir.iterdir())):
    if not epath.Path(cfg.train.init_from).is_dir():
      raise checkpoint.CheckpointNotFoundError(
          f"config.train.init_from={cfg.train.init_from!r}: init checkpoint directory does not exist.")


def device_teacher_params(setup: Setup):
  """What of the teacher goes on the devices (replicated): an online encoder's weights; never a
  precomputed table (its rows travel in the batch, ``host_batch``)."""
  return setup.teacher.device_params(setup.teacher_params) if setup.teacher is not None else None


def host_batch(setup: Setup, local: dict) -> dict:
  """This host's batch with the teacher's host-side inputs merged in (a precomputed teacher's rows of
  its batch: O(batch) bytes per step, whatever the table size)."""
  return {**local, **setup.teacher.host_inputs(setup.teacher_params, local)} if setup.teacher is not None else local


def train(cfg, workdir: str | Path, build, evaluations=()) -> dict[str, float]:
  """Runs (or resumes) the ``Setup`` of ``build(cfg, process_index, process_count, multihost)`` (a
  recipe's) to ``cfg.train.steps``; returns the last logged metrics. ``evaluations``: (name,
  every_steps, fn(params) -> {metric: value}), run on process 0 and logged as "<name>/<metric>".

  ``config.json`` is (re)written only once training has really started: just before the first
  metrics line or checkpoint, so a run that fails before (a missing path, a NaN first loss) leaves
  the workdir's record of what trained it as it was.
  Raises ``Preempted`` after saving if SIGTERM arrives, ``NonFiniteLossError`` on a NaN/Inf loss.
  """
  workdir = epath.Path(workdir)
  pid, nproc = jax.process_index(), jax.process_count()
  _check_init_from(cfg, workdir / "checkpoints")
  setup = build(cfg, pid, nproc, nproc > 1)  # Every process together: encodings split across them.
  mesh = mesh_lib.make_mesh(mesh_lib.axes(cfg.mesh))
  batch_sharding = mesh_lib.batch_sharding(mesh)
  distributed.check_batch_layout(batch_sharding, cfg.train.batch_size, pid, nproc)
  state_lib.check_frozen(setup.init_params, tuple(cfg.train.frozen))
  abstract = jax.eval_shape(lambda p: state_lib.create(p, setup.tx, cfg.seed), setup.init_params)
  state_sh = mesh_lib.tree_shardings(abstract, mesh, mesh_lib.rules(cfg.mesh))
  teacher_sh = mesh_lib.replicated(mesh)
  teacher_params = device_teacher_params(setup)
  teacher_params = jax.device_put(teacher_params, teacher_sh) if teacher_params is not None else None
  step_fn = setup.jit_step(state_sh, teacher_sh, batch_sharding)

  ckpt = checkpoint.Checkpointer(workdir / "checkpoints", cfg.train.keep_checkpoints, cfg.train.checkpoint_every)
  target = checkpoint.abstract_like(abstract, state_sh)
  if ckpt.latest_step() is not None:
    state = ckpt.restore(target)
    logging.info("Resumed from %s at step %d", ckpt.directory, int(state.step))
  else:
    params = setup.init_params
    if cfg.train.init_from:
      params = checkpoint.init_params_from(cfg.train.init_from, params, tuple(cfg.train.init_from_remap),
                                           cfg.train.init_from_missing)
    state = jax.jit(lambda p: state_lib.create(p, setup.tx, cfg.seed), out_shardings=state_sh)(params)

  stop = {"signal": None}
  previous = signal.signal(signal.SIGTERM, lambda signum, _: stop.update(signal=signum))
  start, total = int(state.step), cfg.train.steps
  writer = metrics_writer.MetricsWriter(workdir, enabled=pid == 0, start_step=start)
  recorded = {"config": pid != 0}

  def record() -> None:  # config.json, the record of what trained the workdir: before its first line or checkpoint.
    if not recorded["config"]:
      cache.write_text_atomic(workdir / "config.json", cfg.to_json_best_effort(indent=2))
      recorded["config"] = True

  def save(step: int) -> None:  # Never a non-finite state; config.json first.
    _check_finite(state, good_step, step, ckpt)
    record()
    ckpt.save(step, state)

  last: dict[str, float] = {}
  good_step, t0, eval_s = start, time.perf_counter(), 0.0
  preempted = None
  try:
    bar = tqdm(total=total, initial=start, desc="train", disable=pid != 0)
    for step, local in zip(range(start, total), setup.pipe.iterate(start)):
      batch = jax.make_array_from_process_local_data(batch_sharding, host_batch(setup, local))
      state, metrics = step_fn(state, teacher_params, batch)
      done = step + 1
      log_step = done % cfg.train.log_every == 0 or done == total  # Host sync: metrics, and the pod's stop vote.
      if log_step:
        last = {k: float(v) for k, v in jax.device_get(metrics).items()}
        if not np.isfinite(last["loss"]):
          raise NonFiniteLossError(
              f"loss is {last['loss']} at a step in ({good_step}, {done}]; stopping without saving this "
              f"state. Last checkpoint: {ckpt.latest_step()} in {ckpt.directory}.")
        good_step = done
        train_s = time.perf_counter() - t0 - eval_s  # Training only: evaluations during training excluded.
        last["examples_per_s"] = cfg.train.batch_size * (done - start) / max(train_s, 1e-9)
        last["train_minutes"] = train_s / 60  # Since this process started (or resumed) training.
        record()
        writer.write(done, last)
        bar.set_postfix(loss=f"{last['loss']:.4f}")
      bar.update(1)
      due = [(name, fn) for name, every, fn in evaluations if done % every == 0] if pid == 0 else []
      if due:
        t_eval, params = time.perf_counter(), jax.device_get(state.params)
        for name, fn in due:
          writer.write(done, {f"{name}/{k}": v for k, v in fn(params).items()})
        eval_s += time.perf_counter() - t_eval
      if ckpt.should_save(done) and done != total:
        save(done)
      if (nproc == 1 or log_step) and stop_requested(stop["signal"] is not None, nproc):
        signum = int(stop["signal"] or signal.SIGTERM)  # Another process may have got it.
        logging.warning("Signal %s: saving step %d and stopping.", signum, done)
        save(done)
        preempted = Preempted(signum, done, ckpt.directory)
        break
    else:
      save(int(state.step))
    bar.close()
  finally:
    signal.signal(signal.SIGTERM, previous)
    writer.close()
    ckpt.close()  # Waits for the last (async) save to finish.
  if preempted is not None:
    raise preempted
  return last


@jax.jit
def _all_finite(params) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(params)]))


def _check_finite(state, good_step: int, step: int, ckpt) -> None:
  """Refuses to checkpoint parameters that went non-finite between two logged steps."""
  if not bool(_all_finite(state.params)):
    raise NonFiniteLossError(f"non-finite parameters at a step in ({good_step}, {step}]; stopping without "
                             f"saving this state. Last checkpoint: {ckpt.latest_step()} in {ckpt.directory}.")
