"""The train steps that train_mfu.py and train_gpu.py time, from random weights: shapes, batches,
model FLOPs and edistill's jitted steps. Needs jax/flax/optax and edistill only (no torch, no
TFDS), so it runs on a bare GPU box; torch_steps.py builds the same steps in PyTorch.

Workloads (``Workload.kind``):
  qemb  the ``qemb`` row of configs/ablation.py: an asymmetric student (trained query tower, mean
        pooling + L2 normalisation, a projection H -> 768 into the teacher's space) against
        precomputed teacher rows (random unit vectors riding in the batch, as the loop ships them);
        label + score distillation (softmax_ce) + query-embedding (l2) losses, all weight 1,
        temperatures 0.05. An example is a query.
  ce    a cross-encoder's own step (recipes/cross_encoder.py): ``batch`` queries x ``candidates``
        (query, document) pairs packed to ``query_length + doc_length`` tokens, listwise softmax CE
        at temperature 0.05 over each query's candidates (column 0 the positive); head cls or dual.
        An example is a pair.
Both: AdamW (lr 5e-5 constant, betas 0.9/0.999, eps 1e-8, weight decay 0.01 on matrices except
embedding tables), global-norm clipping at 1.0, dropout off (as configs/ablation.py trains).
Lengths are random and right-padded: query content a quarter to all of its budget, documents half
to all. Model FLOPs count the padded shape, which both frameworks compute.
"""
from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from edistill import mesh as mesh_lib
from edistill.models import cross_encoder as ce_lib
from edistill.models.dual_encoder import DualEncoder, init_projection
from edistill.models.encoder import Encoder, TransformerConfig
from edistill.objective import LossConfig, cross_encoder_loss
from edistill.teachers import Teacher
from edistill.train import state as state_lib
from edistill.train.step import jit_loss_step, jit_train_step

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import GRAD_CLIP, LR, TEACHER_DIM, TEMPERATURE, WEIGHT_DECAY  # noqa: E402

LOSS = LossConfig(label=1.0, score=1.0, query_emb=1.0, temperature=TEMPERATURE, student_temperature=TEMPERATURE,
                  teacher_temperature=TEMPERATURE, score_kind="softmax_ce", emb_kind="l2")
PEAK_BF16_TFLOPS = 989.0  # H100/H200 SXM dense bf16, the datasheet's.
_OFF = {"hidden_dropout": 0.0, "attention_dropout": 0.0}
MINILM = TransformerConfig("bert", 30522, 384, 6, 12, 1536, 512, 1e-12, **_OFF)  # all-MiniLM-L6-v2's shape.
BERT_BASE = TransformerConfig("bert", 30522, 768, 12, 12, 3072, 512, 1e-12, **_OFF)  # MPNet-base's shape, BERT's.
MPNET_BASE = TransformerConfig("mpnet", 30527, 768, 12, 12, 3072, 514, 1e-5, type_vocab_size=0, pad_token_id=1,
                               **_OFF)  # all-mpnet-base-v2.
TINY = {"bert": TransformerConfig("bert", 128, 32, 2, 4, 64, 64, 1e-12, **_OFF),
        "mpnet": TransformerConfig("mpnet", 128, 32, 2, 4, 64, 66, 1e-5, type_vocab_size=0, pad_token_id=1, **_OFF)}
# The special tokens the tokenizers put around a pair (BERT: [CLS] q [SEP] d [SEP]; MPNet: <s> q </s></s> d </s>).
TEMPLATES = {"bert": ce_lib.PairTemplate((101,), (102,), (102,), 0, True),
             "mpnet": ce_lib.PairTemplate((0,), (2, 2), (2,), 1, False)}


@dataclasses.dataclass(frozen=True)
class Workload:
  """One step's shape (see the module doc). ``kernels``: the encoder's kernels by name (None: the backend's)."""

  kind: str  # "qemb" | "ce"
  config: TransformerConfig
  batch: int  # Queries per step.
  query_length: int
  candidates: int = 1  # ce: pairs per query.
  doc_length: int = 0  # ce.
  head: str = "cls"  # ce: "cls" | "dual".
  dtype: str = "bfloat16"
  kernels: str | None = None

  @property
  def examples(self) -> int:
    """Sequences the encoder runs per step: queries (qemb) or pairs (ce)."""
    return self.batch * self.candidates

  @property
  def length(self) -> int:
    return self.query_length + self.doc_length


def non_embedding_params(cfg: TransformerConfig) -> int:
  """Parameters of the transformer layers: q/k/v/out projections and the MLP (weights and biases)
  and both LayerNorms; not the embedding tables (nor their LayerNorm, nor MPNet's relative bias)."""
  h, i = cfg.hidden_size, cfg.intermediate_size
  return cfg.num_layers * (4 * h * h + 4 * h + 2 * h * i + i + h + 4 * h)


def encoder_train_flops(cfg: TransformerConfig, sequences: int, length: int) -> float:
  """Model FLOPs of a forward + backward pass over ``sequences`` x ``length`` tokens (PaLM, appendix B):
  6 x non-embedding params x tokens + 12 x layers x length x hidden x tokens (attention's two
  matmuls, 4 L H a token a layer forward, x 3 with the backward)."""
  tokens = sequences * length
  return 6.0 * non_embedding_params(cfg) * tokens + 12.0 * cfg.num_layers * length * cfg.hidden_size * tokens


def model_flops(w: Workload) -> float:
  """A train step's model FLOPs: the encoder's plus its head's matmul (qemb: the H -> 768 projection;
  ce cls: the H -> 1 score layer; dual: none), x 6 as the encoder's."""
  head = TEACHER_DIM if w.kind == "qemb" else int(w.head == "cls")
  return encoder_train_flops(w.config, w.examples, w.length) + 6.0 * w.config.hidden_size * head * w.examples


def _ids(rng, cfg: TransformerConfig, shape) -> np.ndarray:
  """Random token ids clear of the special tokens (which sit below 1000 in both vocabularies)."""
  return rng.integers(min(1000, cfg.vocab_size // 2), cfg.vocab_size, shape).astype(np.int32)


def random_batch(w: Workload, seed: int = 0) -> dict[str, np.ndarray]:
  """One global batch in the layout the step reads (see the module doc), NumPy."""
  rng = np.random.default_rng(seed)
  cfg, b = w.config, w.batch
  if w.kind == "qemb":
    length = w.query_length
    mask = np.arange(length) < rng.integers(max(1, length // 4), length + 1, b)[:, None]
    unit = rng.standard_normal((2 * b, TEACHER_DIM)).astype(np.float32)
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    negatives = np.zeros((b, b), bool)
    negatives[np.arange(0, b - 1, 8), np.arange(1, b, 8)] = True  # Every 8th query: a masked false negative.
    return {"query_input_ids": np.where(mask, _ids(rng, cfg, (b, length)), cfg.pad_token_id).astype(np.int32),
            "query_attention_mask": mask.astype(np.int32), "query_index": np.arange(b, dtype=np.int32),
            "doc_index": np.arange(b, dtype=np.int32)[:, None], "negative_mask": negatives,
            "teacher_query": unit[:b], "teacher_doc": unit[b:, None]}
  template, k = TEMPLATES[cfg.arch], w.candidates
  bq, bd = template.budgets(w.query_length, w.doc_length)
  q_len = rng.integers(max(1, bq // 4), bq + 1, b)
  d_len = rng.integers(max(1, bd // 2), bd + 1, (b, k))
  q_ids = _ids(rng, cfg, (b, bq))
  pairs = ce_lib.pack_pairs(template, np.broadcast_to(q_ids[:, None], (b, k, bq)),
                            np.broadcast_to(q_len[:, None], (b, k)), _ids(rng, cfg, (b, k, bd)), d_len, w.length)
  return {**pairs, "positive_col": np.zeros(b, np.int32), "candidate_mask": np.ones((b, k), bool)}


def student(w: Workload) -> DualEncoder:
  return DualEncoder(Encoder(w.config, normalize=True, dtype=jnp.dtype(w.dtype), kernels=w.kernels), None,
                     "asymmetric")


def cross_encoder(w: Workload) -> ce_lib.CrossEncoder:
  return ce_lib.CrossEncoder(w.config, w.head, True, jnp.dtype(w.dtype), w.kernels)


def init_encoder(cfg: TransformerConfig, seed: int = 0) -> dict[str, Any]:
  """edistill's random initial encoder parameters, float32 NumPy, drawn on the CPU (the same numbers in
  every process, and no op-by-op compilation on an accelerator)."""
  with jax.default_device(jax.local_devices(backend="cpu")[0]):
    ids = jnp.full((1, 8), 1000 % cfg.vocab_size, jnp.int32)
    return jax.device_get(Encoder(cfg).init(jax.random.key(seed), ids, jnp.ones_like(ids))["params"])


def init_params(w: Workload, seed: int = 0) -> dict[str, Any]:
  """edistill's random initial parameters of the trained model (``init_encoder`` and the head)."""
  encoder = init_encoder(w.config, seed)
  if w.kind == "qemb":
    with jax.default_device(jax.local_devices(backend="cpu")[0]):
      projection = jax.device_get(init_projection(jax.random.key(seed + 1), w.config.hidden_size, TEACHER_DIM))
    return {"query_tower": encoder, "query_projection": projection}
  return ce_lib.init_params(cross_encoder(w), encoder, seed)


def optimizer():
  return state_lib.make_optimizer(LR, 1_000_000, warmup_steps=0, weight_decay=WEIGHT_DECAY, grad_clip=GRAD_CLIP,
                                  schedule="constant")


def one_device_step(params, tx, jit_step: Callable) -> tuple[Any, Callable, Any]:
  """(state, step, batch sharding): a train state of ``params`` and ``jit_step(state_shardings,
  teacher_shardings, batch_sharding)`` as the loop builds them, on a one-device mesh."""
  mesh = mesh_lib.make_mesh({"data": -1, "model": 1}, jax.devices()[:1])
  create = lambda p: state_lib.create(p, tx, 0)
  state_sh = mesh_lib.tree_shardings(jax.eval_shape(create, params), mesh)
  state = jax.jit(create, out_shardings=state_sh)(params)
  batch_sh = mesh_lib.batch_sharding(mesh)
  return state, jit_step(state_sh, mesh_lib.replicated(mesh), batch_sh), batch_sh


def jit_step(w: Workload, tx, state_sharding, teacher_sharding, batch_sharding) -> Callable:
  """edistill's own jitted step for ``w`` (``jit_train_step`` / ``jit_loss_step``, the state donated):
  ``step(state, None, batch) -> (state, metrics)``."""
  if w.kind == "qemb":
    teacher = Teacher(Encoder(w.config), "precomputed")  # Rows ride in the batch; the encoder is never applied.
    return jit_train_step(student(w), teacher, LOSS, tx, state_sharding, teacher_sharding, batch_sharding)
  model = cross_encoder(w)
  loss_fn = lambda p, _, batch, rng: cross_encoder_loss(p, batch, rng, model=model, temperature=TEMPERATURE)
  return jit_loss_step(loss_fn, tx, state_sharding, teacher_sharding, batch_sharding)


def jax_step(w: Workload, params) -> tuple[Any, Callable, Any]:
  """(state, step, batch sharding): ``jit_step`` on a one-device mesh with a train state of ``params``."""
  tx = optimizer()
  return one_device_step(params, tx, lambda *sh: jit_step(w, tx, *sh))


def time_loop(step: Callable[[], Any], sync: Callable[[], Any], target_s: float = 1.0, windows: int = 3) -> dict:
  """Seconds per ``step()`` as a training loop runs it: calls back to back, one ``sync()`` a window.
  A window's call count is chosen from one synced call to last about ``target_s``; the median
  window is reported, with the spread (max - min) / median over ``windows``."""
  start = time.perf_counter()
  step()
  sync()
  n = int(min(200, max(2, target_s / max(time.perf_counter() - start, 1e-6))))
  times = []
  for _ in range(windows):
    start = time.perf_counter()
    for _ in range(n):
      step()
    sync()
    times.append((time.perf_counter() - start) / n)
  median = float(np.median(times))
  return {"step_s": median, "steps_per_window": n, "windows": windows,
          "spread": float((max(times) - min(times)) / median)}


def rates(w: Workload, step_s: float, peak_tflops: float = PEAK_BF16_TFLOPS) -> dict:
  """Examples/s, achieved model TFLOP/s and MFU of a step time."""
  flops = model_flops(w)
  return {"examples_per_s": w.examples / step_s, "model_tflop_per_step": flops / 1e12,
          "achieved_tflops": flops / step_s / 1e12, "mfu": flops / step_s / 1e12 / peak_tflops}


def run_jax(w: Workload, params=None, batch=None, target_s: float = 1.0) -> tuple[dict, Callable]:
  """Compiles and times edistill's step; returns (figures, ``more(n)``: n further steps, metrics of the
  last, for a profile). ``first_loss`` is the loss of the first step (before any update)."""
  params = init_params(w) if params is None else params
  state, step, batch_sh = jax_step(w, params)
  batch = jax.device_put(random_batch(w) if batch is None else batch, batch_sh)
  start = time.perf_counter()
  compiled = step.lower(state, None, batch).compile()
  compile_s = time.perf_counter() - start
  holder = {}
  holder["state"], metrics = compiled(state, None, batch)
  first_loss = float(metrics["loss"])

  def one():
    holder["state"], holder["metrics"] = compiled(holder["state"], None, batch)

  timing = time_loop(one, lambda: jax.block_until_ready(holder["metrics"]), target_s)
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost

  def more(n: int):
    for _ in range(n):
      one()
    return jax.block_until_ready(holder["metrics"])

  more.hlo = compiled.as_text  # The optimized HLO, for train_gpu.py's ``hlo:`` measurement.

  figures = {"framework": "edistill", "compile_s": compile_s, "first_loss": first_loss,
             "last_loss": float(holder["metrics"]["loss"]), **timing, **rates(w, timing["step_s"]),
             "xla_cost_analysis_tflop": float((cost or {}).get("flops", 0.0)) / 1e12}
  return figures, more
