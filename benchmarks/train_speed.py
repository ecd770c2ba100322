"""Train-step throughput: edistill's jitted train step vs an equivalent PyTorch step, same CPU.

    .venv/bin/python benchmarks/train_speed.py [--batch 32] [--query-length 32] [--steps 20] [--json out.json]

The step is the ``qemb`` row of configs/ablation.py: the packaged all-MiniLM-L6-v2 as an asymmetric
student (its query tower is trained; documents are the frozen teacher's precomputed embeddings),
mean pooling + L2 normalisation (the checkpoint's own head), a query projection 384 -> 768, teacher
tables = fixed random unit vectors [N, 768] (precomputed mode: the teacher costs a gather), and
  label loss (temperature 0.05) + score distillation softmax_ce (0.05 / 0.05) + query embedding
  matching l2, all weight 1;
AdamW (lr 5e-5, constant; weight decay 0.01 on matrices except embedding tables), global-norm
clipping at 1.0, dropout on (edistill: deterministic=False; PyTorch: model.train()).

Batches come from ``edistill.data.pipeline`` with the real tokenizer: queries are first sentences of
Python stdlib docstrings (real short English, deterministic), right-padded to ``--query-length``
as the pipeline does; documents are the in-batch positives (+ ``--hard-negatives``), and
``negative_mask`` is the pipeline's (every 8th query has a second relevant document, so some
in-batch columns are masked false negatives). Each timed step takes the next of a few distinct
batches and includes moving it from NumPy to the framework.

PyTorch reference: transformers ``AutoModel`` (SDPA attention, no pooler), the same pooling,
projection and loss formulas written in torch, ``torch.optim.AdamW`` + ``clip_grad_norm_``.
Two variants are timed: ``torch`` gets exactly edistill's padded batch; ``torch_dynamic`` trims each
batch to its longest row first (what a dynamic-padding collator gives a PyTorch user).

Before timing, both compute the loss (and the gradient norm) of the same batch from the same
parameters with dropout off. Then: warm-up (compilation), ``--steps`` steps of each interleaved
(edistill, torch, torch_dynamic, edistill, ...) in this process, medians; a breakdown of the
same step into forward, forward+backward and the rest (optimizer); and peak resident memory of
each framework's loop (load, compile, 2 + ``--memory-steps`` steps) run alone in a fresh subprocess
(``--only jax|torch``; the jax one builds the encoder as zoo.load does but without the tokenizer,
whose transformers loader imports torch). Peak = the kernel's VmHWM: ``ru_maxrss`` is inherited
across fork + exec on Linux, so in a child of this process it reports this process's peak.
The JSON records the 1-minute load average at start and end: with other processes on the cores,
PyTorch's OpenMP threads slow down far more than XLA's (seen: 7 s instead of 0.46 s a step at load
7 on 2 cores), so only runs with a low load compare the frameworks.
Requires the `bench` extra (torch).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import GRAD_CLIP, TEACHER_DIM, add_malloc_flag, apply_malloc, stdlib_docstrings  # noqa: E402

WEIGHTS = {"label": 1.0, "score": 1.0, "query_emb": 1.0}  # configs/ablation.py row=qemb (steps.LOSS).


# ------------------------------------------------------------------------------------------ data
def stdlib_sentences(n: int) -> list[tuple[str, str]]:
  """(first sentence, paragraph) of stdlib docstrings: short real queries with their documents."""
  pairs = [(t.split(". ")[0].rstrip("."), t) for t in stdlib_docstrings()]
  return [(q, d) for q, d in pairs if len(q.split()) >= 3][:n]


def make_data(tokenizer, args) -> dict[str, np.ndarray]:
  """Pipeline batches (stacked over ``--distinct-batches``), teacher tables, projection init."""
  import jax

  from edistill.data import pipeline
  from edistill.models.dual_encoder import init_projection

  pairs = stdlib_sentences(args.texts)
  n = len(pairs)
  queries = pipeline.tokenize_texts(tokenizer, [q for q, _ in pairs], args.query_length)
  docs = pipeline.tokenize_texts(tokenizer, [d for _, d in pairs], args.doc_length)
  # Query i is about its own docstring; every 8th also about the next one (a false negative
  # whenever both land in one batch, so negative_mask is not all False).
  positives = {q: np.array([q, q + 1] if q % 8 == 0 and q + 1 < n else [q], np.int32) for q in range(n)}
  examples = pipeline.build_examples(positives, n, num_hard_negatives=args.hard_negatives, seed=0)
  pipe = pipeline.Pipeline(examples, queries, docs, args.batch, seed=0, positives=positives)
  batches = [pipe.batch(s) for s in range(args.distinct_batches)]
  rng = np.random.default_rng(0)

  def unit(rows):
    x = rng.standard_normal((rows, TEACHER_DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)

  proj = init_projection(jax.random.key(1), args.hidden, TEACHER_DIM)
  data = {f"batch/{k}": np.stack([b[k] for b in batches]) for k in batches[0]}
  data.update({"teacher/queries": unit(n), "teacher/docs": unit(n), "proj/kernel": np.asarray(proj["kernel"]),
               "proj/bias": np.asarray(proj["bias"]), "query_lengths": queries.lengths})
  return data


def batches_of(data) -> list[dict[str, np.ndarray]]:
  keys = [k for k in data if k.startswith("batch/")]
  return [{k[len("batch/"):]: data[k][i] for k in keys} for i in range(len(data[keys[0]]))]


# -------------------------------------------------------------------------------------- edistill
class Edistill:
  """edistill's own train step (jit_train_step with shardings and donation), on one CPU device."""

  def __init__(self, path, data, pre=None):
    import jax
    import jax.numpy as jnp

    import steps
    from edistill import teachers
    from edistill.models import hf_import
    from edistill.models.dual_encoder import DualEncoder
    from edistill.models.encoder import Encoder
    from edistill.objective import compute_loss
    from edistill.train.step import jit_train_step

    head = hf_import.read_head(path)
    if pre is None:  # zoo.load minus its tokenizer (transformers' AutoTokenizer imports torch).
      cfg, params = hf_import.load_params(path)
      module = Encoder(cfg, pooling=head.pooling, normalize=head.normalize, projection_dim=head.projection_dim)
    else:
      module, params = pre.module, pre.params
      assert module == Encoder(hf_import.read_config(path), pooling=head.pooling, normalize=head.normalize,
                               projection_dim=head.projection_dim), "the --only jax encoder would differ"
    self.jax, self.jnp = jax, jnp
    self.student = DualEncoder(module, None, "asymmetric")
    self.teacher = teachers.Teacher(module, "precomputed")  # Precomputed: the encoder is never applied.
    self.cfg, self.tx = steps.LOSS, steps.optimizer()
    self.params = jax.device_put({"query_tower": params,
                                  "query_projection": {"kernel": data["proj/kernel"], "bias": data["proj/bias"]}})
    self.state, self.fn, self.batch_sh = steps.one_device_step(
        self.params, self.tx, lambda *sh: jit_train_step(self.student, self.teacher, self.cfg, self.tx, *sh))
    self.tables = {"queries": data["teacher/queries"], "docs": data["teacher/docs"]}  # Host side, as in training.
    self.tp = self.teacher.device_params(self.tables)
    kw = dict(student=self.student, teacher=self.teacher, cfg=self.cfg)
    self.loss_fn = jax.jit(lambda p, tp, b, rng, det: compute_loss(p, tp, b, rng, deterministic=det, **kw),
                           static_argnums=4)
    self.grad_fn = jax.jit(jax.value_and_grad(lambda p, tp, b, rng, det: compute_loss(
        p, tp, b, rng, deterministic=det, **kw)[0]), static_argnums=4)
    self.n_params = sum(int(np.size(x)) for x in jax.tree.leaves(self.params))

  def rows(self, batch):
    """The batch with the teacher's rows gathered on the host (what the train loop ships)."""
    return {**batch, **self.teacher.host_inputs(self.tables, batch)}

  def step(self, batch):
    self.state, metrics = self.fn(self.state, self.tp, self.jax.device_put(self.rows(batch), self.batch_sh))
    self.jax.block_until_ready((self.state, metrics))
    return metrics

  def forward(self, batch, deterministic=False):
    out = self.loss_fn(self.params, self.tp, self.jax.device_put(self.rows(batch)), self.jax.random.key(0),
                       deterministic)
    return self.jax.block_until_ready(out)

  def forward_backward(self, batch, deterministic=False):
    out = self.grad_fn(self.params, self.tp, self.jax.device_put(self.rows(batch)), self.jax.random.key(0),
                       deterministic)
    return self.jax.block_until_ready(out)

  def check(self, batch):
    """Loss terms and gradient norm with dropout off, from the initial parameters."""
    import optax
    loss, metrics = self.forward(batch, deterministic=True)
    _, grads = self.forward_backward(batch, deterministic=True)
    terms = {k: float(metrics[f"{k}/loss"]) for k in WEIGHTS}
    return {"loss": float(loss), **terms, "grad_norm": float(optax.global_norm(grads))}


# --------------------------------------------------------------------------------------- PyTorch
class Torch:
  """The same step in PyTorch: transformers BertModel (SDPA) + the same head, losses and AdamW."""

  def __init__(self, path, data, threads, dynamic=False):
    import torch
    import torch_steps
    import transformers

    torch.set_num_threads(threads)
    transformers.logging.set_verbosity_error()  # The (expected) unused-pooler-weights load report.
    self.torch, self.torch_steps, self.dynamic = torch, torch_steps, dynamic
    self.model = transformers.AutoModel.from_pretrained(str(path), attn_implementation="sdpa",
                                                        add_pooling_layer=False).train()
    kernel = torch.from_numpy(np.array(data["proj/kernel"]))
    self.proj = torch.nn.Linear(*kernel.shape)
    with torch.no_grad():
      self.proj.weight.copy_(kernel.T)
      self.proj.bias.copy_(torch.from_numpy(np.array(data["proj/bias"])))
    self.t_q = torch.from_numpy(np.array(data["teacher/queries"]))
    self.t_d = torch.from_numpy(np.array(data["teacher/docs"]))
    named = [*self.model.named_parameters(), *(("proj." + k, v) for k, v in self.proj.named_parameters())]
    self.params = [p for _, p in named]
    self.opt = torch_steps.adamw(named)
    self.n_params = sum(p.numel() for p in self.params)

  def loss(self, batch):
    torch, F = self.torch, self.torch.nn.functional
    ids = torch.from_numpy(batch["query_input_ids"]).long()
    mask = torch.from_numpy(batch["query_attention_mask"]).long()
    if self.dynamic:
      longest = int(mask.sum(1).max())
      ids, mask = ids[:, :longest], mask[:, :longest]
    states = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
    q_p = self.proj(F.normalize(self.torch_steps.mean_pool(states, mask), dim=-1))  # Mean pool + Normalize.
    t_q = self.t_q[torch.from_numpy(batch["query_index"]).long()]
    t_d = self.t_d[torch.from_numpy(batch["doc_index"]).long().reshape(-1)]
    terms = self.torch_steps.qemb_terms(q_p, t_q, t_d, torch.from_numpy(batch["negative_mask"]))
    return sum(WEIGHTS[k] * v for k, v in terms.items()), terms

  def step(self, batch):
    loss, _ = self.loss(batch)
    self.opt.zero_grad(set_to_none=True)
    loss.backward()
    self.torch.nn.utils.clip_grad_norm_(self.params, GRAD_CLIP)
    self.opt.step()
    return loss.item()

  def forward(self, batch):
    return self.loss(batch)[0].item()

  def forward_backward(self, batch):
    loss, _ = self.loss(batch)
    self.opt.zero_grad(set_to_none=True)
    loss.backward()
    return loss.item()

  def check(self, batch):
    self.model.eval()
    try:
      self.opt.zero_grad(set_to_none=True)
      loss, terms = self.loss(batch)
      loss.backward()
      norm = self.torch.sqrt(sum((p.grad.double() ** 2).sum() for p in self.params if p.grad is not None))
      self.opt.zero_grad(set_to_none=True)
      return {"loss": loss.item(), **{k: v.item() for k, v in terms.items()}, "grad_norm": float(norm)}
    finally:
      self.model.train()


# -------------------------------------------------------------------------------------- harness
def interleaved(fns: dict, batches: list, reps: int) -> dict[str, float]:
  """Median seconds per call of each fn(batch), calls interleaved round-robin."""
  times = {k: [] for k in fns}
  for i in range(reps):
    for k, fn in fns.items():
      batch = batches[i % len(batches)]
      start = time.perf_counter()
      fn(batch)
      times[k].append(time.perf_counter() - start)
  return {k: float(np.median(v)) for k, v in times.items()}


def rss_mib() -> dict[str, float]:
  """Current and peak resident memory of this process, MiB.

  The peak is the kernel's VmHWM (per address space, so it restarts at exec). ``ru_maxrss`` is
  reported too, but Linux carries it across fork + exec: in a child of this (multi-GB) benchmark it
  is the parent's peak, not the child's.
  """
  status = {}
  with open("/proc/self/status") as f:
    for line in f:
      key, _, value = line.partition(":")
      if key in ("VmRSS", "VmHWM"):
        status[key] = int(value.split()[0]) / 1024
  return {"rss_now_mib": status["VmRSS"], "peak_rss_mib": status["VmHWM"],
          "ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def only(args) -> dict:
  """One framework's loop alone in this (fresh) process: its peak resident memory."""
  data = dict(np.load(args.data))
  batches = batches_of(data)
  start = time.perf_counter()
  if args.only == "jax":
    runner = Edistill(args.model_path, data)
  else:
    runner = Torch(args.model_path, data, args.threads)
  loaded = rss_mib()["rss_now_mib"]
  for b in batches[:2]:
    runner.step(b)
  times = []
  for i in range(args.memory_steps):
    t0 = time.perf_counter()
    runner.step(batches[i % len(batches)])
    times.append(time.perf_counter() - t0)
  return {"framework": args.only, "rss_after_load_mib": loaded, **rss_mib(), "steps": args.memory_steps,
          "median_step_s_alone": float(np.median(times)), "wall_s": time.perf_counter() - start,
          "torch_imported": "torch" in sys.modules, "jax_imported": "jax" in sys.modules}


def subprocess_memory(args, data_path: Path, path: Path, framework: str) -> dict:
  cmd = [sys.executable, __file__, "--only", framework, "--malloc", args.malloc, "--data", str(data_path), "--model-path", str(path),
         "--threads", str(args.threads), "--memory-steps", str(args.memory_steps)]
  proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
  if proc.returncode:
    raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


def main(args) -> dict:
  import jax
  import torch
  import transformers

  from edistill.models import zoo

  t_start, load_start = time.perf_counter(), os.getloadavg()
  pre = zoo.load(args.model)
  args.hidden = pre.config.hidden_size
  path = zoo.resolve(args.model)
  data = make_data(pre.tokenizer, args)
  batches = batches_of(data)
  lengths = data["query_lengths"]
  ours = Edistill(path, data, pre)
  theirs = Torch(path, data, args.threads)
  theirs_dyn = Torch(path, data, args.threads, dynamic=True)
  assert ours.n_params == theirs.n_params, (ours.n_params, theirs.n_params)

  # --- Same loss and gradient norm, same batch, same initial parameters, dropout off.
  a, b = ours.check(batches[0]), theirs.check(batches[0])
  check = {"edistill": a, "torch": b,
           "max_abs_loss_diff": max(abs(a[k] - b[k]) for k in ("loss", *WEIGHTS)),
           "grad_norm_rel_diff": abs(a["grad_norm"] - b["grad_norm"]) / b["grad_norm"]}

  # --- Warm-up: compile edistill's step (and the breakdown functions), warm PyTorch's allocator.
  t0 = time.perf_counter()
  ours.step(batches[0])
  compile_s = time.perf_counter() - t0
  for bt in batches[:2]:
    ours.step(bt), theirs.step(bt), theirs_dyn.step(bt)
    ours.forward(bt), ours.forward_backward(bt)

  t = interleaved({"edistill": ours.step, "torch": theirs.step, "torch_dynamic": theirs_dyn.step}, batches, args.steps)
  reps = max(3, args.steps // 2)
  parts = interleaved({"edistill_fwd": ours.forward, "torch_fwd": theirs.forward,
                       "edistill_fwd_bwd": ours.forward_backward, "torch_fwd_bwd": theirs.forward_backward},
                      batches, reps)
  bsz = args.batch
  results = {
      "model": args.model, "malloc": args.malloc, "batch": bsz, "query_length": args.query_length, "doc_length": args.doc_length,
      "hard_negatives": args.hard_negatives, "docs_per_batch": bsz * (1 + args.hard_negatives),
      "mean_query_tokens": float(lengths.mean()),
      "mean_longest_row_per_batch": float(np.mean([bt["query_attention_mask"].sum(1).max() for bt in batches])),
      "params": ours.n_params, "steps": args.steps, "torch_threads": args.threads,
      "torch": torch.__version__, "transformers": transformers.__version__, "jax": jax.__version__,
      "cpu": platform.processor() or platform.machine(), "edistill_compile_s": compile_s,
      "check": check,
      "step_s": t,
      "edistill_ex_per_s": bsz / t["edistill"], "torch_ex_per_s": bsz / t["torch"],
      "torch_dynamic_ex_per_s": bsz / t["torch_dynamic"],
      "ratio": t["torch"] / t["edistill"], "ratio_vs_dynamic": t["torch_dynamic"] / t["edistill"],
      "breakdown_s": {
          "edistill": {"forward": parts["edistill_fwd"], "forward_backward": parts["edistill_fwd_bwd"],
                       "optimizer_and_rest": t["edistill"] - parts["edistill_fwd_bwd"]},
          "torch": {"forward": parts["torch_fwd"], "forward_backward": parts["torch_fwd_bwd"],
                    "optimizer_and_rest": t["torch"] - parts["torch_fwd_bwd"]}},
  }
  del ours, theirs, theirs_dyn

  # --- Peak memory, each framework alone in a fresh process.
  if not args.no_memory:
    with tempfile.TemporaryDirectory() as tmp:
      data_path = Path(tmp) / "data.npz"
      np.savez(data_path, **data)
      mem = {fw: subprocess_memory(args, data_path, path, fw) for fw in ("jax", "torch")}
    results["memory"] = {**mem, "peak_ratio_edistill_over_torch": mem["jax"]["peak_rss_mib"] / mem["torch"]["peak_rss_mib"]}
  results["wall_s"] = time.perf_counter() - t_start
  # Other processes on the machine: timings are only comparable when these stay near 0-1 on 2 cores.
  results["loadavg_1min_start_end"] = [load_start[0], os.getloadavg()[0]]
  return results


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--model", default="minilm-l6")
  parser.add_argument("--batch", type=int, default=32, help="global batch (queries)")
  parser.add_argument("--query-length", type=int, default=32)
  parser.add_argument("--doc-length", type=int, default=128, help="document tokens ride in the batch (as the pipeline builds it); "
                      "an asymmetric student never encodes them")
  parser.add_argument("--hard-negatives", type=int, default=0)
  parser.add_argument("--texts", type=int, default=2048)
  parser.add_argument("--distinct-batches", type=int, default=8)
  parser.add_argument("--steps", type=int, default=20, help="timed steps per framework")
  parser.add_argument("--memory-steps", type=int, default=5, help="steps in each memory subprocess")
  parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch threads")
  parser.add_argument("--no-memory", action="store_true")
  parser.add_argument("--json", type=Path, default=None, help="also write the results here")
  add_malloc_flag(parser)
  parser.add_argument("--only", choices=("jax", "torch"), help=argparse.SUPPRESS)
  parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
  parser.add_argument("--model-path", type=Path, help=argparse.SUPPRESS)
  return parser.parse_args(argv)


if __name__ == "__main__":
  args = parse_args()
  apply_malloc(args.malloc)  # Before either framework starts threads; both run under it.
  if args.only:
    print(json.dumps(only(args)))
    sys.exit(0)
  results = main(args)
  print(json.dumps(results, indent=2))
  if args.json:
    args.json.write_text(json.dumps(results, indent=2))
