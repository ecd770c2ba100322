"""Train state (student only) and the optimizer built from config.

The state holds the student's params (towers + projection heads), the optimizer state, the step and
an RNG key for dropout. The teacher is never part of it: it is passed to the step separately, so it
is neither optimised nor checkpointed.
"""
from __future__ import annotations

import re
from typing import Any, NamedTuple, Sequence

import flax
import jax
import jax.numpy as jnp
import optax

from edistill.mesh import path_str


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 []
  params: Any
  opt_state: Any
  rng: jax.Array  # uint32 [2]: raw key data, so checkpoints need no typed-key support.


def _labels(params, patterns: Sequence[str]) -> Any:
  """'frozen' for params whose "a/b/c" path matches one of ``patterns`` (re.search), else 'train'."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: "frozen" if any(re.search(p, path_str(path)) for p in patterns) else "train", params)


def stop_frozen(params, patterns: Sequence[str]) -> Any:
  """``params`` with ``stop_gradient`` on the leaves ``patterns`` freeze (``_labels``). Their gradient is
  then a symbolic zero, so autodiff emits no backward pass for them, nor for any layer below the
  lowest trainable one (the optimizer's ``set_to_zero`` alone leaves that work to the compiler, and
  the logged grad norm kept it alive)."""
  if not patterns:
    return params
  return jax.tree.map(lambda p, label: jax.lax.stop_gradient(p) if label == "frozen" else p,
                      params, _labels(params, patterns))


def check_frozen(params, patterns: Sequence[str]) -> None:
  """Fails naming ``config.train.frozen`` when a pattern matches no parameter (a typo would silently
  freeze nothing) or the patterns match every parameter (nothing would train)."""
  for pattern in patterns:
    if "frozen" not in jax.tree.leaves(_labels(params, (pattern,))):
      example = path_str(jax.tree_util.tree_flatten_with_path(params)[0][0][0])
      raise ValueError(f"config.train.frozen: {pattern!r} matches no parameter; paths look like {example!r}.")
  if patterns and set(jax.tree.leaves(_labels(params, patterns))) == {"frozen"}:
    raise ValueError(f"config.train.frozen={tuple(patterns)} freezes every parameter: nothing would train.")


def _decay_mask(params) -> Any:
  """Weight decay on matrices only: not on biases, LayerNorm parameters or embedding tables."""
  return jax.tree_util.tree_map_with_path(
      lambda path, leaf: leaf.ndim >= 2 and "embedding" not in path_str(path), params)


class PullState(NamedTuple):
  anchor: Any  # The params the optimizer was initialised with (checkpointed with it).


def pull_to_init(weight: float) -> optax.GradientTransformation:
  """Adds ``weight * (params - anchor)`` to the gradients, ``anchor`` = the params at ``init``: the
  gradient of ``weight / 2 * ||params - anchor||^2`` (L2-SP), a pull toward the pretrained start."""
  def init(params):
    return PullState(anchor=jax.tree.map(jnp.asarray, params))

  def update(updates, state, params=None):
    if params is None:
      raise ValueError("pull_to_init needs the params (optax update(..., params)).")
    return jax.tree.map(lambda g, p, a: g + weight * (p - a), updates, params, state.anchor), state

  return optax.GradientTransformation(init, update)


def make_optimizer(learning_rate: float, total_steps: int, warmup_steps: int = 0, weight_decay: float = 0.0,
                   grad_clip: float = 0.0, schedule: str = "cosine", frozen: Sequence[str] = (),
                   b1: float = 0.9, b2: float = 0.999, pull: float = 0.0) -> optax.GradientTransformation:
  """AdamW with linear warmup then cosine/linear decay (or constant), global-norm clipping, decay
  masks, and frozen params (regexes over "tower/layer_0/..." paths) that receive zero updates.
  ``pull`` > 0 adds the L2-SP gradient toward the initial params (``pull_to_init``) before clipping."""
  decay_steps = max(total_steps - warmup_steps, 1)
  if schedule == "cosine":
    after = optax.cosine_decay_schedule(learning_rate, decay_steps)
  elif schedule == "linear":
    after = optax.linear_schedule(learning_rate, 0.0, decay_steps)
  elif schedule == "constant":
    after = optax.constant_schedule(learning_rate)
  else:
    raise ValueError(f"unknown schedule {schedule!r}; expected cosine, linear or constant.")
  lr = optax.join_schedules([optax.linear_schedule(0.0, learning_rate, warmup_steps), after], [warmup_steps]) \
      if warmup_steps else after
  tx = optax.chain(optax.clip_by_global_norm(grad_clip) if grad_clip else optax.identity(),
                   optax.adamw(lr, b1=b1, b2=b2, weight_decay=weight_decay, mask=_decay_mask))
  if pull:  # Only then: the optimizer state (and old checkpoints) keep their structure without it.
    tx = optax.chain(pull_to_init(pull), tx)
  if frozen:
    tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()},
                               lambda params: _labels(params, frozen))
  return tx


def create(params, tx: optax.GradientTransformation, seed: int) -> TrainState:
  """A fresh state (jit this with out_shardings to create it already sharded)."""
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    rng=jax.random.key_data(jax.random.key(seed)))
