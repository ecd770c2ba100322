"""sentence-transformers' own recipes on edistill's teacher, student, data and steps (issue 16, item 6).

    .venv/bin/python benchmarks/st_peers.py --config configs/ablation.py:row=unlab,student=l2,... \\
        --workdir runs/wn_l2 --recipes mnrl,embed_distill,margin_mse [--steps N] [--split test] [--out DIR]

``--config`` (and ``--config.x.y=v`` overrides) is the edistill run's; ``--workdir`` is that run's
workdir, whose ``per_query_<split>.json`` holds the teacher's per-query MRR@10, so each peer's
share of the teacher carries the same paired bootstrap interval as edistill's own rows. The data are
exactly what edistill trained on (``recipes.build``: labeled, generated and teacher-labeled unlabeled
pairs, its cached teacher tables), the student is the config's (e.g. MiniLM-L6's first 2 layers), and
batch, steps, peak learning rate, 10 % warmup, cosine decay, weight decay 0.01 and clipping at 1.0
are the config's. Each recipe is trained with ``SentenceTransformerTrainer``:

  mnrl                 symmetric fine-tune, ``MultipleNegativesRankingLoss`` (scale 1/temperature =
                       20), (query, positive) pairs, no duplicate texts in a batch; no teacher. Where the
                       config trains with hard negatives (``data.num_hard_negatives``, e.g. the demo's
                       teacher-mined one), each example's same negatives join it as extra columns
                       (a (query, positive, negative) triplet), as edistill's student sees them
  embed_distill        asymmetric, as documented: ``EmbedDistillLoss(distance_metric="l2",
                       projection_dim=768)`` on the queries against the teacher's query embeddings,
                       a randomly initialised projection; retrieval = projected student queries
                       against the teacher's document table
  embed_distill_lstsq  the same with the projection started at edistill's least-squares fit
  margin_mse           symmetric, ``MarginMSELoss`` on (query, positive, negative) with the teacher's
                       score margin; the negative is drawn from the teacher's top 10 non-positives,
                       mined as ``data.teacher_negatives`` mines (``edistill.data.mining``: documents
                       the teacher scores at or above a positive are left out as likely false negatives)

Evaluation: exact dot-product search over the split's corpus (top 100), scored with
``edistill.eval.metrics`` (MRR@10, R@10, R@100, nDCG@10). Where the workdir's per-query file also
holds edistill's distilled ``student``, each row carries the paired bootstrap interval of that
student's MRR@10 over the peer's (above 1: edistill ahead). Writes ``peers_<split>.md`` / ``.json``
and the peers' per-query MRR@10 (``peers_per_query_<split>.json``) into ``--out`` (default: the workdir). Needs the `bench` extra (torch, sentence-transformers[train]).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RECIPES = ("mnrl", "embed_distill", "embed_distill_lstsq", "margin_mse")
METRICS = ("mrr@10", "recall@10", "recall@100", "ndcg@10")

config_flags.DEFINE_config_file("config", None, "the edistill run's config (configs/X.py[:arg])", lock_config=True)
flags.DEFINE_string("workdir", None, "the edistill run's workdir (its per_query_<split>.json pairs the interval)")
flags.DEFINE_list("recipes", list(RECIPES), f"which of {RECIPES}")
flags.DEFINE_integer("steps", 0, "training steps (0: the config's train.steps)")
flags.DEFINE_string("split", "test", "evaluation split")
flags.DEFINE_string("out", "", "output directory (default: the workdir)")
flags.DEFINE_integer("negatives_top", 10, "margin_mse: draw the negative from the teacher's top N non-positives")
flags.mark_flags_as_required(["config", "workdir"])


def student_model(cfg, max_length: int):
  """The config's student as a SentenceTransformer: the zoo checkpoint, cut to ``num_layers``."""
  from sentence_transformers import SentenceTransformer
  from edistill.models import zoo
  model = SentenceTransformer(str(zoo.resolve(cfg.student.name)), device="cpu")
  if cfg.student.num_layers:
    auto = model[0].auto_model
    auto.encoder.layer = auto.encoder.layer[:cfg.student.num_layers]
    auto.config.num_hidden_layers = cfg.student.num_layers
  model.max_seq_length = max_length
  return model


def training_columns(setup, recipe: str, negatives_top: int, seed: int) -> dict[str, list]:
  """The recipe's dataset columns from edistill's training examples (one row per example)."""
  data, ex, tables = setup.data, setup.pipe.examples, setup.teacher_params
  queries = [data.query_texts[i] for i in ex.query]
  positives = [data.doc_texts[i] for i in ex.docs[:, 0]]
  if recipe == "mnrl":  # The config's hard negatives (e.g. the demo's teacher-mined one) as extra columns.
    negatives = {f"negative_{k}": [data.doc_texts[i] for i in ex.docs[:, k]] for k in range(1, ex.docs.shape[1])}
    return {"anchor": queries, "positive": positives, **negatives}
  if recipe.startswith("embed_distill"):
    return {"anchor": queries, "label": tables["queries"][ex.query].tolist()}
  from edistill.data import mining
  # margin_mse: the teacher's margin between the positive and a hard negative mined as edistill mines
  # them (data.teacher_negatives): its top non-positives, likely false negatives left out.
  tq, td = np.asarray(tables["queries"]), np.asarray(tables["docs"])
  known = setup.pipe.positives or {}
  relevant = {int(q): np.asarray(known.get(int(q), [p])) for q, p in zip(ex.query, ex.docs[:, 0])}
  mined = mining.teacher_negatives(tq, td, relevant, negatives_top)
  short = {q: relevant[q] for q, pool in mined.items() if not pool}
  if short:  # Every document of the top N scores at or above a positive: the teacher's best below them all.
    mined.update({q: pool[:1] for q, pool in mining.teacher_negatives(tq, td, short, len(td)).items()})
  rng = np.random.default_rng(seed)
  negatives, margins = [], []
  for q, pos in zip(ex.query, ex.docs[:, 0]):
    pool = mined[int(q)] or [d for d in range(len(td)) if d not in set(relevant[int(q)].tolist())]
    neg = int(rng.choice(pool))  # (Only a teacher that scores its positive lowest of all gets a random one.)
    negatives.append(data.doc_texts[neg])
    margins.append(float(td[pos] @ tq[q] - td[neg] @ tq[q]))
  return {"query": queries, "positive": positives, "negative": negatives, "label": margins}


def lstsq_start(setup, cfg, dim: int) -> dict[str, np.ndarray]:
  """The projection edistill starts an asymmetric student at: the setup's own least-squares fit, or,
  for a config that trains none (a tied student), the same fit of the zero-shot student's training-query
  embeddings to the teacher's; identity when the widths already agree."""
  if "query_projection" in setup.init_params:
    return setup.init_params["query_projection"]
  from edistill.models import zoo
  from edistill.recipes import embed_distill
  pre = zoo.load_from_config(cfg.student)
  if pre.module.output_dim == dim:
    return {"kernel": np.eye(dim, dtype=np.float32), "bias": np.zeros(dim, np.float32)}
  return embed_distill.lstsq_start(cfg, pre, setup.data, setup.teacher_params["queries"])


def make_loss(recipe: str, model, setup, cfg):
  import torch
  from sentence_transformers.sentence_transformer import losses
  if recipe == "mnrl":
    return losses.MultipleNegativesRankingLoss(model, scale=1.0 / cfg.loss.temperature)
  if recipe == "margin_mse":
    return losses.MarginMSELoss(model)
  dim = setup.teacher_params["queries"].shape[1]
  loss = losses.EmbedDistillLoss(model, distance_metric="l2", projection_dim=dim)
  if recipe == "embed_distill_lstsq":
    proj = lstsq_start(setup, cfg, dim)
    with torch.no_grad():
      loss.projection.weight.copy_(torch.from_numpy(np.asarray(proj["kernel"]).T.copy()))
      loss.projection.bias.copy_(torch.from_numpy(np.asarray(proj["bias"]).copy()))
  return loss


def train(recipe: str, cfg, setup, steps: int, out: Path):
  """(model, loss, seconds) after ``steps`` steps of ``recipe``."""
  from datasets import Dataset
  from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
  from sentence_transformers.base.sampler import BatchSamplers
  model = student_model(cfg, max(cfg.data.max_query_length, cfg.data.max_doc_length))
  loss = make_loss(recipe, model, setup, cfg)
  dataset = Dataset.from_dict(training_columns(setup, recipe, flags.FLAGS.negatives_top, cfg.seed))
  tc = cfg.train
  args = SentenceTransformerTrainingArguments(
      output_dir=str(out / f"st_{recipe}"), max_steps=steps, per_device_train_batch_size=tc.batch_size,
      learning_rate=tc.learning_rate, warmup_steps=tc.warmup_steps * steps // tc.steps, lr_scheduler_type=tc.schedule,
      weight_decay=tc.weight_decay, max_grad_norm=tc.grad_clip or 0.0, seed=cfg.seed, save_strategy="no",
      report_to="none", logging_steps=max(1, steps // 20), dataloader_drop_last=True, use_cpu=True,
      batch_sampler=BatchSamplers.NO_DUPLICATES if recipe == "mnrl" else BatchSamplers.BATCH_SAMPLER)
  start = time.perf_counter()
  SentenceTransformerTrainer(model=model, args=args, train_dataset=dataset, loss=loss).train()
  return model, loss, time.perf_counter() - start


def evaluate(recipe: str, model, loss, cfg, split: str) -> tuple[dict, dict]:
  """(metrics, per-query MRR@10) of a trained peer on ``split`` (exact search, top 100)."""
  import torch
  from edistill.data import tfds_builders
  from edistill.eval import metrics
  from edistill.retrieval import encode as encode_lib
  from edistill.models import zoo
  data = tfds_builders.load(tfds_builders.prepare_config(cfg.data, cfg.seed), split)
  q = model.encode(data.query_texts, batch_size=128, convert_to_numpy=True)
  if recipe.startswith("embed_distill"):
    with torch.no_grad():
      q = loss.projection(torch.from_numpy(q)).numpy()
    tpre = zoo.load_from_config(cfg.teacher)  # The teacher's cached document table (same as edistill's).
    d = encode_lib.encode_pretrained(tpre, data.doc_ids, data.doc_texts, cfg.data.max_doc_length,
                                     Path(zoo.cache_dir()) / "embeddings", desc=None)
  else:
    d = model.encode(data.doc_texts, batch_size=128, convert_to_numpy=True)
  scores = q @ d.T
  top = np.argsort(-scores, axis=1)[:, :100]
  run = {qid: {data.doc_ids[j]: float(scores[i, j]) for j in top[i]} for i, qid in enumerate(data.query_ids)}
  per = metrics.per_query(run, data.qrels, METRICS)
  return {m: float(np.mean(list(per[m].values()))) for m in METRICS}, per["mrr@10"]


def main(_):
  from edistill import config_lib
  from edistill.eval import metrics
  from edistill import recipes
  F = flags.FLAGS
  cfg = F.config
  config_lib.validate(cfg)
  unknown = set(F.recipes) - set(RECIPES)
  if unknown:
    raise ValueError(f"--recipes {sorted(unknown)}: expected some of {RECIPES}.")
  workdir = Path(F.workdir)
  from edistill.eval import report
  ours = json.loads(report.result_file(workdir, F.split, "per_query").read_text())
  teacher_pq, student_pq = ours["teacher"], ours.get("student")
  out = Path(F.out or workdir)
  out.mkdir(parents=True, exist_ok=True)
  steps = F.steps or cfg.train.steps
  setup = recipes.build(cfg)
  results, per_query = {}, {}
  for recipe in F.recipes:
    model, loss, seconds = train(recipe, cfg, setup, steps, out)
    rows, per = evaluate(recipe, model, loss, cfg, F.split)
    lo, hi = metrics.bootstrap_ratio_ci(per, teacher_pq)
    teacher = float(np.mean(list(teacher_pq.values())))
    results[recipe] = {**rows, "teacher_pct": 100 * rows["mrr@10"] / teacher, "teacher_pct_lo": 100 * lo,
                       "teacher_pct_hi": 100 * hi, "train_minutes": seconds / 60, "steps": steps}
    if student_pq is not None and rows["mrr@10"] > 0:  # edistill's own student of the workdir, paired.
      lo, hi = metrics.bootstrap_ratio_ci(student_pq, per)
      ratio = np.mean(list(student_pq.values())) / max(rows["mrr@10"], 1e-12)
      results[recipe].update(edistill_ratio=float(ratio), edistill_ratio_lo=lo, edistill_ratio_hi=hi)
    print(recipe, json.dumps(results[recipe]), flush=True)
    per_query[recipe] = per
  lines = [f"sentence-transformers peers, {F.split} split, {steps:,} steps (teacher MRR@10 {teacher:.4f})", "",
           "| recipe | " + " | ".join(METRICS) + " | % teacher MRR@10 (95 % interval) | edistill student / peer "
           "MRR@10 (95 % interval) | training (min) |",
           "|---" * (len(METRICS) + 4) + "|"]
  for recipe, r in results.items():
    ratio = (f"{r['edistill_ratio']:.3f} ({r['edistill_ratio_lo']:.3f}-{r['edistill_ratio_hi']:.3f})"
             if "edistill_ratio" in r else "")
    lines.append(f"| {recipe} | " + " | ".join(f"{r[m]:.4f}" for m in METRICS)
                 + f" | {r['teacher_pct']:.1f} ({r['teacher_pct_lo']:.1f}-{r['teacher_pct_hi']:.1f}) | {ratio} | "
                 f"{r['train_minutes']:.1f} |")
  (out / f"peers_{F.split}.md").write_text("\n".join(lines) + "\n")
  (out / f"peers_{F.split}.json").write_text(json.dumps(results, indent=2))
  (out / f"peers_per_query_{F.split}.json").write_text(json.dumps(per_query))
  print("\n".join(lines))


if __name__ == "__main__":
  app.run(main)
