"""The train step: one pure function, jitted once with in/out shardings and donation.

The loss is ``objective.compute_loss`` (on the GLOBAL batch; see there), or any ``loss_fn`` a recipe
hands ``gradient_step``.
"""
from __future__ import annotations

import jax
import optax

from edistill.models.dual_encoder import DualEncoder
from edistill.objective import LossConfig, compute_loss, loss_from_embeddings
from edistill.teachers import Teacher
from edistill.train import grad_cache
from edistill.train import state as state_lib
from edistill.train.state import TrainState


def train_step(state: TrainState, teacher_params, batch, *, student: DualEncoder, teacher: Teacher | None,
               cfg: LossConfig, tx: optax.GradientTransformation,
               grad_cache_chunk: int = 0, frozen: tuple[str, ...] = ()) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer step; metrics include the loss terms, grad norm and the learning-rate step.

  ``grad_cache_chunk > 0`` computes the same loss and gradients with GradCache (``grad_cache.py``):
  the towers see ``grad_cache_chunk`` queries at a time, the loss still sees the whole global batch.
  ``frozen`` (``train.frozen``'s patterns): those params get no gradient computed (``stop_frozen``);
  ``tx`` must freeze the same ones. GradCache differentiates the towers itself, so there they are
  only kept fixed by ``tx``.
  """
  if grad_cache_chunk:
    head = lambda p, q_s, d_s: loss_from_embeddings(p, q_s, d_s, teacher_params, batch, student=student,
                                                    teacher=teacher, cfg=cfg)
    value_and_grad = lambda params, rng: grad_cache.value_and_grad(params, batch, rng, student=student, head=head,
                                                                   chunk=grad_cache_chunk)
    return _apply(state, value_and_grad, tx)
  loss_fn = lambda params, rng: compute_loss(params, teacher_params, batch, rng, student=student, teacher=teacher,
                                             cfg=cfg)
  return gradient_step(state, loss_fn, tx, frozen)


def gradient_step(state: TrainState, loss_fn, tx: optax.GradientTransformation,
                  frozen: tuple[str, ...] = ()) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer step on ``loss_fn(params, rng) -> (loss, metrics)`` (any model: also the CE trainers),
  with no gradient computed for the ``frozen`` params."""
  frozen_fn = lambda params, rng: loss_fn(state_lib.stop_frozen(params, frozen), rng)
  return _apply(state, jax.value_and_grad(frozen_fn, has_aux=True), tx)


def _apply(state: TrainState, value_and_grad, tx: optax.GradientTransformation) -> tuple[TrainState, dict[str, jax.Array]]:
  """``value_and_grad(params, rng) -> ((loss, metrics), grads)``, then the optimizer update."""
  rng, step_rng = jax.random.split(jax.random.wrap_key_data(state.rng))
  step_rng = jax.random.fold_in(step_rng, state.step)
  (loss, metrics), grads = value_and_grad(state.params, step_rng)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {**metrics, "grad_norm": optax.global_norm(grads)}
  new = state.replace(step=state.step + 1, params=params, opt_state=opt_state, rng=jax.random.key_data(rng))
  return new, metrics


def jit_train_step(student: DualEncoder, teacher: Teacher | None, cfg: LossConfig, tx: optax.GradientTransformation,
                   state_shardings, teacher_shardings, batch_sharding, grad_cache_chunk: int = 0,
                   frozen: tuple[str, ...] = ()):
  """``train_step`` jitted with explicit shardings; the state is donated (updated in place)."""
  fn = lambda state, teacher_params, batch: train_step(state, teacher_params, batch, student=student,
                                                       teacher=teacher, cfg=cfg, tx=tx,
                                                       grad_cache_chunk=grad_cache_chunk, frozen=frozen)
  return jit_sharded(fn, state_shardings, teacher_shardings, batch_sharding)


def jit_loss_step(loss_fn, tx: optax.GradientTransformation, state_shardings, teacher_shardings, batch_sharding,
                  frozen: tuple[str, ...] = ()):
  """``gradient_step`` on any ``loss_fn(params, teacher_params, batch, rng) -> (loss, metrics)``, jitted
  as ``jit_train_step`` (a recipe's own model, e.g. a cross-encoder)."""
  fn = lambda state, teacher_params, batch: gradient_step(
      state, lambda p, rng: loss_fn(p, teacher_params, batch, rng), tx, frozen)
  return jit_sharded(fn, state_shardings, teacher_shardings, batch_sharding)


def jit_sharded(fn, state_shardings, teacher_shardings, batch_sharding):
  """``fn(state, teacher_params, batch) -> (state, metrics)`` jitted with these input shardings, the
  state donated (updated in place) and replicated metrics."""
  return jax.jit(fn, in_shardings=(state_shardings, teacher_shardings, batch_sharding),
                 out_shardings=(state_shardings, None), donate_argnums=(0,))
