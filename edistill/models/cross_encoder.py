"""Cross-encoder (CE) teachers over "[CLS] q [SEP] d [SEP]", with a [CLS] head or a dual-pooling head.

Heads (``HEADS``):
  cls   the [CLS] (first) token's final state -> a linear layer -> one relevance score.
  dual  "dual pooling" (PAPER.md): the final token states are mean-pooled over the query's tokens
        and, separately, over the document's tokens; the score is the inner product of the two
        pooled vectors (L2-normalised first when ``normalize``: a cosine, to be used with a
        temperature, like the normalised dual encoders). The pooled vectors are what a dual-encoder
        student's query/document embeddings are matched to.

Pair layout (static shapes): a query gets ``max_query_length`` positions and a document
``max_doc_length``, special tokens included, so every pair fits ``L = max_query_length +
max_doc_length``. Pairs are packed left, as the tokenizer itself would write them
(BERT: ``[CLS] q [SEP] d [SEP] pad...``, MPNet: ``<s> q </s></s> d </s> pad...``), because BERT's
absolute positions would shift a document that started after the query's padding. The special
tokens come from the tokenizer's own pair encoding (``PairTemplate``). ``token_type_ids`` is 0 up to
and including the separator(s) after the query and 1 from the document on (BERT); MPNet has none.

Dual-pooling masks: ``query_mask``/``doc_mask`` are 1 exactly on the query's/document's content
tokens. Special tokens ([CLS], [SEP], <s>, </s>) and padding are excluded: [CLS] and [SEP] sit in
every pair, so including them would pull every query vector towards the same shared states, and
the [SEP] between the segments belongs to neither side.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from edistill import checkpoint, xla_options
from edistill.models import zoo
from edistill.models.encoder import Encoder, TransformerConfig, l2_normalize

HEADS = ("cls", "dual")
PAIR_KEYS = ("input_ids", "attention_mask", "token_type_ids", "query_mask", "doc_mask")


@dataclasses.dataclass(frozen=True)
class PairTemplate:
  """The special tokens a tokenizer puts around a pair: ``prefix q middle d suffix``."""

  prefix: tuple[int, ...]
  middle: tuple[int, ...]
  suffix: tuple[int, ...]
  pad_id: int
  token_types: bool  # Whether the model reads token_type_ids (BERT) or not (MPNet).

  @classmethod
  def from_tokenizer(cls, tokenizer) -> "PairTemplate":
    """Reads the template off the tokenizer's own encoding of a probe pair."""
    q = tokenizer("the", add_special_tokens=False)["input_ids"]
    d = tokenizer("cat", add_special_tokens=False)["input_ids"]
    full = tokenizer("the", "cat")["input_ids"]
    if not q or not d:
      raise ValueError("the tokenizer maps the probe words to no tokens; cannot read its pair template.")
    i = next((k for k in range(len(full)) if full[k:k + len(q)] == q), None)
    j = next((k for k in range(i + len(q), len(full)) if full[k:k + len(d)] == d), None) if i is not None else None
    if i is None or j is None:
      raise ValueError(f"cannot find the probe pair in the tokenizer's pair encoding {full}.")
    return cls(tuple(full[:i]), tuple(full[i + len(q):j]), tuple(full[j + len(d):]), int(tokenizer.pad_token_id),
               "token_type_ids" in tokenizer.model_input_names)

  def budgets(self, max_query_length: int, max_doc_length: int) -> tuple[int, int]:
    """Content tokens allowed for a query and a document (their lengths minus the special tokens)."""
    bq = max_query_length - len(self.prefix) - len(self.middle)
    bd = max_doc_length - len(self.suffix)
    if bq < 1 or bd < 1:
      raise ValueError(f"max_query_length={max_query_length} / max_doc_length={max_doc_length} leave no room for "
                       f"content next to the special tokens {self.prefix}, {self.middle}, {self.suffix}.")
    return bq, bd


class ContentOnly:
  """A tokenizer view that adds no special tokens (what ``pack_pairs`` expects), for ``pipeline.tokenize_texts``."""

  def __init__(self, tokenizer):
    self.tokenizer, self.pad_token_id = tokenizer, tokenizer.pad_token_id

  def __len__(self) -> int:
    return len(self.tokenizer)

  def __call__(self, texts, **kw):
    return self.tokenizer(texts, add_special_tokens=False, **kw)


def content_tokens(tokenizer, texts: Sequence[str], budget: int):
  """Texts tokenised WITHOUT special tokens, truncated to ``budget``: a ``pipeline.Tokens``."""
  from edistill.data.pipeline import tokenize_texts
  return tokenize_texts(ContentOnly(tokenizer), texts, budget)


def _place(out: np.ndarray, values: np.ndarray, start: np.ndarray, length: np.ndarray) -> None:
  """``out[r, start[r] + j] = values[r, j]`` for ``j < length[r]`` (vectorised; out has one spare column)."""
  j = np.arange(values.shape[1])[None]
  cols = np.where(j < length[:, None], start[:, None] + j, out.shape[1] - 1)
  np.put_along_axis(out, cols, values, axis=1)


def pack_pairs(template: PairTemplate, q_ids: np.ndarray, q_len: np.ndarray, d_ids: np.ndarray,
               d_len: np.ndarray, length: int) -> dict[str, np.ndarray]:
  """Content tokens of N (query, document) pairs -> packed pair arrays, each int32 ``[..., length]``.

  ``q_ids [..., Bq]``/``d_ids [..., Bd]`` (right-padded, any equal leading shape) with lengths
  ``q_len``/``d_len``. Returns ``PAIR_KEYS`` (``token_type_ids`` only when the template has types).
  """
  lead = q_ids.shape[:-1]
  q_ids, d_ids = q_ids.reshape(-1, q_ids.shape[-1]), d_ids.reshape(-1, d_ids.shape[-1])
  q_len, d_len = q_len.reshape(-1).astype(np.int64), d_len.reshape(-1).astype(np.int64)
  n = len(q_ids)
  p, m, s = (np.asarray(t, np.int32) for t in (template.prefix, template.middle, template.suffix))
  q_start = np.full(n, len(p))
  mid_start = q_start + q_len
  d_start = mid_start + len(m)
  end = d_start + d_len + len(s)
  if end.max(initial=0) > length:
    raise ValueError(f"a pair needs {end.max()} tokens but the static length is {length}.")
  ids = np.full((n, length + 1), template.pad_id, np.int32)  # One spare column absorbs masked writes.
  for seg, start, count in ((p, np.zeros(n, np.int64), len(p)), (q_ids, q_start, q_len), (m, mid_start, len(m)),
                            (d_ids, d_start, d_len), (s, d_start + d_len, len(s))):
    seg = np.broadcast_to(seg, (n, seg.shape[-1])) if seg.ndim == 1 else seg
    _place(ids, seg.astype(np.int32), start, np.broadcast_to(count, (n,)))
  pos = np.arange(length)[None]
  out = {"input_ids": ids[:, :length],
         "attention_mask": pos < end[:, None],
         "query_mask": (pos >= q_start[:, None]) & (pos < mid_start[:, None]),
         "doc_mask": (pos >= d_start[:, None]) & (pos < (d_start + d_len)[:, None])}
  if template.token_types:
    out["token_type_ids"] = (pos >= d_start[:, None]) & (pos < end[:, None])
  return {k: v.astype(np.int32).reshape(*lead, length) for k, v in out.items()}


def pair_length(template: PairTemplate, content: np.ndarray, static: int, multiple: int) -> int:
  """Columns that pairs with ``content`` query + document content tokens (any shape) need: the longest
  pair with its special tokens, rounded up to ``multiple``, at most ``static`` (``multiple`` 0: ``static``).
  Packing is left-aligned and padding masked, so the dropped columns change no score."""
  specials = len(template.prefix) + len(template.middle) + len(template.suffix)
  return pair_length_of(np.asarray(content) + specials, static, multiple)


def tokenize_pairs(tokenizer, queries: Sequence[str], docs: Sequence[str], max_query_length: int,
                   max_doc_length: int, template: PairTemplate | None = None) -> dict[str, np.ndarray]:
  """(query, document) texts -> packed pair arrays ``[N, max_query_length + max_doc_length]``."""
  if len(queries) != len(docs):
    raise ValueError(f"{len(queries)} queries for {len(docs)} documents.")
  template = template or PairTemplate.from_tokenizer(tokenizer)
  bq, bd = template.budgets(max_query_length, max_doc_length)
  q, d = content_tokens(tokenizer, queries, bq), content_tokens(tokenizer, docs, bd)
  return pack_pairs(template, q.ids, q.lengths, d.ids, d.lengths, max_query_length + max_doc_length)


def masked_mean(states: jax.Array, mask: jax.Array) -> jax.Array:
  """[N, L, H] states, [N, L] 0/1 mask -> [N, H] float32 mean over the masked tokens (0 if none)."""
  m = mask.astype(jnp.float32)[..., None]
  return (states.astype(jnp.float32) * m).sum(1) / jnp.maximum(m.sum(1), 1.0)


class CrossEncoder(nn.Module):
  """A transformer encoder over packed pairs with a relevance head (see module doc).

  Params: ``{"encoder": Encoder params, "score": {"kernel": [H, 1], "bias": [1]}}`` (the score layer
  for the cls head only). ``__call__`` returns scores ``[N]`` float32; ``pooled`` returns the dual
  head's ``(query_vectors, doc_vectors)``, each ``[N, H]`` float32.
  """

  config: TransformerConfig
  head: str = "cls"
  normalize: bool = True  # Dual head: L2-normalise the pooled vectors (score = cosine).
  dtype: Any = jnp.float32
  kernels: str | None = None  # The encoder's kernels by name (``Encoder.kernels``); None: the backend's.

  def setup(self):
    if self.head not in HEADS:
      raise ValueError(f"Unknown cross-encoder head {self.head!r}; expected one of {HEADS}.")
    self.encoder = Encoder(self.config, pooling="cls", dtype=self.dtype, kernels=self.kernels)
    if self.head == "cls":
      self.score = nn.Dense(1, dtype=jnp.float32, name="score")

  def _states(self, pairs, deterministic):
    return self.encoder.encode_tokens(pairs["input_ids"], pairs["attention_mask"], pairs.get("token_type_ids"),
                                      deterministic)

  def pooled(self, pairs, deterministic: bool = True) -> tuple[jax.Array, jax.Array]:
    if self.head != "dual":
      raise ValueError("pooled query/document vectors exist only for the dual-pooling head.")
    states = self._states(pairs, deterministic)
    q, d = masked_mean(states, pairs["query_mask"]), masked_mean(states, pairs["doc_mask"])
    return (l2_normalize(q), l2_normalize(d)) if self.normalize else (q, d)

  def __call__(self, pairs, deterministic: bool = True) -> jax.Array:
    if self.head == "dual":
      q, d = self.pooled(pairs, deterministic)
      return jnp.sum(q * d, axis=-1)
    states = self._states(pairs, deterministic)
    return self.score(states[:, 0].astype(jnp.float32))[:, 0]


def init_params(model: CrossEncoder, encoder_params, seed: int = 0) -> dict:
  """CE params from a pretrained encoder's params: the head (if any) initialised fresh.

  The cls head's kernel is N(0, 0.02^2) as in BERT's classifier heads (a zero kernel would also
  zero every gradient into the encoder until the head has grown), its bias 0.
  """
  params = {"encoder": encoder_params}
  if model.head == "cls":
    h = model.config.hidden_size
    kernel = np.random.default_rng(seed).normal(0.0, 0.02, (h, 1)).astype(np.float32)
    params["score"] = {"kernel": kernel, "bias": np.zeros((1,), np.float32)}
  return params


def apply_flat(model: CrossEncoder, params, pairs: dict, deterministic: bool = True, rng=None,
               method: str | None = None):
  """Applies ``model`` (scores, or ``method="pooled"``) to pairs with any leading shape ``[..., L]``."""
  lead = pairs["input_ids"].shape[:-1]
  flat = {k: v.reshape(-1, v.shape[-1]) for k, v in pairs.items() if k in PAIR_KEYS}
  rngs = None if deterministic else {"dropout": rng}
  fn = getattr(CrossEncoder, method) if method else CrossEncoder.__call__
  out = model.apply({"params": params}, flat, deterministic, rngs=rngs, method=fn)
  return jax.tree.map(lambda x: x.reshape(*lead, *x.shape[1:]), out)


def predict(model: CrossEncoder, params, pairs: dict[str, np.ndarray], batch_size: int = 64,
            pooled: bool = False, desc: str | None = None, multiple: int = 8) -> dict[str, np.ndarray]:
  """Scores (and, with ``pooled``, the dual head's vectors) of ``N`` packed pairs, in batches.

  Returns ``{"scores": [N]}`` (+ ``"query_vectors"``, ``"doc_vectors"`` ``[N, H]``), float32 NumPy, in
  the pairs' order. With ``multiple`` > 0 the pairs are batched shortest first and each batch is cut
  to its longest pair rounded up to ``multiple`` (at most L / multiple shapes compile; the outputs
  are those of the full length, the padding being masked), else every batch keeps the full length.
  The last batch is padded with copies of its first row, so each length compiles once.
  """
  from tqdm.auto import tqdm

  def fn(p, batch):
    if not pooled:
      return {"scores": model.apply({"params": p}, batch)}
    q, d = model.apply({"params": p}, batch, method=CrossEncoder.pooled)
    return {"scores": jnp.sum(q * d, axis=-1), "query_vectors": q, "doc_vectors": d}  # The dual head's score.

  fn = xla_options.inference_jit(fn)
  params = jax.device_put(params)
  n, static = pairs["input_ids"].shape
  lengths = pairs["attention_mask"].sum(-1)
  order = np.argsort(lengths, kind="stable") if multiple else np.arange(n)
  parts = []
  for start in tqdm(range(0, n, batch_size), desc=desc, disable=desc is None):
    rows = order[start:start + batch_size]
    width = pair_length_of(lengths[rows], static, multiple)
    chunk = {k: v[rows, :width] for k, v in pairs.items() if k in PAIR_KEYS}
    pad = batch_size - len(rows)
    chunk = {k: np.concatenate([v, np.repeat(v[:1], pad, 0)]) for k, v in chunk.items()}
    parts.append(jax.tree.map(lambda x: np.asarray(x)[:batch_size - pad], fn(params, chunk)))
  if not parts:
    return {}
  out = {k: np.concatenate([p[k] for p in parts]).astype(np.float32) for k in parts[0]}
  inverse = np.empty(n, np.int64)
  inverse[order] = np.arange(n)
  return {k: v[inverse] for k, v in out.items()}


def pair_length_of(lengths: np.ndarray, static: int, multiple: int) -> int:
  """The longest of packed pairs' ``lengths`` (specials included) rounded up to ``multiple``, at most
  ``static`` (``multiple`` 0: ``static``)."""
  if not multiple:
    return static
  return min(static, -(-int(np.max(lengths, initial=1)) // multiple) * multiple)


def load(enc_cfg, ce_cfg) -> tuple[CrossEncoder, Any]:
  """The CE architecture on a packaged/local encoder (its weights initialise a new CE)."""
  pre = zoo.load_from_config(enc_cfg)
  model = CrossEncoder(pre.config, ce_cfg.head, ce_cfg.normalize, jnp.dtype(enc_cfg.dtype))
  return model, pre


def encoder_params(pre) -> dict:
  return {k: v for k, v in pre.params.items() if k != "projection"}  # A sentence-embedding head is unused.


def restore(enc_cfg, ce_cfg, directory) -> tuple[CrossEncoder, Any, dict]:
  """A trained CE: its architecture from ``enc_cfg``/``ce_cfg``, its params from a checkpoint directory."""
  model, pre = load(enc_cfg, ce_cfg)
  _, params = checkpoint.latest_params(directory, " of a trained cross-encoder (cross_encoder.checkpoint)")
  expected = init_params(model, encoder_params(pre))
  if jax.tree.structure(params) != jax.tree.structure(expected) or any(
      np.shape(a) != np.shape(b) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(expected))):
    raise ValueError(f"{directory}: the checkpoint is not a {ce_cfg.head!r}-head cross-encoder on {enc_cfg.name} with "
                     f"num_layers={enc_cfg.num_layers}; check cross_encoder.head and the encoder settings.")
  return model, pre, params
