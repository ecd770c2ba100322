"""GradCache: the full-batch loss and its exact gradients with the towers' activations in chunks.

In-batch negatives want the largest global batch, but the towers' activations grow with it. The
loss only needs the embeddings ([B, D], small), so (Gao et al., 2021, "Scaling Deep Contrastive
Learning Batch Size under Memory Limited Setup"):

1. encode the batch chunk by chunk WITHOUT keeping activations (``lax.map``, not differentiated);
2. compute the loss on the whole global batch from those cached embeddings, with its gradients with
   respect to the embeddings (and the projection heads): score matrices still span every device;
3. for each chunk, re-encode it and pull the embedding gradient back through the tower
   (``jax.vjp``), accumulating parameter gradients (``lax.scan``).

Peak activation memory is one chunk's; the price is a second forward pass of the towers. The loss and
gradients equal the plain step's (tested to 1e-5). Chunk ``j`` holds rows ``j, j + n, j + 2n, ...``
(``n = B / chunk``), so when ``B / n`` is divisible by the ``data`` axis every device keeps its own
rows and chunking needs no communication. Dropout: each chunk draws its mask from
``fold_in(rng, j)`` in both passes (so the backward pass matches its forward); the masks differ from
the plain step's whole-batch draw, so with dropout on the two steps are equal in distribution, not
bit for bit (the equality test runs with dropout off).
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

# (params, (ids, mask), rng) -> embeddings of one chunk.
EncodeFn = Callable[[Any, tuple[jax.Array, jax.Array], jax.Array], jax.Array]


def chunk_rows(x: jax.Array, n: int) -> jax.Array:
  """[B, ...] -> [n, B/n, ...]; chunk ``j`` holds rows ``j, j + n, ...`` (strided, see module doc)."""
  if x.shape[0] % n:
    raise ValueError(f"batch of {x.shape[0]} rows does not split into {n} chunks.")
  return x.reshape(x.shape[0] // n, n, *x.shape[1:]).swapaxes(0, 1)


def unchunk_rows(x: jax.Array) -> jax.Array:
  """Inverse of ``chunk_rows``: [n, B/n, ...] -> [B, ...] in the original row order."""
  return x.swapaxes(0, 1).reshape(x.shape[0] * x.shape[1], *x.shape[2:])


def encode_in_chunks(encode: EncodeFn, params, inputs, rng: jax.Array, n: int) -> jax.Array:
  """Step 1: embeddings of the whole batch, ``n`` chunks one after another, no activations kept."""
  params = jax.lax.stop_gradient(params)
  chunks = jax.tree.map(lambda x: chunk_rows(x, n), inputs)
  emb = jax.lax.map(lambda a: encode(params, a[1], jax.random.fold_in(rng, a[0])), (jnp.arange(n), chunks))
  return unchunk_rows(emb)


def backward_in_chunks(encode: EncodeFn, params, inputs, rng: jax.Array, n: int, emb_grad: jax.Array, grads):
  """Step 3: ``grads`` + the vjp of every chunk's encoding with its rows of ``emb_grad``."""
  chunks = jax.tree.map(lambda x: chunk_rows(x, n), inputs)

  def one(acc, a):
    j, x, ct = a
    _, vjp = jax.vjp(lambda p: encode(p, x, jax.random.fold_in(rng, j)), params)
    return jax.tree.map(jnp.add, acc, vjp(ct)[0]), None

  return jax.lax.scan(one, grads, (jnp.arange(n), chunks, chunk_rows(emb_grad, n)))[0]


def value_and_grad(params, batch, rng: jax.Array, *, student, head: Callable, chunk: int,
                   deterministic: bool = False):
  """``((loss, aux), grads)`` of ``head(params, q_s, d_s)`` on the student's embeddings of ``batch``.

  ``head`` is the loss on embeddings (``step.loss_from_embeddings`` with the teacher bound); the
  rng split matches ``step.compute_loss``. ``chunk`` = queries per chunk (their documents go along).
  """
  b, c = batch["doc_index"].shape
  if chunk <= 0 or b % chunk:
    raise ValueError(f"GradCache chunk {chunk} must be a positive divisor of the global batch size {b}.")
  n = b // chunk
  q_rng, d_rng = jax.random.split(rng)
  encode_q = lambda p, x, r: student.encode_queries(p, x[0], x[1], deterministic, r)
  q_in = (batch["query_input_ids"], batch["query_attention_mask"])
  q_s = encode_in_chunks(encode_q, params, q_in, q_rng, n)
  d_s = encode_d = d_in = None
  if student.kind != "asymmetric":  # Documents [m, C, Ld] -> [m, C, Ds], chunked with their queries.
    ld = batch["doc_input_ids"].shape[-1]
    encode_d = lambda p, x, r: student.encode_docs(p, x[0].reshape(-1, ld), x[1].reshape(-1, ld), deterministic,
                                                   r).reshape(x[0].shape[0], c, -1)
    d_in = (batch["doc_input_ids"], batch["doc_attention_mask"])
    d_s = encode_in_chunks(encode_d, params, d_in, d_rng, n).reshape(b * c, -1)
  (loss, aux), (grads, q_grad, d_grad) = jax.value_and_grad(head, argnums=(0, 1, 2), has_aux=True)(params, q_s, d_s)
  grads = backward_in_chunks(encode_q, params, q_in, q_rng, n, q_grad, grads)
  if encode_d is not None:
    grads = backward_in_chunks(encode_d, params, d_in, d_rng, n, d_grad.reshape(b, c, -1), grads)
  return (loss, aux), grads
