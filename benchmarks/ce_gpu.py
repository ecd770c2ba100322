"""Cross-encoder teachers trained on a lent GPU (issue 19), in three steps:

  # 1. here (CPU): the benchmark, the dual encoder's mined negatives and first stage, MiniLM's weights
  .venv/bin/python benchmarks/ce_gpu.py pack --pack .gpu19
  # 2. on the GPU machine (jax, flax, optax there; nothing downloaded): train, curve, score
  python3 benchmarks/ce_gpu.py train --pack .gpu19 --out $OUT
  # 3. here: metrics and paired intervals with edistill's evaluator, the CE outputs for ce_distill
  .venv/bin/python benchmarks/ce_gpu.py report --pack .gpu19 --results DIR --out runs/ce_gpu
  # 4. here: students of each (configs/ce_distill.py:...,outputs=runs/ce_gpu/outputs_<head>.npz), compared
  .venv/bin/python benchmarks/ce_gpu.py students --report runs/ce_gpu --runs de=W1,dual=W2,cls=W3

The pack holds only what the device cannot rebuild offline, as token ids: the WordNet -> GCIDE
benchmark at ``--arg`` (configs/cross_encoder.py's arguments), each training query's positives and
the MPNet dual encoder's mined hard negatives (its top ``depth``, likely false negatives left out),
the dev/test queries' first-stage top 100, the (query, document) pairs of ``configs/ce_distill.py``'s
training examples, and all-MiniLM-L6-v2's encoder weights with the word-embedding table cut to the
rows these texts use (ids remapped): no other row is ever read, so training is the same as with the
full table, and the pack fits the device's 64 MiB carry.

``train`` trains each (head, learning rate) of ``--runs`` with edistill's own CE model, loss,
optimizer and jitted step (bf16 compute, float32 params; ``queries`` x (positive + ``negatives``
hard negatives drawn afresh each step); every ``dev_every`` steps it re-ranks the dev split's top 100
and keeps the best dev params of each head (all choices on dev). The chosen CE of each head then
re-ranks the test split's top 100 and scores the ce_distill pairs (and, dual head, keeps their pooled
query vectors). ``report`` turns the scores into edistill results tables (paired bootstrap against
the first stage) and ``outputs_<head>.npz`` files for ``configs/ce_distill.py:...,outputs=FILE``,
plus ``outputs_de.npz``: the dual encoder's scores and query embeddings over the same pairs, so its
student differs from the CE students in the teacher alone.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PACK_ARG = "init=minilm-l6,layers=0,corpus=10000,n_test=1000,n_dev=500,depth=30"
DISTILL_ARG = "kind=asymmetric,corpus=10000,n_test=1000,n_dev=500,hard=3,depth=30"
TOP = 100
CHUNK_MIB = 15  # Files back from the device are at most 16 MiB each.


# --------------------------------------------------------------------------------------------- pack


def ml_dtypes_bits(x: np.ndarray) -> np.ndarray:
  """float32 -> the uint16 bit patterns of its bfloat16 rounding (nearest even)."""
  import ml_dtypes
  return np.asarray(x, np.float32).astype(ml_dtypes.bfloat16).view(np.uint16)


def bits_to_float32(bits: np.ndarray) -> np.ndarray:
  """uint16 bfloat16 bit patterns -> float32 (exact)."""
  return (bits.astype(np.uint32) << 16).view(np.float32)


def _rows_padded(rows: list, fill: int = -1) -> np.ndarray:
  width = max((len(r) for r in rows), default=0)
  out = np.full((len(rows), max(width, 1)), fill, np.int32)
  for i, r in enumerate(rows):
    out[i, :len(r)] = r
  return out


def pack(args, edit=lambda cfg: cfg) -> None:
  """Writes the pack (module doc) to ``args.pack``; ``edit(cfg)`` adjusts both configs (tests: tiny models)."""
  import dataclasses

  from flax import traverse_util

  from configs import ce_distill as ce_distill_config
  from configs import cross_encoder as ce_config
  from edistill.data import pipeline
  from edistill.eval import rerank
  from edistill.eval.suite import load_split
  from edistill.models import cross_encoder as ce_lib
  from edistill.recipes import cross_encoder as ce_recipe
  from edistill.recipes import embed_distill

  cfg = edit(ce_config.get_config(args.arg))
  model, pre = ce_lib.load(cfg.student, cfg.cross_encoder)
  template = ce_lib.PairTemplate.from_tokenizer(pre.tokenizer)
  bq, bd = template.budgets(cfg.data.max_query_length, cfg.data.max_doc_length)
  data, _ = ce_recipe._training_data(cfg)  # Train split + the dual encoder's mined negatives.
  tok = lambda texts, budget: ce_lib.content_tokens(pre.tokenizer, texts, budget)
  docs, train_q = tok(data.doc_texts, bd), tok(data.query_texts, bq)
  positives = pipeline.relevant_docs(data.qrels, data.query_ids, data.doc_ids)
  d_row = {d: i for i, d in enumerate(data.doc_ids)}
  ex_q = np.asarray([q for q in sorted(positives) for _ in positives[q]], np.int32)
  ex_d = np.asarray([d for q in sorted(positives) for d in positives[q]], np.int32)
  pools = _rows_padded([[d_row[d] for d in data.hard_negatives.get(q, ()) if d in d_row] for q in data.query_ids])
  out = {"doc_order": np.argsort(np.argsort(np.asarray(data.doc_ids), kind="stable")).astype(np.int32),
         "doc_ids": docs.ids, "doc_len": docs.lengths, "train_q_ids": train_q.ids, "train_q_len": train_q.lengths,
         "train_pos": _rows_padded([positives.get(i, []) for i in range(len(data.query_ids))]),
         "example_query": ex_q, "example_doc": ex_d, "pools": pools}
  meta = {"arg": args.arg, "distill_arg": args.distill_arg, "max_query_length": cfg.data.max_query_length,
          "max_doc_length": cfg.data.max_doc_length, "template": dataclasses.asdict(template),
          "train_queries": len(data.query_ids), "docs": len(data.doc_ids), "examples": len(ex_q)}
  for split in ("dev", "test"):
    sdata = load_split(cfg, split)
    if sdata.doc_ids != data.doc_ids:
      raise ValueError(f"the {split} split's corpus differs from the train split's; the pack assumes one corpus.")
    idx, scores = rerank.first_stage(cfg, sdata, TOP)
    q = tok(sdata.query_texts, bq)
    spos = pipeline.relevant_docs(sdata.qrels, sdata.query_ids, sdata.doc_ids)
    out.update({f"{split}_q_ids": q.ids, f"{split}_q_len": q.lengths, f"{split}_top": idx.astype(np.int32),
                f"{split}_first_stage": scores.astype(np.float32),
                f"{split}_pos": _rows_padded([spos.get(i, []) for i in range(len(sdata.query_ids))])})
    meta[f"{split}_queries"] = len(sdata.query_ids)
    meta[f"{split}_first_stage_mrr10"] = mrr10(out[f"{split}_first_stage"], out[f"{split}_top"], out[f"{split}_pos"],
                                                  out["doc_order"])
  # configs/ce_distill.py's training examples: the (query, document) pairs its teacher outputs cover.
  dcfg = edit(ce_distill_config.get_config(args.distill_arg))
  ddata, _ = ce_recipe._training_data(dcfg)
  if ddata.query_ids != data.query_ids or ddata.doc_ids != data.doc_ids:
    raise ValueError("the ce_distill config's training data differs from the CE's; align corpus/n_test/n_dev.")
  examples = embed_distill.student_pipeline(dcfg, ddata, pre.tokenizer, 0, 1).examples
  uq, ud, _ = ce_recipe.example_pairs(examples, len(data.doc_ids))
  out["distill_query"], out["distill_doc"] = uq.astype(np.int32), ud.astype(np.int32)
  meta["distill_pairs"] = len(uq)
  # The word-embedding rows these texts use (+ the template's specials and pad), ids remapped.
  token_keys = [k for k in out if k.endswith("_ids")]
  used = np.unique(np.concatenate([out[k].reshape(-1) for k in token_keys] + [
      np.asarray([*template.prefix, *template.middle, *template.suffix, template.pad_id])]))
  remap = np.zeros(int(used.max()) + 1, np.int32)
  remap[used] = np.arange(len(used))
  for k in token_keys:
    out[k] = remap[out[k]].astype(np.int16 if len(used) < 2 ** 15 else np.int32)
  meta["template"].update(prefix=remap[list(template.prefix)].tolist(), middle=remap[list(template.middle)].tolist(),
                          suffix=remap[list(template.suffix)].tolist(), pad_id=int(remap[template.pad_id]))
  flat = {"/".join(k): np.asarray(v, np.float32) for k, v in
          traverse_util.flatten_dict(ce_lib.encoder_params(pre)).items()}
  word = "embeddings/word/embedding"  # models/encoder.py's name for the token table.
  if flat.get(word, np.zeros((0, 0))).shape[0] != pre.config.vocab_size:
    raise ValueError(f"no {pre.config.vocab_size}-row word-embedding table at {word!r} in {sorted(flat)[:5]}...")
  flat[word] = flat[word][used]
  config = dataclasses.asdict(pre.config)
  config.update(vocab_size=len(used), pad_token_id=int(remap[pre.config.pad_token_id]))
  meta.update(config=config, used_vocab=len(used), full_vocab=pre.config.vocab_size)
  path = Path(args.pack)
  path.mkdir(parents=True, exist_ok=True)
  np.savez(path / "data.npz", **out)
  # Matrices travel as bfloat16 bit patterns (the step computes in bf16; only the float32 master copy's
  # starting point is rounded, by <= 2^-9 relative), vectors (norms, biases) as float32: 36 MiB, not 71.
  meta["bf16_weights"] = sorted(k for k, v in flat.items() if v.ndim == 2)
  np.savez(path / "weights.npz", **{k: ml_dtypes_bits(v) if k in meta["bf16_weights"] else v for k, v in flat.items()})
  (path / "meta.json").write_text(json.dumps(meta, indent=1))
  # Ids of every row, kept here (the device needs none): the report maps rows back to them.
  np.savez(path.parent / f"{path.name}_ids.npz", query_ids=np.asarray(data.query_ids), doc_ids=np.asarray(data.doc_ids))
  mib = sum(f.stat().st_size for f in path.iterdir()) / 2 ** 20
  print(f"pack {path}: {mib:.1f} MiB; {len(used)} of {pre.config.vocab_size} vocabulary rows; {meta}")


# --------------------------------------------------------------------------------------------- train


def _load_pack(path: Path):
  meta = json.loads((path / "meta.json").read_text())
  with np.load(path / "data.npz") as z:
    data = {k: z[k].astype(np.int32) if k.endswith("_ids") else z[k] for k in z}
  with np.load(path / "weights.npz") as z:
    weights = {k: bits_to_float32(z[k]) if k in meta["bf16_weights"] else z[k] for k in z}
  return meta, data, weights


def _template(meta):
  from edistill.models import cross_encoder as ce_lib
  t = meta["template"]
  return ce_lib.PairTemplate(tuple(t["prefix"]), tuple(t["middle"]), tuple(t["suffix"]), t["pad_id"], t["token_types"])


def sample_batch(data, rows: np.ndarray, negatives: int, rng: np.random.Generator) -> np.ndarray:
  """[b, 1 + negatives] doc rows: each example's positive, then ``negatives`` of its query's mined
  pool drawn without replacement (random non-positive documents where the pool is short)."""
  q, pos = data["example_query"][rows], data["example_doc"][rows]
  out = np.empty((len(rows), 1 + negatives), np.int32)
  out[:, 0] = pos
  num_docs = len(data["doc_len"])
  for i, qi in enumerate(q):
    pool = data["pools"][qi]
    pool = pool[pool >= 0]
    pick = list(rng.choice(pool, min(negatives, len(pool)), replace=False)) if len(pool) else []
    known = set(data["train_pos"][qi].tolist()) | set(pick)
    while len(pick) < negatives:
      d = int(rng.integers(num_docs))
      if d not in known:
        pick.append(d)
        known.add(d)
    out[i, 1:] = pick
  return out


def mrr10(scores: np.ndarray, top: np.ndarray, pos: np.ndarray, doc_order: np.ndarray | None = None) -> float:
  """Mean reciprocal rank at 10 of re-ranking ``top`` [Q, k] by ``scores`` [Q, k], ties broken by
  ``doc_order`` [Nd] descending (each document's rank in doc-id string order: trec_eval's tie-break,
  as ``eval/metrics.py``). For choosing the dev step on the device; ``report`` recomputes the
  figures with edistill's evaluator and checks they agree."""
  tie = doc_order[np.maximum(top, 0)] if doc_order is not None else np.zeros(top.shape, np.int64)
  order = np.lexsort((-tie, -scores.astype(np.float64)), axis=1)[:, :10]
  ranked = np.take_along_axis(top, order, 1)
  hit = (ranked[:, :, None] == pos[:, None, :]).any(-1) & (pos[:, :1] >= 0)
  first = np.where(hit.any(1), hit.argmax(1) + 1, 0)
  return float(np.mean(np.where(first > 0, 1.0 / np.maximum(first, 1), 0.0)))


class Scorer:
  """Scores (and dual pooled query vectors of) (query, doc) row pairs with a CE, in fixed-shape batches."""

  def __init__(self, model, template, length, data, split_q, batch: int):
    import jax
    import jax.numpy as jnp
    from edistill.models import cross_encoder as ce_lib
    self.template, self.length, self.data, self.split_q, self.batch = template, length, data, split_q, batch

    def fn(p, pairs, pooled):
      if not pooled:
        return ce_lib.apply_flat(model, p, pairs), jnp.zeros((1,), jnp.float32)
      q, d = ce_lib.apply_flat(model, p, pairs, method="pooled")
      return jnp.sum(q * d, -1), q.astype(jnp.float16)

    self.fn, self.pack_pairs = jax.jit(fn, static_argnums=2), ce_lib.pack_pairs

  def __call__(self, params, q_rows: np.ndarray, d_rows: np.ndarray, pooled: bool = False):
    qi, ql = self.data[f"{self.split_q}_q_ids"], self.data[f"{self.split_q}_q_len"]
    scores, vecs = [], []
    for s in range(0, len(q_rows), self.batch):
      q, d = q_rows[s:s + self.batch], d_rows[s:s + self.batch]
      pad = self.batch - len(q)
      q, d = np.concatenate([q, np.repeat(q[:1], pad)]), np.concatenate([d, np.repeat(d[:1], pad)])
      pairs = self.pack_pairs(self.template, qi[q], ql[q], self.data["doc_ids"][d], self.data["doc_len"][d],
                              self.length)
      sc, v = self.fn(params, pairs, pooled)
      scores.append(np.asarray(sc)[:self.batch - pad])
      if pooled:
        vecs.append(np.asarray(v)[:self.batch - pad])
    return np.concatenate(scores).astype(np.float32), (np.concatenate(vecs) if pooled else None)

  def rerank(self, params, split: str) -> np.ndarray:
    """[Q, k] CE scores of ``split``'s first-stage top k (-inf where the first stage had no hit)."""
    top = self.data[f"{split}_top"]
    q, c = np.nonzero(top >= 0)
    out = np.full(top.shape, -np.inf, np.float32)
    out[q, c] = self(params, q.astype(np.int32), top[q, c])[0]
    return out


def train(args) -> None:
  import functools

  import jax
  import jax.numpy as jnp
  from flax import traverse_util

  from edistill.models import cross_encoder as ce_lib
  from edistill.models.encoder import TransformerConfig
  from edistill.objective import cross_encoder_loss
  from edistill.train import state as state_lib
  from edistill.train.step import jit_loss_step
  sys.path.insert(0, str(Path(__file__).parent))
  from steps import one_device_step

  t_start = time.perf_counter()
  out_dir = Path(args.out)
  out_dir.mkdir(parents=True, exist_ok=True)
  meta, data, weights = _load_pack(Path(args.pack))
  if args.limit:  # CPU smoke test: a slice of every split.
    for k in ("dev", "test"):
      for f in ("q_ids", "q_len", "top", "first_stage", "pos"):
        data[f"{k}_{f}"] = data[f"{k}_{f}"][:args.limit, :args.limit_k] if f in ("top", "first_stage") else \
            data[f"{k}_{f}"][:args.limit]
    data["distill_query"], data["distill_doc"] = data["distill_query"][:args.limit], data["distill_doc"][:args.limit]
  template = _template(meta)
  length = meta["max_query_length"] + meta["max_doc_length"]
  config = TransformerConfig(**meta["config"])
  if args.layers:
    config = config.with_layers(args.layers)
    weights = {k: v for k, v in weights.items() if not k.startswith("layer_") or int(k.split("/")[0][6:]) < args.layers}
  encoder = jax.tree.map(jnp.asarray, traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in weights.items()}))
  log = {"device": str(jax.devices()[0]), "meta": {k: meta[k] for k in meta if k != "config"}, "runs": [], "chosen": {}}
  print(json.dumps(log["meta"]), flush=True)
  save_log = lambda: (out_dir / "log.json").write_text(json.dumps(log, indent=1))
  n_ex = len(data["example_query"])
  best, all_dev, tests = {}, {}, {}
  for spec in args.runs.split(";"):
    head, lr = spec.split(":")
    lr = float(lr)
    if time.perf_counter() - t_start > args.budget_s:
      print(f"skipped {spec}: {args.budget_s} s budget spent", flush=True)
      log["runs"].append({"head": head, "lr": lr, "skipped": True})
      continue
    model = ce_lib.CrossEncoder(config, head, True, jnp.bfloat16 if args.bf16 else jnp.float32)
    params = ce_lib.init_params(model, encoder, args.seed)
    tx = state_lib.make_optimizer(lr, args.steps, max(1, args.steps // 10), 0.01, 1.0, "cosine", ())
    loss_fn = lambda p, _, batch, rng, model=model: cross_encoder_loss(p, batch, rng, model=model,
                                                                       temperature=args.temperature)
    state, step, batch_sh = one_device_step(params, tx, lambda *sh: jit_loss_step(loss_fn, tx, *sh))
    dev_scorer = Scorer(model, template, length, data, "dev", args.eval_batch)
    rng = np.random.default_rng([args.seed, 19])
    order = np.concatenate([rng.permutation(n_ex) for _ in range(-(-args.steps * args.queries // n_ex) + 1)])
    run = {"head": head, "lr": lr, "steps": args.steps, "queries": args.queries, "negatives": args.negatives,
           "curve": [], "losses": []}
    log["runs"].append(run)
    train_s, compile_s, t0 = 0.0, None, time.perf_counter()
    for i in range(1, args.steps + 1):
      rows = order[(i - 1) * args.queries:i * args.queries]
      cand = sample_batch(data, rows, args.negatives, rng)
      q = data["example_query"][rows]
      q_ids = data["train_q_ids"][q]
      batch = ce_lib.pack_pairs(template, np.broadcast_to(q_ids[:, None], (len(q), cand.shape[1], q_ids.shape[1])),
                                np.broadcast_to(data["train_q_len"][q][:, None], cand.shape), data["doc_ids"][cand],
                                data["doc_len"][cand], length)
      batch.update(positive_col=np.zeros(len(q), np.int32), candidate_mask=np.ones(cand.shape, bool))
      state, metrics = step(state, None, jax.device_put(batch, batch_sh))
      if i == 1:
        jax.block_until_ready(state)
        compile_s = time.perf_counter() - t0
        t0 = time.perf_counter()
      if i % args.dev_every == 0 or i == args.steps:
        loss = float(metrics["loss"])  # Syncs: the step time below is the wall time of steps 2..i.
        train_s = time.perf_counter() - t0
        t_eval = time.perf_counter()
        sc = dev_scorer.rerank(state.params, "dev")
        dev = mrr10(sc, data["dev_top"], data["dev_pos"], data.get("doc_order"))
        eval_s = time.perf_counter() - t_eval
        all_dev[f"{head}_{lr:g}_step_{i}"] = sc.astype(np.float16)
        run["curve"].append({"step": i, "dev_mrr10": dev, "train_s": train_s, "eval_s": eval_s, "loss": loss})
        print(f"{head} lr={lr} step {i}: loss {loss:.4f} dev MRR@10 {dev:.4f} ({train_s:.1f} s training, "
              f"{eval_s:.1f} s dev re-rank)", flush=True)
        if head not in best or dev > best[head]["dev_mrr10"]:
          best[head] = {"dev_mrr10": dev, "lr": lr, "step": i,
                        "params": jax.tree.map(lambda x: jnp.array(x, copy=True), state.params), "model": model}
        save_log()
        t0 = time.perf_counter() - train_s  # Evaluation time is not training time.
    run.update(compile_s=compile_s, step_ms=1000 * train_s / max(args.steps - 1, 1),
               pairs_per_s=(args.steps - 1) * args.queries * (1 + args.negatives) / max(train_s, 1e-9))
    np.savez_compressed(out_dir / "dev.npz", **all_dev)
    save_log()
  for head, b in best.items():
    scorer = Scorer(b["model"], template, length, data, "test", args.eval_batch)
    t0 = time.perf_counter()
    test = scorer.rerank(b["params"], "test")
    test_s = time.perf_counter() - t0
    train_scorer = Scorer(b["model"], template, length, data, "train", args.eval_batch)
    t0 = time.perf_counter()
    scores, vecs = train_scorer(b["params"], data["distill_query"], data["distill_doc"], pooled=head == "dual")
    distill_s = time.perf_counter() - t0
    log["chosen"][head] = {"lr": b["lr"], "step": b["step"], "dev_mrr10": b["dev_mrr10"], "test_s": test_s,
                           "test_pairs": int((data["test_top"] >= 0).sum()), "distill_s": distill_s,
                           "test_mrr10_device": mrr10(test, data["test_top"], data["test_pos"], data.get("doc_order"))}
    tests.update({f"{head}_test": test, f"{head}_distill": scores})
    np.savez(out_dir / "test.npz", **tests)
    if vecs is not None:  # [P, H] float16, split to fit the device's file limit.
      per = max(1, CHUNK_MIB * 2 ** 20 // (vecs.shape[1] * 2))
      for c, s in enumerate(range(0, len(vecs), per)):
        np.save(out_dir / f"qvec_{head}_{c}.npy", vecs[s:s + per])
    print(f"{head}: chosen lr {b['lr']} step {b['step']} (dev {b['dev_mrr10']:.4f}); test re-rank "
          f"{log['chosen'][head]['test_mrr10_device']:.4f} in {test_s:.1f} s", flush=True)
    save_log()
  log["total_s"] = time.perf_counter() - t_start
  save_log()


# -------------------------------------------------------------------------------------------- report


def report(args, edit=lambda cfg: cfg) -> None:
  """Results tables (edistill's evaluator, paired bootstrap against the first stage), the dev curves
  and ``outputs_<head>.npz`` (+ ``outputs_de.npz``, the dual encoder's) for ce_distill, from a ``train`` run's files in ``--results``."""
  from configs import cross_encoder as ce_config
  from edistill.eval import metrics as metrics_lib
  from edistill.eval import report as report_lib
  from edistill.eval.suite import load_split
  from edistill.recipes import cross_encoder as ce_recipe
  from edistill.recipes import embed_distill

  pack_dir, results, out = Path(args.pack), Path(args.results), Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  meta = json.loads((pack_dir / "meta.json").read_text())
  log = json.loads((results / "log.json").read_text())
  with np.load(pack_dir / "data.npz") as z:
    pack_data = {k: z[k] for k in ("test_top", "test_first_stage", "distill_query", "distill_doc")}
  with np.load(results / "test.npz") as z:
    tests = {k: z[k] for k in z}
  cfg = edit(ce_config.get_config(meta["arg"]))
  data = load_split(cfg, "test")
  top, fs = pack_data["test_top"], pack_data["test_first_stage"]

  def row(scores):
    run = metrics_lib.run_from_topk(data.query_ids, data.doc_ids, top, scores)
    return {**metrics_lib.evaluate(run, data.qrels), report_lib.PER_QUERY: metrics_lib.mrr(run, data.qrels, 10),
            report_lib.RUN: run}

  rows = {"first_stage": row(fs)}
  for head, chosen in log["chosen"].items():
    rows[f"{head}_ce"] = row(tests[f"{head}_test"])
    if abs(rows[f"{head}_ce"]["mrr@10"] - chosen["test_mrr10_device"]) > 1e-6:
      raise AssertionError(f"{head}: the device's MRR@10 {chosen['test_mrr10_device']} disagrees with the "
                           f"evaluator's {rows[f'{head}_ce']['mrr@10']}.")
  rows, runs = report_lib.split_runs(rows)
  rows, per_query = report_lib.teacher_intervals(rows, teacher="first_stage")
  chosen = "; ".join(f"{h}: lr {c['lr']:g}, step {c['step']}" for h, c in log["chosen"].items())
  header = (f"# {cfg.data.source} test: {len(data.query_ids)} queries, {len(data.doc_ids)} documents\n\n"
            f"first_stage = the MPNet dual encoder's exact top {top.shape[1]}; <head>_ce = that top re-ranked by the "
            f"cross-encoder trained on {log['device']} (benchmarks/ce_gpu.py; chosen on dev: {chosen}); "
            f"% first stage: paired bootstrap over these queries.\n\n")
  report_lib.write_results(out, "test", rows, header, per_query, teacher="first_stage", runs=runs)
  print(header + report_lib.results_table(rows, teacher="first_stage"))
  lines = ["| head | lr | step | training s | dev MRR@10 | % DE |", "|---|---|---|---|---|---|"]
  dev_de = float(meta.get("dev_first_stage_mrr10", 0)) or None
  for run in log["runs"]:
    for c in run.get("curve", []):
      pct = f"{100 * c['dev_mrr10'] / dev_de:.1f}" if dev_de else ""
      lines.append(f"| {run['head']} | {run['lr']:g} | {c['step']} | {c['train_s']:.1f} | {c['dev_mrr10']:.4f} | {pct} |")
  (out / "dev_curves.md").write_text("\n".join(lines) + "\n")
  # ce_distill's teacher outputs, one file per head.
  train = embed_distill.training_data(cfg)
  with np.load(pack_dir.parent / f"{pack_dir.name}_ids.npz") as z:
    if z["query_ids"].tolist() != train.query_ids or z["doc_ids"].tolist() != train.doc_ids:
      raise ValueError("the training data differs from the pack's; pack again.")
  for head in log["chosen"]:
    outputs = {"scores": tests[f"{head}_distill"]}
    chunks = sorted(results.glob(f"qvec_{head}_*.npy"), key=lambda f: int(f.stem.rsplit("_", 1)[1]))
    if chunks:
      outputs["query_vectors"] = np.concatenate([np.load(f) for f in chunks]).astype(np.float32)
    ce_recipe.write_outputs(out / f"outputs_{head}.npz", train, pack_data["distill_query"],
                            pack_data["distill_doc"], outputs)
    print(f"wrote {out / f'outputs_{head}.npz'}: {sorted(outputs)}")
  # The dual encoder's own signals over the same pairs (its scores, its query embedding per pair): a
  # student of it through the same recipe differs from the CE students in the teacher alone.
  _, (_, tables) = ce_recipe._training_data(cfg)
  q, d = np.asarray(tables["queries"])[pack_data["distill_query"]], np.asarray(tables["docs"])[pack_data["distill_doc"]]
  ce_recipe.write_outputs(out / "outputs_de.npz", train, pack_data["distill_query"], pack_data["distill_doc"],
                          {"scores": np.sum(q * d, -1), "query_vectors": q})
  print(f"wrote {out / 'outputs_de.npz'}")


def students(args) -> None:
  """Each student's test MRR@10 as a share of the dual encoder's and of its teacher's pipeline (the CE
  re-ranking the DE's top 100), and the students against each other, paired 95 % intervals."""
  from edistill.eval import metrics as metrics_lib
  from edistill.eval import report as report_lib
  pipes = json.loads((Path(args.report) / "per_query_test.json").read_text())
  rr = {}
  for spec in args.runs.split(","):
    name, workdir = spec.split("=")
    per = json.loads(report_lib.result_file(workdir, "test", "per_query").read_text())
    rr[name], de = per["student"], per["teacher"]
    if set(de) != set(pipes["first_stage"]) or abs(np.mean(list(de.values())) - np.mean(
        list(pipes["first_stage"].values()))) > 1e-9:
      raise ValueError(f"{workdir}: its teacher row is not the report's first stage; not the same split.")
  mean = lambda v: float(np.mean(list(v.values())))
  share = lambda num, den: (100 * mean(num) / mean(den), *(100 * x for x in metrics_lib.bootstrap_ratio_ci(num, den)))
  lines = ["| student of | MRR@10 | % DE teacher (95 %) | its teacher pipeline | % of that pipeline (95 %) |",
           "|---|---|---|---|---|"]
  for name, v in rr.items():
    pipe = f"{name}_ce" if f"{name}_ce" in pipes else "first_stage"
    a, b = share(v, pipes["first_stage"]), share(v, pipes[pipe])
    lines.append(f"| {name} | {mean(v):.4f} | {a[0]:.1f} ({a[1]:.1f}-{a[2]:.1f}) | {pipe} {mean(pipes[pipe]):.4f} | "
                 f"{b[0]:.1f} ({b[1]:.1f}-{b[2]:.1f}) |")
  names = list(rr)
  lines += ["", "| student | over student | ratio of MRR@10 (95 %) |", "|---|---|---|"]
  for i, x in enumerate(names):
    for y in names[i + 1:]:
      r = share(rr[x], rr[y])
      lines.append(f"| {x} | {y} | {r[0] / 100:.3f} ({r[1] / 100:.3f}-{r[2] / 100:.3f}) |")
  text = "\n".join(lines) + "\n"
  (Path(args.report) / "students_test.md").write_text(text)
  print(text)


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = p.add_subparsers(dest="cmd", required=True)
  a = sub.add_parser("pack")
  a.add_argument("--pack", default=".gpu19")
  a.add_argument("--arg", default=PACK_ARG)
  a.add_argument("--distill-arg", default=DISTILL_ARG)
  a = sub.add_parser("train")
  a.add_argument("--pack", default=".gpu19")
  a.add_argument("--out", required=True)
  a.add_argument("--runs", default="dual:1e-4;cls:1e-4;dual:3e-5;cls:3e-5", help="head:lr;... in this order")
  a.add_argument("--steps", type=int, default=3000)
  a.add_argument("--queries", type=int, default=64)
  a.add_argument("--negatives", type=int, default=7)
  a.add_argument("--temperature", type=float, default=0.05)
  a.add_argument("--dev-every", type=int, default=250)
  a.add_argument("--eval-batch", type=int, default=2000)
  a.add_argument("--bf16", type=int, default=1)
  a.add_argument("--seed", type=int, default=0)
  a.add_argument("--budget-s", type=float, default=1e9, help="skip runs that would start after this")
  a.add_argument("--layers", type=int, default=0, help="CPU smoke test: cut the encoder")
  a.add_argument("--limit", type=int, default=0, help="CPU smoke test: queries per eval split")
  a.add_argument("--limit-k", type=int, default=TOP)
  a = sub.add_parser("report")
  a.add_argument("--pack", default=".gpu19")
  a.add_argument("--results", required=True)
  a.add_argument("--out", required=True)
  a = sub.add_parser("students")
  a.add_argument("--report", required=True, help="report's --out (the CE pipelines' per-query file)")
  a.add_argument("--runs", required=True, help="name=workdir,... of ce_distill students (name: de, dual, cls)")
  args = p.parse_args(argv)
  {"pack": pack, "train": train, "report": report, "students": students}[args.cmd](args)


if __name__ == "__main__":
  main()
