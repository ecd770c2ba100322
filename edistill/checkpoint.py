"""Orbax checkpoints of the student's train state (never the teacher).

Initialisation order (big_vision): a checkpoint in the workdir (resume) > an explicit checkpoint to
start from (its params only) > a pretrained HF checkpoint (the student's towers; see models.zoo) >
scratch. Restores take an abstract target with shardings, so a checkpoint written on one mesh
restores onto another.
"""
from __future__ import annotations

import os
import re
from typing import Any, Sequence

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util
from absl import logging
from etils import epath


def _path(directory) -> epath.Path:
  """A checkpoint directory: local (made absolute, as Orbax requires) or gs://BUCKET/PATH."""
  path = epath.Path(directory)
  return path if "://" in str(directory) else path.absolute()


class CheckpointNotFoundError(FileNotFoundError):
  """A checkpoint was asked for where none exists."""


def abstract_like(tree, shardings=None):
  """ShapeDtypeStructs (with shardings, if given) describing ``tree`` for a restore."""
  if shardings is None:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


class Checkpointer:
  """Periodic, final and preemption saves of a train state under ``directory``."""

  def __init__(self, directory: str | os.PathLike, max_to_keep: int = 3, every_steps: int = 0):
    self.directory = _path(directory)
    self.every_steps = every_steps
    self.manager = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def should_save(self, step: int) -> bool:
    return bool(self.every_steps) and step % self.every_steps == 0

  def save(self, step: int, state: Any) -> None:
    """Saves (blocking: the loop may donate the state's buffers right after)."""
    if step in self.manager.all_steps():
      return
    self.manager.save(step, args=ocp.args.StandardSave(state))
    self.manager.wait_until_finished()
    logging.info("Saved checkpoint %d to %s", step, self.directory)

  def restore(self, target: Any, step: int | None = None) -> Any:
    """Restores ``step`` (default: latest) into the structure/shardings of ``target`` (abstract ok)."""
    step = self.latest_step() if step is None else step
    if step is None or step not in self.manager.all_steps():
      raise CheckpointNotFoundError(f"{self.directory}: no checkpoint at step {step} "
                                    f"(available: {self.all_steps()}).")
    return self.manager.restore(step, args=ocp.args.StandardRestore(abstract_like(target)))

  def restore_params(self, step: int | None = None) -> Any:
    """Only the params of ``step`` (default: latest), as saved (host arrays, no target needed)."""
    step = self.latest_step() if step is None else step
    if step is None or step not in self.manager.all_steps():
      raise CheckpointNotFoundError(f"{self.directory}: no checkpoint at step {step} "
                                    f"(available: {self.all_steps()}).")
    # A checkpoint written on another topology (e.g. a multi-host pod slice) restores onto one local
    # device: without a fallback, Orbax refuses the saved multi-process shardings.
    local = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return self.manager.restore(step, args=ocp.args.StandardRestore(fallback_sharding=local))["params"]

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def latest_params(directory: str | os.PathLike, missing: str = "") -> tuple[int | None, Any]:
  """(latest step, its params as saved) of a checkpoint directory, for readers (evaluation, export, a
  trained CE). Never creates the directory: a missing one raises CheckpointNotFoundError naming it,
  with ``missing`` (what it was wanted for) appended to "no checkpoints"."""
  path = _path(directory)
  if not path.is_dir():
    raise CheckpointNotFoundError(f"{path}: no checkpoints{missing}.")
  ckpt = Checkpointer(path)
  try:
    return ckpt.latest_step(), ckpt.restore_params()
  finally:
    ckpt.close()


MISSING = ("error", "init")  # config.train.init_from_missing


def init_params_from(directory: str | os.PathLike, init_params: Any, remap: Sequence[str] = (),
                     missing: str = "error") -> Any:
  """``init_params`` with every leaf another run's latest checkpoint has, taken from it (its params
  only: a different optimizer, schedule or step count does not matter).

  Names are "/"-joined paths (``query_tower/layer_0/mlp_in/kernel``). ``remap`` entries
  ``"PATTERN=REPLACEMENT"`` (``re.sub``, in order, as t5x's assignment map) rename the checkpoint's
  leaves first. A leaf of ``init_params`` the checkpoint lacks raises (``missing="error"``) or keeps
  its fresh initial value (``"init"``: e.g. a projection head added since); a shape mismatch always
  raises naming the leaf. Leaves of the checkpoint nothing asks for are logged and left out.
  """
  if missing not in MISSING:
    raise ValueError(f"config.train.init_from_missing={missing!r}; expected one of {MISSING}.")
  path = _path(directory)
  if not path.is_dir():
    raise CheckpointNotFoundError(f"{path}: init checkpoint directory does not exist.")
  _, saved = latest_params(path, " to initialise from (config.train.init_from)")
  flat = traverse_util.flatten_dict(jax.device_get(saved), sep="/")
  for rule in remap:
    pattern, eq, repl = rule.partition("=")
    if not eq:
      raise ValueError(f"config.train.init_from_remap entry {rule!r}: expected 'PATTERN=REPLACEMENT'.")
    flat = {re.sub(pattern, repl, k): v for k, v in flat.items()}
  out, fresh = {}, []
  for name, leaf in traverse_util.flatten_dict(init_params, sep="/").items():
    if name not in flat:
      if missing == "error":
        raise CheckpointNotFoundError(f"{path}: the checkpoint has no {name!r} (it has {sorted(flat)[:6]}...); "
                                      "set config.train.init_from_remap, or init_from_missing='init' to keep "
                                      "its fresh initial value.")
      out[name] = leaf
      fresh.append(name)
      continue
    if np.shape(flat[name]) != np.shape(leaf):
      raise ValueError(f"{path}: {name!r} has shape {np.shape(flat[name])} in the checkpoint, "
                       f"{np.shape(leaf)} in this model.")
    out[name] = np.asarray(flat[name], dtype=np.asarray(leaf).dtype)
  unused = sorted(set(flat) - set(out))
  if fresh or unused:
    logging.warning("init_from %s: %d leaves freshly initialised %s; %d checkpoint leaves unused %s", path,
                    len(fresh), fresh[:4], len(unused), unused[:4])
  return traverse_util.unflatten_dict(out, sep="/")
